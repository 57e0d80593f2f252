"""Control side of the per-port anti-spoofing guard: set, clear, list."""
import ipaddress

from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memset
from fastpath.defs cimport MAX_PORTS
from fastpath.sync cimport pn_write_lock, pn_write_unlock
from fastpath.fdb import mac_bytes, mac_str


cdef class PortGuard:
    def __cinit__(self):
        memset(&self.g, 0, sizeof(guard_t))

    def set(self, int port, mac, ip):
        """Let port send only from mac and, for IPv4/ARP, from ip."""
        if not 0 <= port < MAX_PORTS:
            raise ValueError(f"port must be 0..{MAX_PORTS - 1}, got {port}")
        m = mac_bytes(mac)
        if m[0] & 1:
            raise ValueError(f"guard MAC {mac} is multicast")
        try:
            addr = ipaddress.IPv4Address(str(ip))
        except ValueError:
            raise ValueError(f"guard IP must be an IPv4 address, got {ip!r}") from None
        cdef uint64_t mk = int.from_bytes(m + b"\0\0", "big")
        cdef uint32_t ip4 = int(addr)
        pn_write_lock(self.sy)          # MAC and IP change together for a worker
        self.g.mac[port] = mk
        self.g.ip[port] = ip4
        self.g.on[port] = 1
        pn_write_unlock(self.sy)

    def clear(self, int port):
        if not 0 <= port < MAX_PORTS:
            raise ValueError(f"port must be 0..{MAX_PORTS - 1}, got {port}")
        pn_write_lock(self.sy)
        self.g.on[port] = 0
        self.g.mac[port] = 0
        self.g.ip[port] = 0
        pn_write_unlock(self.sy)

    def get(self, int port):
        """{"mac", "ip"} of a guarded port, or None."""
        if not 0 <= port < MAX_PORTS or not self.g.on[port]:
            return None
        return {"mac": mac_str(self.g.mac[port]), "ip": str(ipaddress.IPv4Address(self.g.ip[port]))}

    def list(self):
        return {p: self.get(p) for p in range(MAX_PORTS) if self.g.on[p]}
