# Port table and per-domain flood lists. The control side rebuilds the flood
# lists whenever a port is added, removed or changes domain; the burst loop
# only reads them.
from libc.stdint cimport uint8_t, uint16_t, uint32_t
from fastpath.sync cimport pn_sync_t
from fastpath.defs cimport MAX_PORTS, MAX_DOMAINS

ctypedef struct ports_t:
    uint8_t up[MAX_PORTS]             # 1: port exists and forwards
    uint16_t domain[MAX_PORTS]
    # Ports of each domain, contiguous: flood[dom_start[d] : dom_start[d]+dom_count[d]]
    uint16_t flood[MAX_PORTS]
    uint16_t dom_start[MAX_DOMAINS]
    uint16_t dom_count[MAX_DOMAINS]

cdef class Ports:
    cdef ports_t p
    cdef pn_sync_t *sy               # the dataplane's table lock (NULL: alone)
    cdef void rebuild(self) noexcept nogil
