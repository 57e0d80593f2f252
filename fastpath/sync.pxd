# How the fast path's tables are shared between worker threads and the
# control thread. Three schemes, each for one kind of write; every shared
# field is touched either under one of them or with a GCC __atomic builtin.
#
# 1. The table lock: a big-reader lock (Linux's old brlock, per-CPU rwlocks).
#    Each worker owns one reader word on its own cache line and holds it for
#    exactly one burst; between bursts, and while it waits in epoll, it holds
#    nothing (its quiescent state). A writer (the control thread, for every
#    in-place change of ports, guards, neighbours, routes, VTEPs, services,
#    FDB deletions) raises `writer`, waits until every reader word is 0, and
#    then has the tables to itself. A reader never takes a shared cache line
#    in the common case: raising its own word and reading `writer` (Dekker's
#    handshake, both seq_cst) is the whole cost. Because the writer waits
#    for every worker to pass a quiescent point, memory it unlinked under the
#    lock can be freed once it holds it: that is RCU's grace period, and a
#    bulk change is built off to the side, published by a pointer swap under
#    the lock and the old copy freed after (Services.apply).
#    Writers hold it for one bounded change (a table swap, one entry, or a
#    chunk of a scan), never across Python work, so a worker waits at most
#    that long. The lock is recursive for its holder.
# 2. Rare writes from a worker (a neighbour's or a VTEP's MAC learned from
#    ARP): the worker gives up its reader word and takes the table lock as a
#    writer (pn_upgrade), for that one entry, then reads again. Such writes
#    are checked first under the read side, so a steady stream of ARP for
#    known neighbours costs no write.
# 3. Frequent writes from several workers at once:
#    - conntrack: lock striping, a spinlock per shard (ct_t.lock) around each
#      lookup-and-update, the shard picked by the client port (conntrack.pxd);
#    - ClientIP affinity: one spinlock per bucket of 8 entries;
#    - FDB learning: a compare-and-swap claims an empty slot (FDB_BUSY while
#      it is filled in), refreshes are relaxed atomic stores;
#    - counters: per-worker (stats_t, one writer each: pn_inc/pn_add, see
#      there; readers load relaxed, never a torn value), or atomic adds for
#      the rare ones kept in shared tables.
# 4. Bulk changes published whole: a route set (built off to the side,
#    copied in under the table lock) and a service change (Services.apply:
#    up to APPLY_IN_PLACE entries changed in place under one hold of the
#    lock, more as a new slot array swapped in by one pointer store under
#    it, the old one freed after, RCU-style, the lock's acquisition being
#    the grace period).
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

