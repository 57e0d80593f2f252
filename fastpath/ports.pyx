"""Control side of the port table: add/remove ports, set bridge domains."""
from libc.string cimport memset
from fastpath.defs cimport MAX_PORTS, MAX_DOMAINS
from fastpath.sync cimport pn_write_lock, pn_write_unlock


cdef class Ports:
    def __cinit__(self):
        memset(&self.p, 0, sizeof(ports_t))

    cdef void rebuild(self) noexcept nogil:
        cdef int d, i, n = 0
        memset(self.p.dom_count, 0, sizeof(self.p.dom_count))
        for i in range(MAX_PORTS):
            if self.p.up[i]:
                self.p.dom_count[self.p.domain[i]] += 1
        for d in range(MAX_DOMAINS):
            self.p.dom_start[d] = n
            n += self.p.dom_count[d]
            self.p.dom_count[d] = 0
        for i in range(MAX_PORTS):
            if self.p.up[i]:
                d = self.p.domain[i]
                self.p.flood[self.p.dom_start[d] + self.p.dom_count[d]] = i
                self.p.dom_count[d] += 1

    def add(self, int port, int domain=0):
        if not 0 <= port < MAX_PORTS:
            raise ValueError(f"port must be 0..{MAX_PORTS - 1}, got {port}")
        if not 0 <= domain < MAX_DOMAINS:
            raise ValueError(f"bridge domain must be 0..{MAX_DOMAINS - 1}, got {domain}")
        pn_write_lock(self.sy)          # workers read the flood lists mid-burst
        self.p.up[port] = 1
        self.p.domain[port] = domain
        self.rebuild()
        pn_write_unlock(self.sy)

    def remove(self, int port):
        if not 0 <= port < MAX_PORTS or not self.p.up[port]:
            raise KeyError(f"no port {port}")
        pn_write_lock(self.sy)
        self.p.up[port] = 0
        self.rebuild()
        pn_write_unlock(self.sy)

    def __contains__(self, int port):
        return 0 <= port < MAX_PORTS and self.p.up[port] != 0

    def domain_of(self, int port):
        if port not in self:
            raise KeyError(f"no port {port}")
        return self.p.domain[port]

    def members(self, int domain):
        """Ports of a bridge domain, in id order."""
        if not 0 <= domain < MAX_DOMAINS:
            raise ValueError(f"bridge domain must be 0..{MAX_DOMAINS - 1}, got {domain}")
        s = self.p.dom_start[domain]
        return [self.p.flood[s + i] for i in range(self.p.dom_count[domain])]

    def list(self):
        return [(i, self.p.domain[i]) for i in range(MAX_PORTS) if self.p.up[i]]
