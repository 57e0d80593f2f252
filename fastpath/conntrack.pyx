"""Control side of conntrack: allocation, insert/delete (used inline by the
burst loop through conntrack.pxd), the expiry sweep, flushes on backend
removal, dumps and counters."""
import ipaddress

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc

cdef extern from "<stdlib.h>" nogil:
    void *aligned_alloc(size_t alignment, size_t size)
from libc.string cimport memset
from fastpath.hugemem cimport huge_calloc, huge_free
from fastpath.sync cimport st32

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


cdef inline void ct_chunk_step(ct_t *t, uint32_t c) noexcept nogil:
    """Before connection c of a control pass over shard t: the pass holds the
    shard's lock CT_CHUNK connections at a time, letting workers in between
    (the caller takes nothing itself and unlocks after its last one)."""
    if c % CT_CHUNK == 0:
        if c:
            pn_spin_unlock(&t.lock)
        pn_spin_lock(&t.lock)


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
        cdef uint32_t nsh = 1, i, cap, bits
        cdef uint64_t slots, total_slots = 0, conn_off = 0, slot_off = 0
        cdef ct_t *t
        if not 16 <= capacity <= (1 << 24):
            raise ValueError(f"conntrack capacity must be 16..{1 << 24}, got {capacity}")
        while nsh < CT_SHARDS_MAX and capacity // (2 * nsh) >= CT_SHARD_MIN:
            nsh *= 2
        self.capacity_ = capacity
        self.tab.sh = <ct_t **>calloc(nsh, sizeof(ct_t *))
        if self.tab.sh == NULL:
            raise MemoryError("conntrack")
        for i in range(nsh):
            self.tab.sh[i] = <ct_t *>aligned_alloc(64, (sizeof(ct_t) + 63) // 64 * 64)
            if self.tab.sh[i] == NULL:
                raise MemoryError("conntrack")
            memset(self.tab.sh[i], 0, sizeof(ct_t))
            self.tab.nsh = i + 1                   # __dealloc__ frees what exists
        self.tab.mask = nsh - 1
        for i in range(nsh):                      # shard sizes first, then one mapping each for all
            t = self.tab.sh[i]
            t.capacity = capacity // nsh + (1 if i < capacity % nsh else 0)
            slots = 16
            bits = 4
            while slots < 4 * <uint64_t>t.capacity:   # two tuples per connection, half full at most
                slots <<= 1
                bits += 1
            t.mask = slots - 1
            t.shift = 64 - bits
            total_slots += slots
        self.nslots_mem = total_slots
        self.conns_mem = <conn_t *>huge_calloc(capacity, sizeof(conn_t))
        self.slots_mem = <tuple_t *>huge_calloc(total_slots, sizeof(tuple_t))
        if self.conns_mem == NULL or self.slots_mem == NULL:
            raise MemoryError("conntrack")
        for i in range(nsh):
            t = self.tab.sh[i]
            t.conns = self.conns_mem + conn_off
            t.slots = self.slots_mem + slot_off
            conn_off += t.capacity
            slot_off += t.mask + 1
            t.free_list = <uint32_t *>calloc(t.capacity, sizeof(uint32_t))
            if t.free_list == NULL:
                raise MemoryError("conntrack")
            for cap in range(t.capacity):
                t.free_list[cap] = t.capacity - 1 - cap
            t.nfree = t.capacity
        self.set_timeouts(DEFAULT_TIMEOUTS)

    def __dealloc__(self):
        cdef uint32_t i
        huge_free(self.conns_mem, self.capacity_, sizeof(conn_t))
        huge_free(self.slots_mem, self.nslots_mem, sizeof(tuple_t))
        if self.tab.sh != NULL:
            for i in range(self.tab.nsh):
                free(self.tab.sh[i].free_list)
                free(self.tab.sh[i])
            free(self.tab.sh)

    cdef ct_t *sh(self, uint32_t i) noexcept nogil:
        return self.tab.sh[i]

    @property
    def shards(self):
        """How many lock stripes the table has (conntrack.pxd)."""
        return self.tab.nsh

    def set_timeouts(self, timeouts):
        t = dict(DEFAULT_TIMEOUTS, **{k: v for k, v in self.timeouts().items()} if self.sh(0).timeout_ms[0] else {})
        for k, v in timeouts.items():
            if k not in DEFAULT_TIMEOUTS:
                raise ValueError(f"unknown conntrack timeout {k!r}; expected one of {', '.join(DEFAULT_TIMEOUTS)}")
            if not (isinstance(v, (int, float)) and 0 < v <= 10 * 86400):
                raise ValueError(f"conntrack timeout {k} must be 0 < seconds <= 864000, got {v!r}")
            t[k] = v
        cdef uint64_t ms[5]
        cdef uint64_t stream = <uint64_t>(t["udp_stream"] * 1000)
        cdef uint32_t i, idx
        cdef ct_t *sh
        for idx, k in enumerate(("tcp_new", "tcp_established", "tcp_fin", "tcp_closed", "udp")):
            ms[idx] = <uint64_t>(t[k] * 1000)
        for i in range(self.tab.nsh):
            sh = self.sh(i)
            pn_spin_lock(&sh.lock)
            for idx in range(5):
                sh.timeout_ms[idx] = ms[idx]
            sh.udp_stream_ms = stream
            pn_spin_unlock(&sh.lock)

    def timeouts(self):
        names = ("tcp_new", "tcp_established", "tcp_fin", "tcp_closed", "udp")
        # written only by this (control) thread, the same in every shard: read without the lock
        cdef ct_t *t = self.sh(0)
        out = {k: t.timeout_ms[i] / 1000 for i, k in enumerate(names)}
        out["udp_stream"] = t.udp_stream_ms / 1000
        return out

    def __len__(self):
        cdef uint64_t n = 0
        cdef uint32_t i
        for i in range(self.tab.nsh):
            n += ld(&self.sh(i).count)
        return n

    @property
    def capacity(self):
        return self.capacity_

    def gc(self, uint64_t now):
        """Remove expired connections; returns how many."""
        cdef uint32_t c, i, n, total = 0
        cdef ct_t *t
        with nogil:
            for i in range(self.tab.nsh):
                t = self.sh(i)
                n = 0
                for c in range(t.capacity):
                    ct_chunk_step(t, c)
                    if t.conns[c].used and t.conns[c].expires <= now:
                        ct_delete(t, c)
                        n += 1
                t.expired += n
                pn_spin_unlock(&t.lock)
                total += n
        return total

    def flush(self, vip=None, int vport=-1, int proto=-1, backend=None, int bport=-1, bint udp_only=False,
              bint mark_tcp_dead=False, host=None):
        """Delete (or, for TCP with mark_tcp_dead, mark for RST) connections
        matching the given service and/or backend; host: those whose client
        or backend is that address (a pod that goes: every connection it is
        an end of). Returns (deleted, marked)."""
        cdef uint32_t c, i, v = int(ipaddress.IPv4Address(vip)) if vip is not None else 0
        cdef uint32_t b = int(ipaddress.IPv4Address(backend)) if backend is not None else 0
        cdef uint32_t h = int(ipaddress.IPv4Address(host)) if host is not None else 0
        cdef conn_t *k
        cdef ct_t *t
        cdef bint by_vip = vip is not None, by_backend = backend is not None, by_host = host is not None
        cdef uint64_t deleted = 0, marked = 0, d
        with nogil:
            for i in range(self.tab.nsh):
                t = self.sh(i)
                d = 0
                for c in range(t.capacity):
                    ct_chunk_step(t, c)
                    k = &t.conns[c]
                    if not k.used:
                        continue
                    if (by_vip and k.vip != v) or (vport >= 0 and k.vport != vport) \
                            or (proto >= 0 and k.proto != proto) or (by_backend and k.bip != b) \
                            or (bport >= 0 and k.bport != bport) \
                            or (by_host and k.cip != h and k.bip != h):
                        continue
                    if k.proto == 6 and mark_tcp_dead:
                        k.flags |= CT_DEAD
                        marked += 1
                    elif not (udp_only and k.proto != 17):
                        ct_delete(t, c)
                        d += 1
                t.deleted += d
                pn_spin_unlock(&t.lock)
                deleted += d
        return deleted, marked

    def clear(self):
        """Forget every connection at once (memset, no per-entry work; every
        shard's lock held together: a reset, not a routine operation)."""
        cdef uint32_t i, c
        cdef ct_t *t
        with nogil:
            for i in range(self.tab.nsh):
                pn_spin_lock(&self.sh(i).lock)
            for i in range(self.tab.nsh):
                t = self.sh(i)
                memset(t.conns, 0, t.capacity * sizeof(conn_t))
                memset(t.slots, 0, (t.mask + 1) * sizeof(tuple_t))
                for c in range(t.capacity):
                    t.free_list[c] = t.capacity - 1 - c
                t.nfree = t.capacity
                t.deleted += t.count
                st(&t.count, 0)
            st32(&self.tab.any, 0)
            for i in range(self.tab.nsh):
                pn_spin_unlock(&self.sh(i).lock)

    def dump(self, uint64_t now=0, int limit=100000):
        out = []
        cdef uint32_t c, n = 0, j, i
        cdef conn_t *k
        cdef ct_t *t
        cdef conn_t *buf = <conn_t *>malloc(CT_CHUNK * sizeof(conn_t))
        if buf == NULL:
            raise MemoryError("conntrack dump buffer")
        for i in range(self.tab.nsh):
            t = self.sh(i)
            c = 0
            while c < t.capacity and len(out) < limit:
                # a chunk copied under the lock, formatted without it
                n = 0
                with nogil:
                    pn_spin_lock(&t.lock)
                    j = c
                    while j < t.capacity and j < c + CT_CHUNK:
                        if t.conns[j].used:
                            buf[n] = t.conns[j]
                            n += 1
                        j += 1
                    pn_spin_unlock(&t.lock)
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
        # Chunk by chunk under each shard's lock (workers keep forwarding
        # between chunks), into room for every connection the table can hold;
        # a connection made or ended meanwhile is in or out, never torn.
        cdef bytearray out = bytearray(<size_t>self.capacity_ * sizeof(ct_rec_t))
        cdef ct_rec_t *r = <ct_rec_t *>(<char *>out)
        cdef uint32_t c, i, n = 0
        cdef conn_t *k
        cdef ct_t *t
        with nogil:
            for i in range(self.tab.nsh):
                t = self.sh(i)
                for c in range(t.capacity):
                    ct_chunk_step(t, c)
                    k = &t.conns[c]
                    if not k.used:
                        continue
                    r[n].cip = k.cip; r[n].vip = k.vip; r[n].bip = k.bip; r[n].sip = k.sip
                    r[n].cport = k.cport; r[n].vport = k.vport; r[n].bport = k.bport
                    r[n].proto = k.proto; r[n].state = k.state; r[n].flags = k.flags; r[n].pad = 0
                    r[n].expires = k.expires
                    r[n].packets = k.packets
                    n += 1
                pn_spin_unlock(&t.lock)
        del out[<size_t>n * sizeof(ct_rec_t):]
        return out

    def restore(self, const unsigned char[:] records, long long offset, uint64_t now):
        """Insert connections from export() records, each expiry moved by
        offset ms (to this table's clock, less the time spent down). Skipped:
        already expired, malformed (unknown protocol, state or flags), or
        clashing with a tuple already here. Returns (restored, skipped); a
        record whose shard is full is skipped, nothing evicted for it."""
        if records.shape[0] % sizeof(ct_rec_t):
            raise ValueError(f"conntrack records: {records.shape[0]} bytes is not a multiple of {sizeof(ct_rec_t)}")
        cdef uint64_t n = records.shape[0] // sizeof(ct_rec_t), i, restored = 0
        cdef const ct_rec_t *r
        cdef conn_t nc
        cdef long long expires
        cdef int c
        cdef ct_t *t
        for i in range(n):
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
            t = ct_shard(&self.tab, r.cport)
            pn_spin_lock(&t.lock)
            if ct_find(t, tuple_a(r.cip, r.vip), tuple_b(r.cport, r.vport, r.proto)) != NULL \
                    or ct_find(t, tuple_a(r.bip, r.sip), tuple_b(r.bport, r.cport, r.proto)) != NULL \
                    or t.nfree == 0:
                pn_spin_unlock(&t.lock)
                continue
            c = ct_insert(t, &nc, now)
            if c < 0:
                t.insert_failed -= 1            # not traffic's failure
            else:
                t.inserts -= 1                  # restored, not created by traffic
                st32(&self.tab.any, 1)
                restored += 1
            pn_spin_unlock(&t.lock)
        return restored, n - restored

    def counters(self):
        cdef uint64_t v[6]
        cdef uint64_t entries = 0
        cdef uint32_t i
        cdef ct_t *t
        memset(v, 0, sizeof(v))
        for i in range(self.tab.nsh):
            t = self.sh(i)
            pn_spin_lock(&t.lock)      # written under it by workers: copied under it
            v[0] += t.inserts; v[1] += t.insert_failed; v[2] += t.expired
            v[3] += t.deleted; v[4] += t.invalid; v[5] += t.evictions
            entries += t.count
            pn_spin_unlock(&t.lock)
        return {"entries": entries, "capacity": self.capacity_, "shards": self.tab.nsh, "inserts": v[0],
                "insert_failed": v[1], "expired": v[2],
                "deleted": v[3], "invalid": v[4], "evictions": v[5]}
