"""Control side of conntrack: allocation, insert/delete (used inline by the
burst loop through conntrack.pxd), the expiry sweep, flushes on backend
removal, dumps and counters."""
import ipaddress

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memset
from fastpath.hugemem cimport huge_calloc, huge_free

STATES = ("new", "established", "fin_wait", "closed")
PROTOS = {6: "TCP", 17: "UDP"}
# netfilter-like defaults (seconds): SYN_SENT 120, ESTABLISHED 86400 (kube-proxy's
# setting), FIN/TIME_WAIT 120, CLOSE 10; UDP 30, and 120 once replies flow.
DEFAULT_TIMEOUTS = {"tcp_new": 120, "tcp_established": 86400, "tcp_fin": 120, "tcp_closed": 10,
                    "udp": 30, "udp_stream": 120}


cdef void ct_put(ct_t *t, uint64_t a, uint64_t b, uint32_t conn, uint8_t dir) noexcept nogil:
    cdef uint64_t i = ct_hash(t, a, b)
    while t.slots[i].b != 0:
        i = (i + 1) & t.mask
    t.slots[i].a = a
    t.slots[i].b = b
    t.slots[i].conn = conn
    t.slots[i].dir = dir


cdef void ct_remove_tuple(ct_t *t, uint64_t a, uint64_t b) noexcept nogil:
    cdef uint64_t i = ct_hash(t, a, b), j, home
    while True:
        if t.slots[i].b == 0:
            return
        if t.slots[i].a == a and t.slots[i].b == b:
            break
        i = (i + 1) & t.mask
    t.slots[i].b = 0
    j = i
    while True:                          # backward shift, as in the FDB
        j = (j + 1) & t.mask
        if t.slots[j].b == 0:
            return
        home = ct_hash(t, t.slots[j].a, t.slots[j].b)
        if (j > i and (home <= i or home > j)) or (j < i and (home <= i and home > j)):
            t.slots[i] = t.slots[j]
            t.slots[j].b = 0
            i = j


cdef void ct_delete(ct_t *t, uint32_t c) noexcept nogil:
    cdef conn_t *k = &t.conns[c]
    if not k.used:
        return
    ct_remove_tuple(t, tuple_a(k.cip, k.vip), tuple_b(k.cport, k.vport, k.proto))
    ct_remove_tuple(t, tuple_a(k.bip, k.sip), tuple_b(k.bport, k.cport, k.proto))
    k.used = 0
    t.free_list[t.nfree] = c
    t.nfree += 1
    st(&t.count, t.count - 1)


cdef bint ct_evict(ct_t *t, uint64_t now) noexcept nogil:
    """Make room in a full table, as netfilter's early_drop does: examine
    CT_EVICT_SCAN entries from a rotating hand and delete, of those that may
    go, the one closest to expiry. May go: expired; not established (a TCP
    SYN never answered, UDP never replied to); closing (FIN or RST seen).
    Never an established connection (nor one marked dead: its next segment
    is owed a RST). The hand moves on every call, so a flood's own entries
    are what it finds and a scan never costs more than CT_EVICT_SCAN reads.
    Returns whether a connection was removed (counted as evicted, or as
    expired if it was)."""
    cdef uint32_t n, c = t.hand, victim = 0
    cdef uint64_t best = 0xFFFFFFFFFFFFFFFFULL
    cdef conn_t *k
    cdef bint found = False
    for n in range(CT_EVICT_SCAN):
        k = &t.conns[c]
        if k.used and (k.expires <= now or
                       (k.state != CT_ESTABLISHED and not (k.flags & CT_DEAD))) and k.expires < best:
            best = k.expires
            victim = c
            found = True
        c += 1
        if c == t.capacity:
            c = 0
    t.hand = c
    if not found:
        return False
    ct_delete(t, victim)
    if best <= now:
        t.expired += 1                   # the sweep would have taken it anyway
    else:
        t.evictions += 1
    return True


