# Connection tracking for service NAT: each connection is found by its
# original tuple (client -> VIP) and its reply tuple (backend -> client, or
# -> the gateway when hairpin SNAT applies). Bounded table, per-state
# timeouts, lazy expiry on lookup plus a periodic sweep. A full table makes
# room like netfilter's early_drop (ct_evict): never at an established
# connection's expense.
# Shared by workers (fastpath/sync.pxd), as lock striping: the table is
# split into ct_tab_t.nsh shards (a power of two, up to CT_SHARDS_MAX, each
# at least CT_SHARD_MIN connections), each its own ct_t with its own
# spinlock, slots, connections, free list, eviction hand and counters, on
# its own cache lines. A connection lives in the shard its client port
# picks (ct_shard): the one field both of its tuples carry (the original's
# source port, the reply's destination port, also after hairpin SNAT), so
# one shard lock covers a lookup, an insert of both tuples and the clash
# check between them, and two workers on different flows rarely meet.
# Every access to a shard's tuples and connections holds its lock, for one
# lookup-and-update (the burst loop) or one chunk of CT_CHUNK connections
# (sweeps, flushes, dumps, snapshots), so a worker waits at most that long.
# Capacity is split evenly: a full shard evicts (ct_evict) or refuses as the
# whole table would, though another shard may have room. ct_tab_t.any is
# set, under a shard lock, by the first insert and cleared only by clear()
# holding every shard lock: the burst loop reads it without a lock to skip
# the reply lookup while nothing was ever tracked (no shared counter is
# written per connection).
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from fastpath.sync cimport pn_spin_lock, pn_spin_unlock, ld, st

cdef enum:
    CT_EVICT_SCAN = 8        # entries a full-table insert examines for a victim (netfilter: 8)
    CT_CHUNK = 4096          # connections a control-side pass handles per hold of the lock
    CT_SHARDS_MAX = 1024     # shards (lock stripes) of a big table
    CT_SHARD_MIN = 256       # connections per shard at least (smaller tables have fewer shards)
    CT_ORIG = 0
    CT_REPLY = 1
    # states
    CT_NEW = 0               # TCP SYN seen / first UDP datagram
    CT_ESTABLISHED = 1       # a reply came back
    CT_FIN = 2               # FIN seen
    CT_CLOSED = 3            # RST seen
    # flags
    CT_SNAT = 1              # hairpin: source rewritten to the gateway
    CT_DEAD = 2              # backend removed: next packet gets a RST

ctypedef struct conn_t:
    uint32_t cip             # client
    uint32_t vip
    uint32_t bip             # backend
    uint32_t sip             # source the backend sees (cip, or the gateway with SNAT)
    uint16_t cport
    uint16_t vport
    uint16_t bport
    uint8_t proto
    uint8_t state
    uint8_t flags
    uint8_t used
    uint64_t expires
    uint64_t packets

ctypedef struct tuple_t:     # hash entry: a tuple -> (connection, direction)
    uint64_t a               # src ip << 32 | dst ip
    uint64_t b               # src port << 32 | dst port << 16 | proto << 8 | 1; 0: empty
    uint32_t conn
    uint8_t dir

ctypedef struct ct_t:        # one shard
    uint32_t lock            # see above
    conn_t *conns
    uint32_t *free_list
    uint32_t nfree
    uint32_t capacity
    tuple_t *slots
    uint64_t mask
    uint32_t shift
    uint64_t count
    uint64_t timeout_ms[5]   # NEW(tcp), ESTABLISHED(tcp), FIN, CLOSED, UDP
    uint64_t udp_stream_ms   # UDP once a reply was seen
    uint32_t hand            # where the next eviction scan starts (rotates over conns)
    # counters
    uint64_t inserts
    uint64_t insert_failed
    uint64_t expired
    uint64_t deleted
    uint64_t invalid
    uint64_t evictions       # connections dropped early to make room for a new one

ctypedef struct ct_tab_t:
    ct_t **sh                # nsh shards, each on cache lines of its own
    uint32_t nsh             # a power of two
    uint32_t mask            # nsh - 1
    uint32_t any             # see above

cdef inline ct_t *ct_shard(const ct_tab_t *tab, uint16_t cport) noexcept nogil:
    """The shard of the connection whose client port is cport."""
    return tab.sh[((<uint32_t>cport * 0x9E3779B1u) >> 16) & tab.mask]

cdef inline uint64_t ct_hash(const ct_t *t, uint64_t a, uint64_t b) noexcept nogil:
    return ((a ^ (b * 0xC2B2AE3D27D4EB4FULL)) * 0x9E3779B97F4A7C15ULL) >> t.shift

cdef inline tuple_t *ct_find(ct_t *t, uint64_t a, uint64_t b) noexcept nogil:
    cdef uint64_t i = ct_hash(t, a, b)
    while True:
        if t.slots[i].b == b and t.slots[i].a == a:
            return &t.slots[i]
        if t.slots[i].b == 0:
            return NULL
        i = (i + 1) & t.mask

cdef inline uint64_t tuple_b(uint16_t sport, uint16_t dport, uint8_t proto) noexcept nogil:
    return (<uint64_t>sport << 32) | (<uint64_t>dport << 16) | (<uint64_t>proto << 8) | 1

cdef inline uint64_t tuple_a(uint32_t src, uint32_t dst) noexcept nogil:
    return (<uint64_t>src << 32) | dst

cdef inline void ct_orig_update(const ct_t *ct, conn_t *k, uint8_t proto, uint8_t flags, uint64_t now) noexcept nogil:
    """A packet of a known connection in its original direction: state and
    timeout (the caller holds the shard's lock). A module function, not a
    method: a cdef method is called through the class's vtable."""
    if proto == 6:
        if flags & 0x04:
            k.state = CT_CLOSED
        elif flags & 0x01:
            k.state = CT_FIN
        k.expires = now + ct.timeout_ms[k.state]
    else:
        k.expires = now + (ct.udp_stream_ms if k.state == CT_ESTABLISHED else ct.timeout_ms[4])

cdef void ct_put(ct_t *t, uint64_t a, uint64_t b, uint32_t conn, uint8_t dir) noexcept nogil
cdef void ct_remove_tuple(ct_t *t, uint64_t a, uint64_t b) noexcept nogil
cdef void ct_delete(ct_t *t, uint32_t c) noexcept nogil
cdef bint ct_evict(ct_t *t, uint64_t now) noexcept nogil
cdef int ct_insert(ct_t *t, conn_t *proto_conn, uint64_t now) noexcept nogil

cdef class Conntrack:
    cdef ct_tab_t tab
    cdef conn_t *conns_mem       # every shard's connections, one mapping (huge pages)
    cdef tuple_t *slots_mem      # every shard's slots, one mapping
    cdef uint64_t nslots_mem
    cdef uint32_t capacity_
    cdef ct_t *sh(self, uint32_t i) noexcept nogil
