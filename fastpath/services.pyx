"""Control side of the service map: add/replace/remove one service port at a
time (validated first, swapped in whole), Maglev tables, listing, counters,
and the ClientIP affinity table's export/restore for snapshots."""
import hashlib
import ipaddress
import socket

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memset
from fastpath.sync cimport pn_write_lock, pn_write_unlock, ld

PROTO = {"TCP": 6, "UDP": 17}
PROTO_NAME = {6: "TCP", 17: "UDP"}
MAGLEV_SIZES = (251, 4099, 16381, 65537)    # primes; Maglev wants M >> backends
MAX_BACKENDS = 4096


def _u64(data):
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def maglev_table(backends, uint32_t m):
    """Maglev's population (Eisenbud et al., NSDI 2016, sec. 3.4): each
    backend walks its own permutation of the M slots, taking turns, so each
    gets ~M/N slots and removing one moves only ~1/N of them."""
    n = len(backends)
    offs = [_u64(f"{ip}:{port}/o".encode()) % m for ip, port in backends]
    skips = [_u64(f"{ip}:{port}/s".encode()) % (m - 1) + 1 for ip, port in backends]
    nxt = [0] * n
    table = [-1] * m
    filled = 0
    while filled < m:
        for i in range(n):
            c = (offs[i] + nxt[i] * skips[i]) % m
            while table[c] >= 0:
                nxt[i] += 1
                c = (offs[i] + nxt[i] * skips[i]) % m
            table[c] = i
            nxt[i] += 1
            filled += 1
            if filled == m:
                break
    return table


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)     # JSON true is not port 1


cdef inline svc_t *_probe(svc_t *slots, uint64_t mask, uint32_t shift, uint64_t key) noexcept nogil:
    """The slot holding key, or the empty one where it would go."""
    cdef uint64_t i = (key * 0x9E3779B97F4A7C15ULL) >> shift
    while slots[i].key != 0 and slots[i].key != key:
        i = (i + 1) & mask
    return &slots[i]


cdef long long _change(svc_t *slots, uint64_t mask, uint32_t shift, const svc_t *tmpl, uint64_t n,
                       const uint64_t *dkeys, uint64_t nd, void **retire, uint64_t *nretire) noexcept nogil:
    """Upserts tmpl[0..n) then deletes dkeys[0..nd) in slots; the backend and
    Maglev arrays they replace or remove go to retire (freed by the caller
    once no worker can hold them). Returns the change in the entry count."""
    cdef long long delta = 0
    cdef uint64_t i, j, k, home
    cdef svc_t *t
    for k in range(n):
        t = _probe(slots, mask, shift, tmpl[k].key)
        if t.key:
            retire[nretire[0]] = t.b
            retire[nretire[0] + 1] = t.maglev
            nretire[0] += 2
        else:
            delta += 1
        t[0] = tmpl[k]
    for k in range(nd):
        t = _probe(slots, mask, shift, dkeys[k])
        if not t.key:
            continue
        retire[nretire[0]] = t.b
        retire[nretire[0] + 1] = t.maglev
        nretire[0] += 2
        delta -= 1
        i = t - slots
        t.key = 0
        t.b = NULL
        t.maglev = NULL
        j = i
        while True:                           # backward shift
            j = (j + 1) & mask
            if slots[j].key == 0:
                break
            home = (slots[j].key * 0x9E3779B97F4A7C15ULL) >> shift
            if (j > i and (home <= i or home > j)) or (j < i and (home <= i and home > j)):
                slots[i] = slots[j]
                slots[j].key = 0
                slots[j].b = NULL
                slots[j].maglev = NULL
                i = j
    return delta


cdef inline str _ip(uint32_t v):
    # dotted quad without ipaddress objects: list() and snapshots format 100k of them
    return f"{v >> 24}.{(v >> 16) & 255}.{(v >> 8) & 255}.{v & 255}"


# One ClientIP affinity entry in a snapshot (export/restore): native byte
# order (snapshots never leave the host), expiry absolute on the map's clock.
cdef packed struct aff_rec_t:
    uint64_t svc             # the service port's key (svc_key)
    uint64_t expires
    uint32_t client
    uint32_t ip              # the backend
    uint16_t port
    uint16_t pad

AFFINITY_RECORD_SIZE = sizeof(aff_rec_t)