cdef int ct_insert(ct_t *t, conn_t *proto_conn, uint64_t now) noexcept nogil:
    """Add a connection (both tuples); returns its index, or -1 when the
    table is full and nothing could be evicted."""
    cdef uint32_t c
    if t.nfree == 0 and not ct_evict(t, now):
        t.insert_failed += 1
        return -1
    t.nfree -= 1
    c = t.free_list[t.nfree]
    t.conns[c] = proto_conn[0]
    t.conns[c].used = 1
    ct_put(t, tuple_a(proto_conn.cip, proto_conn.vip), tuple_b(proto_conn.cport, proto_conn.vport, proto_conn.proto), c, CT_ORIG)
    ct_put(t, tuple_a(proto_conn.bip, proto_conn.sip), tuple_b(proto_conn.bport, proto_conn.cport, proto_conn.proto), c, CT_REPLY)
    st(&t.count, t.count + 1)
    t.inserts += 1
    return <int>c


def _ip(uint32_t v):
    return str(ipaddress.IPv4Address(v))


# One connection in a snapshot (export/restore): fixed layout, native byte
# order (snapshots never leave the host), times absolute on the table's clock.
cdef packed struct ct_rec_t:
    uint32_t cip
    uint32_t vip
    uint32_t bip
    uint32_t sip
    uint16_t cport
    uint16_t vport
    uint16_t bport
    uint8_t proto
    uint8_t state
    uint8_t flags
    uint8_t pad
    uint64_t expires
    uint64_t packets

RECORD_SIZE = sizeof(ct_rec_t)


