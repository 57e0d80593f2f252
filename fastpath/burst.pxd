cimport cython
# The burst loop: frames sit in preallocated slots; one nogil pass decides
# where each goes and fills per-port transmit queues with slot indices.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from fastpath.defs cimport pkt_t, MAX_PORTS
from fastpath.counters cimport stats_t, port_stats_t
from fastpath.fdb cimport Fdb, fdb_t
from fastpath.ports cimport Ports, ports_t
from fastpath.gateway cimport Gateway, gw_t
from fastpath.overlay cimport Overlay, overlay_t
from fastpath.services cimport Services, svcmap_t
from fastpath.conntrack cimport Conntrack, ct_t, ct_tab_t, conn_t
from fastpath.trace cimport trace_t
from fastpath.guard cimport PortGuard, guard_t
from fastpath.sync cimport pn_sync_t

@cython.final
cdef class Dataplane:
    cdef readonly uint32_t nslots
    cdef readonly uint32_t nseg          # segment slots after the frame slots (ipip TSO), 0: none
    cdef readonly uint32_t qcap          # nslots + nseg: a TX queue's capacity, descriptors in all
    cdef uint32_t seg_used               # segment slots taken in this burst
    cdef uint8_t *segmem
    cdef readonly uint32_t slot_size     # largest frame a slot holds
    cdef uint32_t stride                 # bytes between slot starts
    cdef uint8_t *mem
    cdef pkt_t *pkts
    cdef uint16_t *txq                   # MAX_PORTS x nslots slot indices
    cdef uint32_t txq_len[MAX_PORTS]
    cdef uint16_t tx_active[MAX_PORTS]   # ports with a non-empty queue this burst
    cdef uint32_t n_active
    cdef stats_t stats
    cdef readonly Fdb fdb
    cdef readonly Ports ports
    cdef readonly Gateway gateway
    cdef readonly uint32_t vnet_len      # pods' virtio-net header bytes before each frame (0: none)
    cdef uint8_t pvnet[MAX_PORTS]        # per port: the header size its TAP uses
    cdef readonly Overlay overlay
    cdef overlay_t *ov
    cdef readonly Services services
    cdef svcmap_t *sm
    cdef readonly Conntrack conntrack
    cdef ct_tab_t *ct
    cdef fdb_t *ft                       # bound once: the loop touches no Python object
    cdef ports_t *pt
    cdef gw_t *gw
    cdef object clock
    cdef uint64_t now                    # clock of the burst being run (ms)
    cdef trace_t *tr                     # NULL, or notes every decision (trace())
    cdef readonly PortGuard guard        # per-port anti-spoofing (off until set)
    cdef guard_t *pg
    # Workers (fastpath/sync.pxd): a worker is a Dataplane of its own slots,
    # TX queues, counters, random state and outer IP ids over the tables of
    # the one it was made from (its `primary`), which lists them.
    cdef pn_sync_t *sy                   # the table lock, owned by the primary
    cdef readonly uint32_t wid           # reader word of this worker (PN_NO_READER: the primary)
    cdef readonly Dataplane primary      # None for the primary itself
    cdef list workers_                   # the primary's workers
    cdef uint64_t rng                    # a worker's xorshift state for random backend choice
    cdef uint64_t *rngp                  # the state used: the services' own (seed()) for the primary
    cdef uint16_t ip_id                  # outer IPv4 id of the frames this one encapsulates

    cdef void run(self, uint32_t start, uint32_t n, uint64_t now) noexcept nogil
    cdef void run_locked(self, uint32_t start, uint32_t n, uint64_t now) noexcept nogil
    cdef void _share(self, Dataplane p)
    cdef void _set_pvnet(self, int port, uint32_t n)
    cdef void _sum_stats(self, stats_t *out)
    cdef dict _port_dict(self, port_stats_t *ps)
    cdef uint64_t now_ms(self) except? 0
