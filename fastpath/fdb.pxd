# The bridge forwarding database: (MAC, bridge domain) -> port.
# Open addressing with linear probing over a power-of-two table kept at most
# half full; the key packs MAC<<16 | VALID | domain into one uint64, so a probe
# is one compare. Deletion shifts entries back (no tombstones), which keeps
# probe chains short under churn.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from fastpath.defs cimport MAX_DOMAINS

cdef enum:
    FDB_VALID = 0x8000
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

cdef extern from *:
    """
    #include <string.h>
    /* 8 bytes from a possibly unaligned address, most significant first. */
    static inline uint64_t podnet_load_be64(const uint8_t *p) {
        uint64_t v; memcpy(&v, p, 8); return __builtin_bswap64(v);
    }
    """
    uint64_t load_be64 "podnet_load_be64"(const uint8_t *p) noexcept nogil

cdef inline uint64_t fdb_key(const uint8_t *mac, uint16_t domain) noexcept nogil:
    # One 8-byte load: the MAC lands in the top 48 bits, the two bytes after it
    # are masked off. Callers guarantee 8 readable bytes (MACs sit in a >= 14
    # byte Ethernet header).
    return (load_be64(mac) & 0xFFFFFFFFFFFF0000ULL) | FDB_VALID | (domain & (MAX_DOMAINS - 1))

cdef inline uint64_t fdb_home(const fdb_t *t, uint64_t key) noexcept nogil:
    return (key * 0x9E3779B97F4A7C15ULL) >> t.shift

cdef inline fdb_entry_t *fdb_find(fdb_t *t, uint64_t key) noexcept nogil:
    cdef uint64_t i = fdb_home(t, key)
    cdef fdb_entry_t *e
    while True:
        e = &t.slots[i]
        if e.key == key:
            return e
        if e.key == 0:
            return NULL
        i = (i + 1) & t.mask

cdef inline bint fdb_live(const fdb_t *t, const fdb_entry_t *e, uint64_t now) noexcept nogil:
    return (e.flags & FDB_STATIC) or t.aging_ms == 0 or now - e.seen <= t.aging_ms

cdef inline int fdb_lookup(fdb_t *t, uint64_t key, uint64_t now) noexcept nogil:
    """Port for key, or -1 if unknown or aged out."""
    cdef fdb_entry_t *e = fdb_find(t, key)
    if e == NULL or not fdb_live(t, e, now):
        return -1
    return e.port

cdef inline void fdb_learn(fdb_t *t, uint64_t key, uint16_t port, uint64_t now) noexcept nogil:
    cdef uint64_t i = fdb_home(t, key)
    cdef fdb_entry_t *e
    while True:
        e = &t.slots[i]
        if e.key == key:
            if e.port == port and not (e.flags & FDB_STATIC):
                e.seen = now            # the common case: a known station, same port
                return
            if e.flags & FDB_STATIC:
                if e.port != port:
                    t.static_conflicts += 1
                return
            if e.port != port:
                e.port = port
                t.moved += 1
            e.seen = now
            return
        if e.key == 0:
            break
        i = (i + 1) & t.mask
    if t.count >= t.capacity:
        t.full += 1
        return
    e.key = key
    e.seen = now
    e.port = port
    e.flags = 0
    t.count += 1
    t.learned += 1

cdef void fdb_remove_slot(fdb_t *t, uint64_t i) noexcept nogil

cdef class Fdb:
    cdef fdb_t t
    cdef uint64_t _remove_where(self, int port, int domain, bint dynamic_only,
                                bint expired_only, uint64_t now) noexcept nogil