cdef class Conntrack:
    def __cinit__(self, uint32_t capacity=262144):
        cdef uint64_t slots = 16
        cdef uint32_t bits = 4
        if not 16 <= capacity <= (1 << 24):
            raise ValueError(f"conntrack capacity must be 16..{1 << 24}, got {capacity}")
        while slots < 4 * capacity:          # two tuples per connection, half full at most
            slots <<= 1
            bits += 1
        self.t.capacity = capacity            # set first: __dealloc__ sizes the unmaps from them
        self.t.mask = slots - 1
        self.t.conns = <conn_t *>huge_calloc(capacity, sizeof(conn_t))
        self.t.free_list = <uint32_t *>calloc(capacity, sizeof(uint32_t))
        self.t.slots = <tuple_t *>huge_calloc(slots, sizeof(tuple_t))
        if self.t.conns == NULL or self.t.free_list == NULL or self.t.slots == NULL:
            raise MemoryError("conntrack")
        self.t.capacity = capacity
        for i in range(capacity):
            self.t.free_list[i] = capacity - 1 - i
        self.t.nfree = capacity
        self.t.mask = slots - 1
        self.t.shift = 64 - bits
        self.set_timeouts(DEFAULT_TIMEOUTS)

    def __dealloc__(self):
        huge_free(self.t.conns, self.t.capacity, sizeof(conn_t))
        free(self.t.free_list)
        huge_free(self.t.slots, self.t.mask + 1, sizeof(tuple_t))

    def set_timeouts(self, timeouts):
        t = dict(DEFAULT_TIMEOUTS, **{k: v for k, v in self.timeouts().items()} if self.t.timeout_ms[0] else {})
        for k, v in timeouts.items():
            if k not in DEFAULT_TIMEOUTS:
                raise ValueError(f"unknown conntrack timeout {k!r}; expected one of {', '.join(DEFAULT_TIMEOUTS)}")
            if not (isinstance(v, (int, float)) and 0 < v <= 10 * 86400):
                raise ValueError(f"conntrack timeout {k} must be 0 < seconds <= 864000, got {v!r}")
            t[k] = v
        cdef uint64_t ms[5]
        cdef uint64_t stream = <uint64_t>(t["udp_stream"] * 1000)
        for idx, k in enumerate(("tcp_new", "tcp_established", "tcp_fin", "tcp_closed", "udp")):
            ms[idx] = <uint64_t>(t[k] * 1000)
        pn_spin_lock(&self.t.lock)
        for idx in range(5):
            self.t.timeout_ms[idx] = ms[idx]
        self.t.udp_stream_ms = stream
        pn_spin_unlock(&self.t.lock)

    def timeouts(self):
        names = ("tcp_new", "tcp_established", "tcp_fin", "tcp_closed", "udp")
        # written only by this (control) thread: read without the lock
        out = {k: self.t.timeout_ms[i] / 1000 for i, k in enumerate(names)}
        out["udp_stream"] = self.t.udp_stream_ms / 1000
        return out

    def __len__(self):
        return ld(&self.t.count)

    @property
    def capacity(self):
        return self.t.capacity

    def gc(self, uint64_t now):
        """Remove expired connections; returns how many."""
        cdef uint32_t c, n = 0
        with nogil:
            for c in range(self.t.capacity):
                if c % CT_CHUNK == 0:
                    if c:
                        pn_spin_unlock(&self.t.lock)
                    pn_spin_lock(&self.t.lock)
                if self.t.conns[c].used and self.t.conns[c].expires <= now:
                    ct_delete(&self.t, c)
                    n += 1
            self.t.expired += n
            pn_spin_unlock(&self.t.lock)
        return n

    def flush(self, vip=None, int vport=-1, int proto=-1, backend=None, int bport=-1, bint udp_only=False,
              bint mark_tcp_dead=False):
        """Delete (or, for TCP with mark_tcp_dead, mark for RST) connections
        matching the given service and/or backend. Returns (deleted, marked)."""
        cdef uint32_t c, v = int(ipaddress.IPv4Address(vip)) if vip is not None else 0
        cdef uint32_t b = int(ipaddress.IPv4Address(backend)) if backend is not None else 0
        cdef conn_t *k
        cdef bint by_vip = vip is not None, by_backend = backend is not None
        cdef uint64_t deleted = 0, marked = 0
        with nogil:
            for c in range(self.t.capacity):
                if c % CT_CHUNK == 0:
                    if c:
                        pn_spin_unlock(&self.t.lock)
                    pn_spin_lock(&self.t.lock)
                k = &self.t.conns[c]
                if not k.used:
                    continue
                if (by_vip and k.vip != v) or (vport >= 0 and k.vport != vport) \
                        or (proto >= 0 and k.proto != proto) or (by_backend and k.bip != b) \
                        or (bport >= 0 and k.bport != bport):
                    continue
                if k.proto == 6 and mark_tcp_dead:
                    k.flags |= CT_DEAD
                    marked += 1
                elif not (udp_only and k.proto != 17):
                    ct_delete(&self.t, c)
                    deleted += 1
            self.t.deleted += deleted
            pn_spin_unlock(&self.t.lock)
        return deleted, marked

    def clear(self):
        """Forget every connection at once (memset, no per-entry work; the
        one whole-table hold of the lock: a reset, not a routine operation)."""
        cdef uint32_t i
        with nogil:
            pn_spin_lock(&self.t.lock)
            memset(self.t.conns, 0, self.t.capacity * sizeof(conn_t))
            memset(self.t.slots, 0, (self.t.mask + 1) * sizeof(tuple_t))
            for i in range(self.t.capacity):
                self.t.free_list[i] = self.t.capacity - 1 - i
            self.t.nfree = self.t.capacity
            self.t.deleted += self.t.count
            st(&self.t.count, 0)
            pn_spin_unlock(&self.t.lock)

    def dump(self, uint64_t now=0, int limit=100000):
        out = []
        cdef uint32_t c, n = 0, j
        cdef conn_t *k
        cdef conn_t *buf = <conn_t *>malloc(CT_CHUNK * sizeof(conn_t))
        if buf == NULL:
            raise MemoryError("conntrack dump buffer")
        c = 0
        while c < self.t.capacity and len(out) < limit:
            # a chunk copied under the lock, formatted without it
            n = 0
            with nogil:
                pn_spin_lock(&self.t.lock)
                j = c
                while j < self.t.capacity and j < c + CT_CHUNK:
                    if self.t.conns[j].used:
                        buf[n] = self.t.conns[j]
                        n += 1
                    j += 1
                pn_spin_unlock(&self.t.lock)
            c = j
            for j in range(n):
                k = &buf[j]
                if len(out) >= limit:
                    break
                out.append({"proto": PROTOS.get(k.proto, str(k.proto)), "state": STATES[k.state] if k.proto == 6 else
                        ("replied" if k.state == CT_ESTABLISHED else "unreplied"),
                        "client": f"{_ip(k.cip)}:{k.cport}", "service": f"{_ip(k.vip)}:{k.vport}",
                        "backend": f"{_ip(k.bip)}:{k.bport}",
                        "snat": _ip(k.sip) if k.flags & CT_SNAT else None,
                        "dead": bool(k.flags & CT_DEAD), "packets": k.packets,
                        "expires_in": max(0, <long long>(k.expires - now)) / 1000.0})
        free(buf)
        return out

    def export(self):
        """Every connection as RECORD_SIZE-byte records (for a snapshot):
        tuples, NAT fields, state, flags, packets and expiry time. One C pass,
        no Python object per connection."""
        # Chunk by chunk under the lock (workers keep forwarding between
        # chunks), into room for every connection the table can hold; a
        # connection made or ended meanwhile is in or out, never torn.
        cdef bytearray out = bytearray(<size_t>self.t.capacity * sizeof(ct_rec_t))
        cdef ct_rec_t *r = <ct_rec_t *>(<char *>out)
        cdef uint32_t c, n = 0
        cdef conn_t *k
        with nogil:
            for c in range(self.t.capacity):
                if c % CT_CHUNK == 0:
                    if c:
                        pn_spin_unlock(&self.t.lock)
                    pn_spin_lock(&self.t.lock)
                k = &self.t.conns[c]
                if not k.used:
                    continue
                r[n].cip = k.cip; r[n].vip = k.vip; r[n].bip = k.bip; r[n].sip = k.sip
                r[n].cport = k.cport; r[n].vport = k.vport; r[n].bport = k.bport
                r[n].proto = k.proto; r[n].state = k.state; r[n].flags = k.flags; r[n].pad = 0
                r[n].expires = k.expires
                r[n].packets = k.packets
                n += 1
            pn_spin_unlock(&self.t.lock)
        del out[<size_t>n * sizeof(ct_rec_t):]
        return out

    def restore(self, const unsigned char[:] records, long long offset, uint64_t now):
        """Insert connections from export() records, each expiry moved by
        offset ms (to this table's clock, less the time spent down). Skipped:
        already expired, malformed (unknown protocol, state or flags), or
        clashing with a tuple already here. Returns (restored, skipped); stops
        with the rest skipped when the table is full."""
        if records.shape[0] % sizeof(ct_rec_t):
            raise ValueError(f"conntrack records: {records.shape[0]} bytes is not a multiple of {sizeof(ct_rec_t)}")
        cdef uint64_t n = records.shape[0] // sizeof(ct_rec_t), i, restored = 0
        cdef const ct_rec_t *r
        cdef conn_t nc
        cdef long long expires
        cdef int c
        cdef bint full = False
        for i in range(n):
            if full:
                break
            r = <const ct_rec_t *>(&records[0] + i * sizeof(ct_rec_t))
            expires = <long long>r.expires + offset
            if (r.proto != 6 and r.proto != 17) or r.state > CT_CLOSED or (r.flags & ~(CT_SNAT | CT_DEAD)) \
                    or expires <= <long long>now:
                continue
            memset(&nc, 0, sizeof(nc))
            nc.cip = r.cip; nc.vip = r.vip; nc.bip = r.bip; nc.sip = r.sip
            nc.cport = r.cport; nc.vport = r.vport; nc.bport = r.bport
            nc.proto = r.proto; nc.state = r.state; nc.flags = r.flags
            nc.expires = <uint64_t>expires
            nc.packets = r.packets
            pn_spin_lock(&self.t.lock)
            if ct_find(&self.t, tuple_a(r.cip, r.vip), tuple_b(r.cport, r.vport, r.proto)) != NULL \
                    or ct_find(&self.t, tuple_a(r.bip, r.sip), tuple_b(r.bport, r.cport, r.proto)) != NULL:
                pn_spin_unlock(&self.t.lock)
                continue
            if self.t.nfree == 0:
                full = True                     # full: the rest are skipped, nothing evicted for them
            else:
                c = ct_insert(&self.t, &nc, now)
                if c < 0:
                    self.t.insert_failed -= 1   # not traffic's failure
                    full = True
                else:
                    self.t.inserts -= 1         # restored, not created by traffic
                    restored += 1
            pn_spin_unlock(&self.t.lock)
        return restored, n - restored

    def counters(self):
        cdef uint64_t v[6]
        pn_spin_lock(&self.t.lock)      # written under it by workers: copied under it
        v[0] = self.t.inserts; v[1] = self.t.insert_failed; v[2] = self.t.expired
        v[3] = self.t.deleted; v[4] = self.t.invalid; v[5] = self.t.evictions
        pn_spin_unlock(&self.t.lock)
        return {"entries": ld(&self.t.count), "capacity": self.t.capacity, "inserts": v[0],
                "insert_failed": v[1], "expired": v[2],
                "deleted": v[3], "invalid": v[4], "evictions": v[5]}