cdef extern from *:
    """
    #include <pthread.h>
    #include <sched.h>
    #include <stdint.h>
    /* The hot helpers are always inlined: left to GCC's heuristics, a
       counter bump was sometimes an out-of-line call (seen with nm). */
    #define PN_INLINE static inline __attribute__((always_inline))
    #define PN_MAX_WORKERS 64
    #define PN_NO_READER 0xFFFFFFFFu
    typedef struct { uint32_t v; char pad[60]; } pn_reader_t;
    typedef struct {
        uint32_t writer;          /* 1: a writer holds or waits for the tables */
        uint32_t wmutex;          /* writers among themselves */
        uint64_t owner;           /* pthread_self() of the writer holding it, 0: none */
        uint32_t depth;           /* its recursion depth (only the owner touches it) */
        uint32_t nreaders;        /* reader words in use (workers), set before they start */
        uint64_t write_locks;     /* writer acquisitions (not recursive ones) */
        uint64_t upgrades;        /* of them, by a worker (rare writes) */
        pn_reader_t rd[PN_MAX_WORKERS] __attribute__((aligned(64)));
    } pn_sync_t;

    static inline void pn_relax(unsigned *spins) {
        if (++*spins < 128) __builtin_ia32_pause();
        else { *spins = 0; sched_yield(); }   /* the holder may be descheduled (2 cores) */
    }
    PN_INLINE void pn_spin_lock(uint32_t *l) {
        unsigned spins = 0;
        for (;;) {
            if (!__atomic_exchange_n(l, 1, __ATOMIC_ACQUIRE)) return;
            while (__atomic_load_n(l, __ATOMIC_RELAXED)) pn_relax(&spins);
        }
    }
    PN_INLINE void pn_spin_unlock(uint32_t *l) { __atomic_store_n(l, 0, __ATOMIC_RELEASE); }

    PN_INLINE void pn_read_lock(pn_sync_t *s, uint32_t k) {
        unsigned spins = 0;
        if (!s || k == PN_NO_READER) return;
        for (;;) {
            __atomic_store_n(&s->rd[k].v, 1, __ATOMIC_SEQ_CST);
            if (!__atomic_load_n(&s->writer, __ATOMIC_SEQ_CST)) return;
            __atomic_store_n(&s->rd[k].v, 0, __ATOMIC_RELEASE);   /* let the writer in */
            while (__atomic_load_n(&s->writer, __ATOMIC_ACQUIRE)) pn_relax(&spins);
        }
    }
    PN_INLINE void pn_read_unlock(pn_sync_t *s, uint32_t k) {
        if (!s || k == PN_NO_READER) return;
        __atomic_store_n(&s->rd[k].v, 0, __ATOMIC_RELEASE);
    }
    static inline void pn_write_lock(pn_sync_t *s) {
        uint64_t me = (uint64_t)pthread_self();
        unsigned spins = 0;
        uint32_t k, n;
        if (!s) return;
        if (__atomic_load_n(&s->owner, __ATOMIC_RELAXED) == me) { s->depth++; return; }
        pn_spin_lock(&s->wmutex);
        __atomic_store_n(&s->writer, 1, __ATOMIC_SEQ_CST);
        n = __atomic_load_n(&s->nreaders, __ATOMIC_ACQUIRE);
        for (k = 0; k < n; k++)
            while (__atomic_load_n(&s->rd[k].v, __ATOMIC_SEQ_CST)) pn_relax(&spins);
        __atomic_store_n(&s->owner, me, __ATOMIC_RELAXED);
        s->depth = 1;
        s->write_locks++;
    }
    static inline void pn_write_unlock(pn_sync_t *s) {
        if (!s) return;
        if (--s->depth) return;
        __atomic_store_n(&s->owner, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&s->writer, 0, __ATOMIC_RELEASE);
        pn_spin_unlock(&s->wmutex);
    }
    /* A worker (reader k, holding its word) becomes a writer for one change. */
    static inline void pn_upgrade(pn_sync_t *s, uint32_t k) {
        if (!s) return;
        pn_read_unlock(s, k);
        pn_write_lock(s);
        if (k != PN_NO_READER) s->upgrades++;
    }
    static inline void pn_downgrade(pn_sync_t *s, uint32_t k) {
        if (!s) return;
        pn_write_unlock(s);
        pn_read_lock(s, k);
    }

    /* Counters. One writer (per-worker stats), readers load them relaxed.
       On x86-64 the writer adds plainly, as DPDK's per-lcore statistics
       are kept: an aligned 8-byte store is single-copy atomic there (Intel
       SDM vol. 3, 8.1.1) and GCC does not split one, so a reader never sees
       a torn value, only one a burst old; the add stays one instruction
       (a relaxed load + store is three: +25 instructions a bridged frame).
       Elsewhere, and in the ThreadSanitizer build (so that TSan checks
       everything else of the scheme), a relaxed load + store. */
    #if defined(__x86_64__) && !defined(__SANITIZE_THREAD__)
    PN_INLINE void pn_inc(uint64_t *p) { *p += 1; }
    PN_INLINE void pn_add(uint64_t *p, uint64_t n) { *p += n; }
    #else
    PN_INLINE void pn_inc(uint64_t *p) { __atomic_store_n(p, __atomic_load_n(p, __ATOMIC_RELAXED) + 1, __ATOMIC_RELAXED); }
    PN_INLINE void pn_add(uint64_t *p, uint64_t n) { __atomic_store_n(p, __atomic_load_n(p, __ATOMIC_RELAXED) + n, __ATOMIC_RELAXED); }
    #endif
    PN_INLINE uint64_t pn_ld(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
    PN_INLINE void pn_st(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
    /* Several writers (a counter in a shared table): an atomic add. */
    PN_INLINE void pn_ainc(uint64_t *p) { __atomic_fetch_add(p, 1, __ATOMIC_RELAXED); }
    PN_INLINE void pn_aadd(uint64_t *p, uint64_t n) { __atomic_fetch_add(p, n, __ATOMIC_RELAXED); }
    PN_INLINE void pn_adec(uint64_t *p) { __atomic_fetch_sub(p, 1, __ATOMIC_RELAXED); }
    PN_INLINE uint32_t pn_ld32(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
    PN_INLINE void pn_st32(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
    PN_INLINE uint16_t pn_ld16(const uint16_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
    PN_INLINE void pn_st16(uint16_t *p, uint16_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
    PN_INLINE uint8_t pn_ld8(const uint8_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
    PN_INLINE void pn_st8(uint8_t *p, uint8_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
    PN_INLINE uint64_t pn_ld_acq(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    PN_INLINE void pn_st_rel(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    PN_INLINE int pn_cas(uint64_t *p, uint64_t expect, uint64_t v) {
        return __atomic_compare_exchange_n(p, &expect, v, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    }
    """
    enum:
        PN_MAX_WORKERS
        PN_NO_READER
    ctypedef struct pn_sync_t:
        uint32_t writer
        uint32_t nreaders
        uint64_t write_locks
        uint64_t upgrades
    void pn_spin_lock(uint32_t *l) noexcept nogil
    void pn_spin_unlock(uint32_t *l) noexcept nogil
    void pn_read_lock(pn_sync_t *s, uint32_t k) noexcept nogil
    void pn_read_unlock(pn_sync_t *s, uint32_t k) noexcept nogil
    void pn_write_lock(pn_sync_t *s) noexcept nogil
    void pn_write_unlock(pn_sync_t *s) noexcept nogil
    void pn_upgrade(pn_sync_t *s, uint32_t k) noexcept nogil
    void pn_downgrade(pn_sync_t *s, uint32_t k) noexcept nogil
    void inc "pn_inc"(uint64_t *p) noexcept nogil
    void add "pn_add"(uint64_t *p, uint64_t n) noexcept nogil
    uint64_t ld "pn_ld"(const uint64_t *p) noexcept nogil
    void st "pn_st"(uint64_t *p, uint64_t v) noexcept nogil
    void ainc "pn_ainc"(uint64_t *p) noexcept nogil
    void aadd "pn_aadd"(uint64_t *p, uint64_t n) noexcept nogil
    void adec "pn_adec"(uint64_t *p) noexcept nogil
    uint32_t ld32 "pn_ld32"(const uint32_t *p) noexcept nogil
    void st32 "pn_st32"(uint32_t *p, uint32_t v) noexcept nogil
    uint16_t ld16 "pn_ld16"(const uint16_t *p) noexcept nogil
    void st16 "pn_st16"(uint16_t *p, uint16_t v) noexcept nogil
    uint8_t ld8 "pn_ld8"(const uint8_t *p) noexcept nogil
    void st8 "pn_st8"(uint8_t *p, uint8_t v) noexcept nogil
    uint64_t ld_acq "pn_ld_acq"(const uint64_t *p) noexcept nogil
    void st_rel "pn_st_rel"(uint64_t *p, uint64_t v) noexcept nogil
    bint cas "pn_cas"(uint64_t *p, uint64_t expect, uint64_t v) noexcept nogil
