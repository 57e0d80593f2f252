"""Control side of the pod gateway: address, subnet, neighbours, counters."""
import ipaddress

from libc.stdint cimport uint32_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy
from fastpath.defs cimport MAX_DOMAINS
from fastpath.sync cimport pn_write_lock, pn_write_unlock, ld
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
        cdef uint64_t mk = int.from_bytes(m + b"\0\0", "big")
        cdef uint32_t a = int(addr), nw = int(net.network_address), nm = int(net.netmask)
        cdef neigh_t *old
        pn_write_lock(self.sy)          # the table swap; the old one is freed once no worker can hold it
        old = self.g.neigh
        self.g.neigh = table
        memcpy(self.g.mac, <const char *>m, 6)
        self.g.mac_key = mk
        self.g.ip = a
        self.g.net = nw
        self.g.mask = nm
        self.g.domain = domain
        self.g.enabled = 1
        pn_write_unlock(self.sy)
        free(old)

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
        pn_write_lock(self.sy)
        memcpy(self.g.neigh[i].mac, <const char *>m, 6)
        self.g.neigh[i].state = NEIGH_STATIC
        pn_write_unlock(self.sy)

    def learn_neighbor(self, ip, mac):
        """A neighbour as ARP would teach it (restoring a snapshot): never
        overrides a static one. Returns True if set."""
        cdef uint32_t i = self._slot(ip)
        m = mac_bytes(mac)
        if m[0] & 1:
            return False
        pn_write_lock(self.sy)
        done = self.g.neigh[i].state != NEIGH_STATIC
        if done:
            memcpy(self.g.neigh[i].mac, <const char *>m, 6)
            self.g.neigh[i].state = NEIGH_LEARNED
        pn_write_unlock(self.sy)
        return done

    def remove_neighbor(self, ip):
        cdef uint32_t i = self._slot(ip)
        pn_write_lock(self.sy)
        existed = self.g.neigh[i].state != NEIGH_NONE
        self.g.neigh[i].state = NEIGH_NONE
        pn_write_unlock(self.sy)
        return existed

    def neighbors(self):
        if not self.g.enabled:
            return []
        out = []
        cdef uint32_t i, n = (~self.g.mask & 0xffffffff) + 1
        cdef neigh_t *copy = <neigh_t *>calloc(n, sizeof(neigh_t))
        if copy == NULL:
            raise MemoryError("neighbour table copy")
        pn_write_lock(self.sy)          # a worker may be learning one (as a writer): copy, then format
        memcpy(copy, self.g.neigh, n * sizeof(neigh_t))
        pn_write_unlock(self.sy)
        for i in range(n):
            if copy[i].state != NEIGH_NONE:
                out.append({"ip": str(ipaddress.IPv4Address(self.g.net + i)),
                            "mac": mac_str(int.from_bytes((<char *>copy[i].mac)[:6] + b"\0\0", "big")),
                            "state": "static" if copy[i].state == NEIGH_STATIC else "learned"})
        free(copy)
        return out

    def info(self):
        if not self.g.enabled:
            return None
        return {"ip": str(ipaddress.IPv4Address(self.g.ip)),
                "mac": mac_str(self.g.mac_key),
                "subnet": str(ipaddress.IPv4Network((self.g.net, bin(self.g.mask).count("1")))),
                "domain": self.g.domain}

    def counters(self):
        # "routed" is per worker (the dataplane sums it into its counters)
        return {"arp_replies": ld(&self.g.arp_replies), "arp_learned": ld(&self.g.arp_learned),
                "neigh_conflicts": ld(&self.g.neigh_conflicts), "icmp_replies": ld(&self.g.icmp_replies),
                "icmp_errors_sent": ld(&self.g.icmp_errors_sent)}
