"""Control side of the pod gateway: address, subnet, neighbours, counters."""
import ipaddress

from libc.stdint cimport uint32_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy
from fastpath.defs cimport MAX_DOMAINS
from fastpath.fdb import mac_bytes, mac_str

MAX_SUBNET_HOSTS = 1 << 16      # a /16 at most: the neighbour table is indexed directly


cdef class Gateway:
    def __dealloc__(self):
        free(self.g.neigh)

    def configure(self, ip, mac, subnet, int domain=0):
        """Enable the gateway: its IP and MAC, the local pod subnet it serves."""
        net = ipaddress.IPv4Network(str(subnet), strict=True)
        addr = ipaddress.IPv4Address(str(ip))
        if addr not in net or addr in (net.network_address, net.broadcast_address):
            raise ValueError(f"gateway {addr} must be a host address of {net}")
        if net.num_addresses > MAX_SUBNET_HOSTS:
            raise ValueError(f"pod subnet {net} too large: at most /16")
        if not 0 <= domain < MAX_DOMAINS:
            raise ValueError(f"bridge domain must be 0..{MAX_DOMAINS - 1}, got {domain}")
        m = mac_bytes(mac)
        if m[0] & 1:
            raise ValueError(f"gateway MAC {mac} is multicast")
        table = <neigh_t *>calloc(net.num_addresses, sizeof(neigh_t))
        if table == NULL:
            raise MemoryError("neighbour table")
        free(self.g.neigh)
        self.g.neigh = table
        memcpy(self.g.mac, <const char *>m, 6)
        self.g.mac_key = int.from_bytes(m + b"\0\0", "big")
        self.g.ip = int(addr)
        self.g.net = int(net.network_address)
        self.g.mask = int(net.netmask)
        self.g.domain = domain
        self.g.enabled = 1

    def _slot(self, ip):
        if not self.g.enabled:
            raise RuntimeError("gateway not configured")
        a = int(ipaddress.IPv4Address(str(ip)))
        if (a & self.g.mask) != self.g.net or a == self.g.ip:
            raise ValueError(f"{ip} is not a pod address of this node's subnet")
        return a & ~self.g.mask & 0xffffffff

    def add_neighbor(self, ip, mac):
        """A static neighbour (from IPAM): ARP does not override it."""
        cdef uint32_t i = self._slot(ip)
        m = mac_bytes(mac)
        memcpy(self.g.neigh[i].mac, <const char *>m, 6)
        self.g.neigh[i].state = NEIGH_STATIC

    def learn_neighbor(self, ip, mac):
        """A neighbour as ARP would teach it (restoring a snapshot): never
        overrides a static one. Returns True if set."""
        cdef uint32_t i = self._slot(ip)
        m = mac_bytes(mac)
        if m[0] & 1 or self.g.neigh[i].state == NEIGH_STATIC:
            return False
        memcpy(self.g.neigh[i].mac, <const char *>m, 6)
        self.g.neigh[i].state = NEIGH_LEARNED
        return True

    def remove_neighbor(self, ip):
        cdef uint32_t i = self._slot(ip)
        existed = self.g.neigh[i].state != NEIGH_NONE
        self.g.neigh[i].state = NEIGH_NONE
        return existed

    def neighbors(self):
        if not self.g.enabled:
            return []
        out = []
        n = (~self.g.mask & 0xffffffff) + 1
        for i in range(n):
            if self.g.neigh[i].state != NEIGH_NONE:
                out.append({"ip": str(ipaddress.IPv4Address(self.g.net + i)),
                            "mac": mac_str(int.from_bytes((<char *>self.g.neigh[i].mac)[:6] + b"\0\0", "big")),
                            "state": "static" if self.g.neigh[i].state == NEIGH_STATIC else "learned"})
        return out

    def info(self):
        if not self.g.enabled:
            return None
        return {"ip": str(ipaddress.IPv4Address(self.g.ip)),
                "mac": mac_str(self.g.mac_key),
                "subnet": str(ipaddress.IPv4Network((self.g.net, bin(self.g.mask).count("1")))),
                "domain": self.g.domain}

    def counters(self):
        return {"arp_replies": self.g.arp_replies, "arp_learned": self.g.arp_learned,
                "neigh_conflicts": self.g.neigh_conflicts, "icmp_replies": self.g.icmp_replies,
                "routed": self.g.routed, "icmp_errors_sent": self.g.icmp_errors_sent}