cdef class Services:
    def __cinit__(self, uint64_t capacity=131072, service_cidr="10.96.0.0/12", uint64_t affinity_capacity=65536):
        cdef uint64_t slots = 16, aslots = 16
        cdef uint32_t bits = 4
        if not 1 <= capacity <= (1 << 22):
            raise ValueError(f"service capacity must be 1..{1 << 22}, got {capacity}")
        while slots < 2 * capacity:
            slots <<= 1
            bits += 1
        while aslots < affinity_capacity:
            aslots <<= 1
        self.m.slots = <svc_t *>calloc(slots, sizeof(svc_t))
        self.m.aff = <aff_t *>calloc(aslots, sizeof(aff_t))
        self.m.aff_lock = <uint32_t *>calloc(aslots // AFF_WAYS, sizeof(uint32_t))
        if self.m.slots == NULL or self.m.aff == NULL or self.m.aff_lock == NULL:
            raise MemoryError("service map")
        self.m.mask = slots - 1
        self.m.shift = 64 - bits
        self.m.capacity = capacity
        self.m.aff_mask = aslots - 1
        self.m.rng = 0x9E3779B97F4A7C15ULL
        self.set_cidr(service_cidr)

    def __dealloc__(self):
        if self.m.slots != NULL:
            for i in range(self.m.mask + 1):
                self._free_slot(&self.m.slots[i])
        free(self.m.slots)
        free(self.m.aff)
        free(self.m.aff_lock)

    cdef void _free_slot(self, svc_t *s) noexcept nogil:
        free(s.b)
        free(s.maglev)
        s.b = NULL
        s.maglev = NULL

    def set_cidr(self, cidr):
        net = ipaddress.IPv4Network(str(cidr))
        cdef uint32_t a = int(net.network_address), mk = int(net.netmask)
        pn_write_lock(self.sy)
        self.m.net = a
        self.m.netmask = mk
        pn_write_unlock(self.sy)

    def seed(self, uint64_t seed):
        self.m.rng = seed or 1

    def _key(self, vip, port, proto):
        if not isinstance(vip, str):
            raise ValueError(f"service VIP must be an IPv4 address string, got {vip!r}")
        try:
            v = ipaddress.IPv4Address(vip)
        except ValueError as e:
            raise ValueError(f"service VIP: {e}") from None
        if (int(v) & self.m.netmask) != self.m.net:
            raise ValueError(f"service VIP {v} is outside the service CIDR")
        if not _is_int(port) or not 1 <= port <= 65535:
            raise ValueError(f"service port must be 1..65535, got {port!r}")
        if proto not in PROTO:
            raise ValueError(f"protocol must be TCP or UDP, got {proto!r}")
        return svc_key(int(v), port, PROTO[proto])

    def check(self, vip, port, proto="TCP", backends=(), lb="random", affinity_timeout=0,
              maglev_size=16381):
        """Validate one service port without changing anything; returns the
        normalised (key, sorted backends)."""
        key = self._key(vip, port, proto)
        if lb not in ("random", "maglev"):
            raise ValueError(f"load balancing must be random or maglev, got {lb!r}")
        if lb == "maglev" and maglev_size not in MAGLEV_SIZES:
            raise ValueError(f"Maglev table size must be one of {MAGLEV_SIZES}, got {maglev_size}")
        if not _is_int(affinity_timeout) or not 0 <= affinity_timeout <= 86400:
            raise ValueError(f"affinity timeout must be 0..86400 seconds, got {affinity_timeout!r}")
        bl = []
        for b in backends:
            try:
                ip, bp = b
                ipn = int.from_bytes(socket.inet_pton(socket.AF_INET, ip), "big")   # strict dotted quad, fast
            except (TypeError, ValueError, OSError):
                raise ValueError(f"backend {b!r}: expected (IPv4 address, port)") from None
            if not _is_int(bp) or not 1 <= bp <= 65535:
                raise ValueError(f"backend {ip}: port must be 1..65535, got {bp!r}")
            if ipn == 0 or ipn >> 24 == 127 or ipn >> 28 == 0xE or ipn == 0xFFFFFFFF or ipn >> 16 == 0xA9FE:
                # traffic DNATed there would go nowhere (as Kubernetes' endpoint validation)
                raise ValueError(f"backend {ip}: not a unicast address a pod can have "
                                 "(unspecified, loopback, link-local, multicast or broadcast)")
            bl.append((ipn, bp))
        bl = sorted(set(bl))
        if len(bl) > MAX_BACKENDS:
            raise ValueError(f"at most {MAX_BACKENDS} backends per service, got {len(bl)}")
        return key, bl

    def set(self, vip, int port, proto="TCP", backends=(), lb="random", affinity_timeout=0,
            uint32_t maglev_size=16381):
        """Add or replace one service port. backends: [(ip, port), ...]."""
        pykey, bl = self.check(vip, port, proto, backends, lb, affinity_timeout, maglev_size)
        cdef uint64_t key = pykey
        cdef svc_t *s = svc_find(&self.m, key)
        if s == NULL and self.m.count >= self.m.capacity:
            raise OverflowError(f"service map full ({self.m.capacity} service ports)")
        # Build everything first, then swap it in: a failure leaves the old service.
        cdef backend_t *arr = NULL
        cdef uint16_t *mg = NULL
        self._build(bl, lb, maglev_size, &arr, &mg)
        cdef uint64_t idx
        cdef uint32_t nb = len(bl), amsec = <uint32_t>(affinity_timeout * 1000)
        cdef uint32_t msize = maglev_size if lb == "maglev" else 0
        cdef uint8_t lbv = LB_MAGLEV if lb == "maglev" else LB_RANDOM
        cdef backend_t *old_b = NULL
        cdef uint16_t *old_mg = NULL
        # Swapped in under the table lock (no worker is mid-burst), the old
        # arrays freed after it: no worker can still hold them.
        pn_write_lock(self.sy)
        if s == NULL:
            idx = (key * 0x9E3779B97F4A7C15ULL) >> self.m.shift
            while self.m.slots[idx].key != 0:
                idx = (idx + 1) & self.m.mask
            s = &self.m.slots[idx]
            s.key = key
            self.m.count += 1
        else:
            old_b = s.b
            old_mg = s.maglev
        s.b = arr
        s.nb = nb
        s.maglev = mg
        # kept without backends too (no table then): a snapshot saves the size
        # asked for, and backends added later get a table of that size
        s.msize = msize
        s.lb = lbv
        s.affinity_ms = amsec
        pn_write_unlock(self.sy)
        free(old_b)
        free(old_mg)
        self.generation += 1

    cdef int _build(self, list bl, lb, uint32_t maglev_size, backend_t **arr, uint16_t **mg) except -1:
        """A service port's backend array and Maglev table, in C memory the
        caller owns (freed by it, or by the slot it goes into)."""
        arr[0] = <backend_t *>calloc(max(1, len(bl)), sizeof(backend_t))
        mg[0] = NULL
        if arr[0] == NULL:
            raise MemoryError()
        for i, (ipn, bp) in enumerate(bl):
            arr[0][i].ip = ipn
            arr[0][i].port = bp
        if lb == "maglev" and bl:
            table = maglev_table([(_ip(a), p) for a, p in bl], maglev_size)
            mg[0] = <uint16_t *>calloc(maglev_size, sizeof(uint16_t))
            if mg[0] == NULL:
                free(arr[0])
                arr[0] = NULL
                raise MemoryError()
            for i, v in enumerate(table):
                mg[0][i] = v
        return 0

    def apply(self, upsert=(), delete=()):
        """A bulk change, visible whole: upsert [(vip, port, proto, backends,
        lb, affinity_timeout, maglev_size)] (the last three optional) then
        delete [(vip, port, proto)] (absent ones ignored). Every entry is
        checked and every backend array and Maglev table built first. Up to
        APPLY_IN_PLACE changes are then made in the live map under one hold
        of the table lock; more, in a new slot array built off to the side
        from the current one, swapped in under the lock in one pointer store
        (RCU-style). Either way the old array and replaced backends are
        freed after the lock is released, when no worker can still be
        reading them, and a worker sees the map before or after, never half
        of it. A rejected
        change (bad entry, map full, no memory) changes nothing. Returns
        the number of service ports after."""
        cdef list ups = [], dels = []
        cdef set final = set()
        for i, e in enumerate(upsert):
            vip, port, proto = e[0], e[1], e[2]
            backends = e[3] if len(e) > 3 else ()
            lb = e[4] if len(e) > 4 else "random"
            aff = e[5] if len(e) > 5 else 0
            msz = e[6] if len(e) > 6 else 16381
            try:
                key, bl = self.check(vip, port, proto, backends, lb, aff, msz)
            except ValueError as err:
                raise ValueError(f"upsert[{i}]: {err}") from None
            ups.append((key, bl, lb, aff, msz))
            final.add(key)
        for i, d in enumerate(delete):
            try:
                key = self._key(d[0], d[1], d[2])
            except ValueError as err:
                raise ValueError(f"delete[{i}]: {err}") from None
            dels.append(key)
        cdef uint64_t now_count = self.m.count, added = 0
        for key in final:
            if svc_find(&self.m, key) == NULL:
                added += 1
        if now_count + added > self.m.capacity:     # upserts go in before deletes
            raise OverflowError(f"{added} new service ports would overflow the service map "
                                f"({now_count} of {self.m.capacity} used); nothing changed")
        cdef uint64_t n = len(ups), nd = len(dels), nslots = self.m.mask + 1, i2, count
        cdef backend_t **arrs = <backend_t **>calloc(max(1, n), sizeof(backend_t *))
        cdef uint16_t **mgs = <uint16_t **>calloc(max(1, n), sizeof(uint16_t *))
        cdef svc_t *tmpl = <svc_t *>calloc(max(1, n), sizeof(svc_t))
        cdef uint64_t *dkeys = <uint64_t *>calloc(max(1, nd), sizeof(uint64_t))
        # what the change retires: at most two arrays per upsert and per delete
        cdef void **retire = <void **>calloc(2 * (n + nd) + 1, sizeof(void *))
        cdef uint64_t nretire = 0
        cdef bint in_place = n + nd <= APPLY_IN_PLACE
        cdef svc_t *slots = NULL
        cdef svc_t *old_slots
        try:
            if arrs == NULL or mgs == NULL or tmpl == NULL or dkeys == NULL or retire == NULL:
                raise MemoryError("service map change")
            if not in_place:
                slots = <svc_t *>calloc(nslots, sizeof(svc_t))
                if slots == NULL:
                    raise MemoryError("service map change")
            for i2 in range(n):
                key, bl, lb, aff, msz = ups[i2]
                self._build(bl, lb, msz, &arrs[i2], &mgs[i2])
                tmpl[i2].key = key
                tmpl[i2].b = arrs[i2]
                tmpl[i2].nb = len(bl)
                tmpl[i2].maglev = mgs[i2]
                tmpl[i2].msize = msz if lb == "maglev" else 0
                tmpl[i2].lb = LB_MAGLEV if lb == "maglev" else LB_RANDOM
                tmpl[i2].affinity_ms = <uint32_t>(aff * 1000)
            for i2 in range(nd):
                dkeys[i2] = dels[i2]
        except BaseException:
            if arrs != NULL and mgs != NULL:
                for i2 in range(n):
                    free(arrs[i2])
                    free(mgs[i2])
            free(arrs); free(mgs); free(tmpl); free(dkeys); free(retire); free(slots)
            raise
        # From here on nothing can fail, and no Python runs under the lock.
        with nogil:
            if in_place:
                # A few changes: made in the live map under one hold of the
                # table lock, which no worker is inside of, so they are seen
                # together; the hold is as short as a few entries' stores.
                pn_write_lock(self.sy)
                count = self.m.count + _change(self.m.slots, self.m.mask, self.m.shift, tmpl, n, dkeys, nd,
                                               retire, &nretire)
                self.m.count = count
                pn_write_unlock(self.sy)
            else:
                # Many: a new slot array built off to the side from the live
                # one (only this thread changes it) plus the change, then
                # published by one pointer store under the lock, the old
                # array freed after, RCU-style.
                count = 0
                for i2 in range(nslots):
                    if self.m.slots[i2].key:
                        _probe(slots, self.m.mask, self.m.shift, self.m.slots[i2].key)[0] = self.m.slots[i2]
                        count += 1
                count += _change(slots, self.m.mask, self.m.shift, tmpl, n, dkeys, nd, retire, &nretire)
                pn_write_lock(self.sy)
                old_slots = self.m.slots
                self.m.slots = slots
                self.m.count = count
                pn_write_unlock(self.sy)
                free(old_slots)                   # the entries' arrays live on in the new one
            for i2 in range(nretire):
                free(retire[i2])
        free(retire); free(arrs); free(mgs); free(tmpl); free(dkeys)
        self.generation += 1
        return count

    def remove(self, vip, int port, proto="TCP"):
        cdef uint64_t key = self._key(vip, port, proto)
        cdef svc_t *s = svc_find(&self.m, key)
        if s == NULL:
            raise KeyError(f"no service {vip}:{port}/{proto}")
        cdef uint64_t i = s - self.m.slots, j, home
        cdef backend_t *old_b = s.b
        cdef uint16_t *old_mg = s.maglev
        pn_write_lock(self.sy)           # the shift moves entries a probing worker would miss
        s.key = 0
        s.b = NULL
        s.maglev = NULL
        j = i
        while True:                      # backward shift
            j = (j + 1) & self.m.mask
            if self.m.slots[j].key == 0:
                break
            home = (self.m.slots[j].key * 0x9E3779B97F4A7C15ULL) >> self.m.shift
            if (j > i and (home <= i or home > j)) or (j < i and (home <= i and home > j)):
                self.m.slots[i] = self.m.slots[j]
                self.m.slots[j].key = 0
                self.m.slots[j].b = NULL
                self.m.slots[j].maglev = NULL
                i = j
        self.m.count -= 1
        pn_write_unlock(self.sy)
        free(old_b)
        free(old_mg)
        self.generation += 1

    @property
    def capacity(self):
        return self.m.capacity

    def has_key(self, uint64_t key):
        """Whether the key check() returned is in the map (no dict built, unlike get)."""
        return svc_find(&self.m, key) != NULL

    def get(self, vip, int port, proto="TCP"):
        cdef svc_t *s = svc_find(&self.m, self._key(vip, port, proto))
        if s == NULL:
            return None
        return self._describe(s)

    cdef dict _describe(self, svc_t *s):
        d = {"vip": _ip(<uint32_t>(s.key >> 32)), "port": (s.key >> 16) & 0xffff,
             "protocol": PROTO_NAME.get((s.key >> 8) & 0xff), "lb": "maglev" if s.lb == LB_MAGLEV else "random",
             "affinity_timeout": s.affinity_ms // 1000,
             "backends": [(_ip(s.b[i].ip), s.b[i].port) for i in range(s.nb)]}
        if s.lb == LB_MAGLEV:
            d["maglev_size"] = s.msize
        return d

    def list(self):
        return sorted((self._describe(&self.m.slots[i]) for i in range(self.m.mask + 1) if self.m.slots[i].key),
                      key=lambda d: (d["vip"], d["port"], d["protocol"]))

    def __len__(self):
        return self.m.count

    def maglev_choice(self, vip, int port, proto, uint64_t flow):
        """Which backend a flow hash maps to (for tests of Maglev's stability)."""
        cdef svc_t *s = svc_find(&self.m, self._key(vip, port, proto))
        if s == NULL or s.maglev == NULL:
            raise KeyError("no Maglev service there")
        j = s.maglev[mix64(flow) % s.msize]
        return (str(ipaddress.IPv4Address(s.b[j].ip)), s.b[j].port)

    # ---- ClientIP affinity: snapshots and dumps ------------------------------

    def export_affinity(self, uint64_t now):
        """The live affinity entries (expiry after now, ms) as
        AFFINITY_RECORD_SIZE-byte records, for a snapshot. One C pass over
        the table, no Python object per entry; expired ones are left out
        (the table never empties them, they are only overwritten)."""
        # Bucket by bucket under each bucket's lock, as workers write them:
        # no worker is stopped, none waits longer than one bucket's copy.
        cdef uint64_t i, b, nb = (self.m.aff_mask + 1) // AFF_WAYS
        cdef bytearray out = bytearray((self.m.aff_mask + 1) * sizeof(aff_rec_t))
        cdef aff_rec_t *r = <aff_rec_t *>(<char *>out)
        cdef aff_t *a
        cdef uint64_t w = 0
        with nogil:
            for b in range(nb):
                pn_spin_lock(&self.m.aff_lock[b])
                for i in range(b * AFF_WAYS, (b + 1) * AFF_WAYS):
                    a = &self.m.aff[i]
                    if a.key == 0 or a.expires <= now:
                        continue
                    r[w].svc = a.svc; r[w].expires = a.expires
                    r[w].client = <uint32_t>(a.key >> 32); r[w].ip = a.ip; r[w].port = a.port; r[w].pad = 0
                    w += 1
                pn_spin_unlock(&self.m.aff_lock[b])
        del out[w * sizeof(aff_rec_t):]
        return out

    def restore_affinity(self, const unsigned char[:] records, long long offset, uint64_t now):
        """Insert affinity entries from export_affinity() records, each
        expiry moved by offset ms (to this map's clock, less the time spent
        down) and never beyond the service's current timeout. Skipped:
        expired; a service port that is not here or has no affinity now; a
        backend the service no longer has (a restored entry must never send
        a client where the service does not go); a client already pinned
        here; no room in its probe window. Placed as svc_pick would place
        it, so the fast path finds it. Returns (restored, skipped)."""
        if records.shape[0] % sizeof(aff_rec_t):
            raise ValueError(f"affinity records: {records.shape[0]} bytes is not a multiple of {sizeof(aff_rec_t)}")
        cdef uint64_t n = records.shape[0] // sizeof(aff_rec_t), i, k, restored = 0
        cdef const aff_rec_t *r
        cdef svc_t *s
        cdef aff_t *a
        cdef aff_t *e
        cdef long long expires
        cdef uint32_t b
        cdef uint32_t *lk
        cdef bint present
        for i in range(n):
            r = <const aff_rec_t *>(&records[0] + i * sizeof(aff_rec_t))
            expires = <long long>r.expires + offset
            if expires <= <long long>now or (r.svc & 0xff) != 1:
                continue
            s = svc_find(&self.m, r.svc)
            if s == NULL or s.affinity_ms == 0:
                continue
            present = False
            for b in range(s.nb):
                if s.b[b].ip == r.ip and s.b[b].port == r.port:
                    present = True
                    break
            if not present:
                continue
            if <unsigned long long>expires > now + s.affinity_ms:
                expires = <long long>(now + s.affinity_ms)   # the timeout was shortened since
            k = aff_key(r.client, s.key)
            lk = &self.m.aff_lock[aff_bucket(&self.m, k)]
            pn_spin_lock(lk)
            a = aff_slot(&self.m, k, s.key, now, &e)      # svc_pick's window and placement rule
            if a == NULL or (e != NULL and e.expires > now):
                pn_spin_unlock(lk)
                continue                         # no room, or the client is pinned here already
            a.key = k
            a.svc = s.key
            a.ip = r.ip
            a.port = r.port
            a.expires = <uint64_t>expires
            pn_spin_unlock(lk)
            restored += 1
        return restored, n - restored

    def flush_affinity(self, host):
        """Forget the ClientIP affinity entries whose client or backend is
        host (a pod that goes: a new pod given its address later must not
        inherit its pins). Bucket by bucket under each bucket's lock, as
        workers write them. Returns how many were removed."""
        cdef uint32_t h = int(ipaddress.IPv4Address(host))
        cdef uint64_t i, b, nb = (self.m.aff_mask + 1) // AFF_WAYS, n = 0
        cdef aff_t *a
        with nogil:
            for b in range(nb):
                pn_spin_lock(&self.m.aff_lock[b])
                for i in range(b * AFF_WAYS, (b + 1) * AFF_WAYS):
                    a = &self.m.aff[i]
                    # expired, not emptied: a zero key would end the probe
                    # window early for entries placed beyond it (aff_slot)
                    if a.key != 0 and a.expires != 0 and (<uint32_t>(a.key >> 32) == h or a.ip == h):
                        a.expires = 0
                        n += 1
                pn_spin_unlock(&self.m.aff_lock[b])
        return n

    def affinity(self, uint64_t now):
        """The live affinity entries: [{client, service, backend, expires_in (s)}]."""
        out = []
        cdef aff_t *a
        cdef aff_t c
        cdef uint64_t i
        for i in range(self.m.aff_mask + 1):
            pn_spin_lock(&self.m.aff_lock[i // AFF_WAYS])
            c = self.m.aff[i]
            pn_spin_unlock(&self.m.aff_lock[i // AFF_WAYS])
            a = &c
            if a.key != 0 and a.expires > now:
                out.append({"client": _ip(<uint32_t>(a.key >> 32)),
                            "service": f"{_ip(<uint32_t>(a.svc >> 32))}:{(a.svc >> 16) & 0xffff}/"
                                       f"{PROTO_NAME.get((a.svc >> 8) & 0xff)}",
                            "backend": f"{_ip(a.ip)}:{a.port}", "expires_in": (a.expires - now) / 1000})
        return sorted(out, key=lambda d: (d["service"], d["client"]))

    def counters(self):
        return {"service_ports": self.m.count, "capacity": self.m.capacity, "no_service": ld(&self.m.no_service),
                "no_endpoints": ld(&self.m.no_endpoints), "affinity_hits": ld(&self.m.affinity_hits)}
