# The bridge forwarding database: (MAC, bridge domain) -> port.
# Open addressing with linear probing over a power-of-two table kept at most
# half full; the key packs MAC<<16 | VALID | domain into one uint64, so a probe
# is one compare. Deletion shifts entries back (no tombstones), which keeps
# probe chains short under churn.
# Shared by workers (fastpath/sync.pxd): they learn concurrently, so a new
# entry's slot is claimed by a compare-and-swap of its key from 0 to the key
# with FDB_BUSY set (no reader matches it, another learner of the same MAC
# waits the few stores it takes), filled in, then published by a release
# store of the plain key. Refreshes and moves are relaxed atomic stores of
# seen and port. Deletions (aging, flushes) shift entries, which a probing
# reader must not see half done: they happen only under the table lock,
# with every worker between bursts.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from fastpath.defs cimport MAX_DOMAINS
from fastpath.packets cimport mac_key
from fastpath.sync cimport ld, st, ld16, st16, ld8, ld_acq, st_rel, cas, ainc, aadd, pn_sync_t

cdef enum:
    FDB_VALID = 0x8000
    FDB_BUSY = 0x4000     # slot claimed by a learner, not filled in yet (never in a lookup key)
    FDB_STATIC = 1

ctypedef struct fdb_entry_t:
    uint64_t key          # 0: empty slot
    uint64_t seen         # clock (ms) of the last frame from this MAC
    uint16_t port
    uint8_t flags

ctypedef struct fdb_t:
    fdb_entry_t *slots
    uint64_t mask         # slots - 1
    uint32_t shift        # 64 - log2(slots), for the multiplicative hash
    uint64_t count
    uint64_t capacity     # entries allowed (slots / 2)
    uint64_t aging_ms     # 0: never age
    # counters
    uint64_t learned
    uint64_t moved
    uint64_t full         # learns refused because the table was at capacity
    uint64_t aged
    uint64_t static_conflicts  # frames whose source MAC is static on another port


cdef inline uint64_t fdb_key(const uint8_t *mac, uint16_t domain) noexcept nogil:
    # The MAC's key (packets.pxd) with the domain in its two low bytes.
    return mac_key(mac) | FDB_VALID | (domain & (MAX_DOMAINS - 1))

cdef inline uint64_t fdb_home(const fdb_t *t, uint64_t key) noexcept nogil:
    return (key * 0x9E3779B97F4A7C15ULL) >> t.shift

cdef inline fdb_entry_t *fdb_find(fdb_t *t, uint64_t key) noexcept nogil:
    cdef uint64_t i = fdb_home(t, key)
    cdef fdb_entry_t *e
    cdef uint64_t k
    while True:
        e = &t.slots[i]
        k = ld_acq(&e.key)
        if k == key:
            return e
        if k == 0:
            return NULL
        i = (i + 1) & t.mask

cdef inline bint fdb_live(const fdb_t *t, const fdb_entry_t *e, uint64_t now) noexcept nogil:
    return (ld8(&e.flags) & FDB_STATIC) or t.aging_ms == 0 or now - ld(&e.seen) <= t.aging_ms

cdef inline int fdb_lookup(fdb_t *t, uint64_t key, uint64_t now) noexcept nogil:
    """Port for key, or -1 if unknown or aged out."""
    cdef fdb_entry_t *e = fdb_find(t, key)
    if e == NULL or not fdb_live(t, e, now):
        return -1
    return ld16(&e.port)

cdef inline void fdb_learn(fdb_t *t, uint64_t key, uint16_t port, uint64_t now) noexcept nogil:
    cdef uint64_t i = fdb_home(t, key), k
    cdef fdb_entry_t *e
    cdef uint8_t flags
    while True:
        e = &t.slots[i]
        k = ld_acq(&e.key)
        if k == (key | FDB_BUSY):
            continue                    # another worker is filling it in: a few stores
        if k == key:
            flags = ld8(&e.flags)
            if ld16(&e.port) == port and not (flags & FDB_STATIC):
                if ld(&e.seen) != now:  # the common case: a known station, same port;
                    st(&e.seen, now)    # written once per ms, not per frame
                return
            if flags & FDB_STATIC:
                if ld16(&e.port) != port:
                    ainc(&t.static_conflicts)
                return
            if ld16(&e.port) != port:
                st16(&e.port, port)
                ainc(&t.moved)
            st(&e.seen, now)
            return
        if k == 0:
            if ld(&t.count) >= t.capacity:
                ainc(&t.full)
                return
            if not cas(&e.key, 0, key | FDB_BUSY):
                continue                # another learner took this slot: look at it again
            st(&e.seen, now)
            st16(&e.port, port)
            e.flags = 0
            st_rel(&e.key, key)
            aadd(&t.count, 1)
            ainc(&t.learned)
            return
        i = (i + 1) & t.mask

cdef void fdb_remove_slot(fdb_t *t, uint64_t i) noexcept nogil

cdef class Fdb:
    cdef fdb_t t
    cdef pn_sync_t *sy                   # the table lock of the dataplane it belongs to (NULL: alone)
    cdef uint64_t _remove_where(self, int port, int domain, bint dynamic_only,
                                bint expired_only, uint64_t now) noexcept nogil
