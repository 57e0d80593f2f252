# ClusterIP services (what kube-proxy's IPVS/nftables modes do): an
# open-addressing map (VIP, port, protocol) -> backends, O(1) whatever the
# number of services; backend choice random or Maglev; ClientIP affinity.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from fastpath.sync cimport pn_sync_t, pn_spin_lock, pn_spin_unlock, ainc

cdef enum:
    LB_RANDOM = 0
    LB_MAGLEV = 1
    AFF_WAYS = 8             # an affinity bucket: the probe window, one lock
    APPLY_IN_PLACE = 64      # Services.apply: changes made in place under one lock hold (more: a new array)

ctypedef struct backend_t:
    uint32_t ip
    uint16_t port

ctypedef struct svc_t:
    uint64_t key             # vip<<32 | port<<16 | proto<<8 | 1; 0: empty slot
    uint32_t nb
    backend_t *b             # malloc'd, owned by the slot
    uint16_t *maglev         # Maglev lookup table (backend indices), NULL for random
    uint32_t msize
    uint32_t affinity_ms     # ClientIP affinity timeout; 0: none
    uint8_t lb

ctypedef struct aff_t:       # ClientIP affinity: (client, service) -> backend
    uint64_t key             # client<<32 | low 32 bits of the service key's hash; 0: empty
    uint64_t svc
    uint32_t ip
    uint16_t port
    uint64_t expires

ctypedef struct svcmap_t:
    svc_t *slots
    uint64_t mask
    uint32_t shift
    uint64_t count
    uint64_t capacity
    uint32_t net             # the service CIDR: only these destinations are looked up
    uint32_t netmask
    aff_t *aff
    uint64_t aff_mask
    uint32_t *aff_lock       # one spinlock per bucket of AFF_WAYS entries (workers write them)
    uint64_t rng             # xorshift state for random choice (the dataplane's own; workers have theirs)
    # counters
    uint64_t lookups
    uint64_t no_service
    uint64_t no_endpoints
    uint64_t affinity_hits

cdef inline uint64_t svc_key(uint32_t vip, uint16_t port, uint8_t proto) noexcept nogil:
    return (<uint64_t>vip << 32) | (<uint64_t>port << 16) | (<uint64_t>proto << 8) | 1

cdef inline uint64_t mix64(uint64_t x) noexcept nogil:
    x ^= x >> 33
    x *= 0xff51afd7ed558ccdULL
    x ^= x >> 33
    x *= 0xc4ceb9fe1a85ec53ULL
    x ^= x >> 33
    return x

cdef inline svc_t *svc_find(svcmap_t *m, uint64_t key) noexcept nogil:
    cdef uint64_t i = (key * 0x9E3779B97F4A7C15ULL) >> m.shift
    while True:
        if m.slots[i].key == key:
            return &m.slots[i]
        if m.slots[i].key == 0:
            return NULL
        i = (i + 1) & m.mask

cdef inline bint svc_is_vip(const svcmap_t *m, uint32_t ip) noexcept nogil:
    return m.slots != NULL and (ip & m.netmask) == m.net

cdef inline uint64_t aff_key(uint32_t cip, uint64_t svc) noexcept nogil:
    """An affinity entry's key: the client, and the service port hashed (never 0)."""
    return (<uint64_t>cip << 32) | (mix64(svc) & 0xffffffffULL) | 1

cdef inline uint64_t aff_bucket(const svcmap_t *m, uint64_t k) noexcept nogil:
    return (mix64(k) & m.aff_mask) // AFF_WAYS

cdef inline aff_t *aff_slot(svcmap_t *m, uint64_t k, uint64_t svc, uint64_t now, aff_t **match) noexcept nogil:
    """The affinity table's probe window for key k of service port svc, the
    one rule svc_pick and a snapshot restore share: *match is the entry for
    (k, svc) if the window holds one, live or not, else NULL; returns the
    slot an entry for it goes to: the match itself, else the window's first
    empty or expired slot (NULL: no room, affinity is skipped). The whole
    window is searched, not only up to the first expired slot, so an entry is
    found wherever it was put, past a neighbour's entry that expired since.
    The window is one bucket (AFF_WAYS aligned entries): the caller holds
    aff_lock[i / AFF_WAYS] (aff_bucket())."""
    cdef uint64_t i = aff_bucket(m, k) * AFF_WAYS
    cdef uint32_t j
    cdef aff_t *e
    cdef aff_t *free = NULL
    match[0] = NULL
    for j in range(AFF_WAYS):
        e = &m.aff[i + j]
        if e.key == k and e.svc == svc:
            match[0] = e
            return e
        if free == NULL and (e.key == 0 or e.expires <= now):
            free = e
        if e.key == 0:
            break                                # nothing was ever put beyond an empty slot
    return free

cdef inline int svc_pick(svcmap_t *m, svc_t *s, uint32_t cip, uint64_t flow, uint64_t now,
                         uint32_t *bip, uint16_t *bport, uint64_t *rng) noexcept nogil:
    """Choose a backend for a new flow; returns 0, or -1 without backends.
    rng: the caller's xorshift state (one per worker). With affinity, the
    client's bucket is locked from lookup to update."""
    cdef uint64_t k = 0
    cdef uint32_t i, j
    cdef uint32_t *lk = NULL
    cdef aff_t *a = NULL
    cdef aff_t *e
    if s.nb == 0:
        return -1
    if s.affinity_ms and m.aff != NULL:
        k = aff_key(cip, s.key)
        lk = &m.aff_lock[aff_bucket(m, k)]
        pn_spin_lock(lk)
        a = aff_slot(m, k, s.key, now, &e)
        if e != NULL and e.expires > now:
            for i in range(s.nb):                # the backend must still be there
                if s.b[i].ip == e.ip and s.b[i].port == e.port:
                    bip[0] = e.ip
                    bport[0] = e.port
                    e.expires = now + s.affinity_ms
                    pn_spin_unlock(lk)
                    ainc(&m.affinity_hits)
                    return 0
    if s.lb == LB_MAGLEV and s.maglev != NULL:
        j = s.maglev[mix64(flow) % s.msize]
    else:
        rng[0] ^= rng[0] << 13
        rng[0] ^= rng[0] >> 7
        rng[0] ^= rng[0] << 17
        j = <uint32_t>((rng[0] >> 11) % s.nb)
    bip[0] = s.b[j].ip
    bport[0] = s.b[j].port
    if a != NULL:
        a.key = k
        a.svc = s.key
        a.ip = bip[0]
        a.port = bport[0]
        a.expires = now + s.affinity_ms
    if lk != NULL:
        pn_spin_unlock(lk)
    return 0

cdef class Services:
    cdef svcmap_t m
    cdef pn_sync_t *sy                   # the dataplane's table lock (NULL: alone)
    cdef readonly uint64_t generation   # bumped by every change (snapshots)
    cdef void _free_slot(self, svc_t *s) noexcept nogil
    cdef int _build(self, list bl, lb, uint32_t maglev_size, backend_t **arr, uint16_t **mg) except -1
    cdef dict _describe(self, svc_t *s)
