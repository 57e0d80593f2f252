"""Control side of the FDB: allocation, static entries, flushes, aging sweep, dump.
The per-frame lookup/learn are inline in fdb.pxd."""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from fastpath.defs cimport MAX_DOMAINS, MAX_PORTS
from fastpath.sync cimport pn_write_lock, pn_write_unlock


cdef void fdb_remove_slot(fdb_t *t, uint64_t i) noexcept nogil:
    # Backward-shift deletion: pull later members of the probe chain into the
    # hole so lookups never need tombstones.
    cdef uint64_t j = i, home
    t.slots[i].key = 0
    while True:
        j = (j + 1) & t.mask
        if t.slots[j].key == 0:
            break
        home = fdb_home(t, t.slots[j].key)
        # Move j into the hole at i if its home is not cyclically within (i, j].
        if (j > i and (home <= i or home > j)) or (j < i and (home <= i and home > j)):
            t.slots[i] = t.slots[j]
            t.slots[j].key = 0
            i = j
    t.count -= 1


def mac_bytes(mac):
    """'aa:bb:cc:dd:ee:ff' or 6 bytes -> 6 bytes, with a clear error otherwise."""
    if isinstance(mac, (bytes, bytearray)):
        if len(mac) != 6:
            raise ValueError(f"MAC must be 6 bytes, got {len(mac)}")
        return bytes(mac)
    parts = str(mac).split(":")
    if len(parts) != 6:
        raise ValueError(f"invalid MAC address {mac!r}: expected six hex octets aa:bb:cc:dd:ee:ff")
    try:
        b = bytes(int(x, 16) for x in parts)
    except ValueError:
        raise ValueError(f"invalid MAC address {mac!r}: expected six hex octets aa:bb:cc:dd:ee:ff") from None
    if any(len(x) not in (1, 2) for x in parts):
        raise ValueError(f"invalid MAC address {mac!r}: expected six hex octets aa:bb:cc:dd:ee:ff")
    return b


cdef uint64_t key_of(mac, int domain) except? 0:
    if not 0 <= domain < MAX_DOMAINS:
        raise ValueError(f"bridge domain must be 0..{MAX_DOMAINS - 1}, got {domain}")
    cdef bytes m = mac_bytes(mac) + b"\0\0"     # fdb_key reads 8 bytes
    return fdb_key(<const uint8_t *>m, domain)


# One entry in a snapshot (export/restore): native byte order, `seen` absolute
# on the table's clock.
cdef packed struct fdb_rec_t:
    uint64_t key
    uint64_t seen
    uint16_t port
    uint8_t flags
    uint8_t pad

RECORD_SIZE = sizeof(fdb_rec_t)


def mac_str(uint64_t key):
    return ":".join(f"{(key >> (56 - 8 * i)) & 0xff:02x}" for i in range(6))


cdef class Fdb:
    """Owns one fdb_t. capacity is the number of entries; the table has twice
    as many slots (rounded up to a power of two) to keep probes short."""

    def __cinit__(self, uint64_t capacity=65536, double aging=300.0):
        cdef uint64_t slots = 16
        cdef uint32_t bits = 4
        if capacity < 1 or capacity > (1 << 26):
            raise ValueError(f"FDB capacity must be 1..{1 << 26}, got {capacity}")
        if aging < 0:
            raise ValueError(f"FDB aging time must be >= 0 seconds, got {aging}")
        while slots < 2 * capacity:
            slots <<= 1
            bits += 1
        self.t.slots = <fdb_entry_t *>calloc(slots, sizeof(fdb_entry_t))
        if self.t.slots == NULL:
            raise MemoryError("FDB table")
        self.t.mask = slots - 1
        self.t.shift = 64 - bits
        self.t.capacity = capacity
        self.t.aging_ms = <uint64_t>(aging * 1000.0)

    def __dealloc__(self):
        free(self.t.slots)

    @property
    def capacity(self):
        return self.t.capacity

    @property
    def aging(self):
        return self.t.aging_ms / 1000.0

    @aging.setter
    def aging(self, double seconds):
        if seconds < 0:
            raise ValueError(f"FDB aging time must be >= 0 seconds, got {seconds}")
        pn_write_lock(self.sy)
        self.t.aging_ms = <uint64_t>(seconds * 1000.0)
        pn_write_unlock(self.sy)

    def __len__(self):
        return ld(&self.t.count)

    def add_static(self, mac, int port, int domain=0, uint64_t now=0):
        """Install a static entry: never ages, never moves. Replaces a dynamic one."""
        if not 0 <= port < MAX_PORTS:
            raise ValueError(f"port must be 0..{MAX_PORTS - 1}, got {port}")
        if not 0 <= domain < MAX_DOMAINS:
            raise ValueError(f"bridge domain must be 0..{MAX_DOMAINS - 1}, got {domain}")
        cdef uint64_t key = key_of(mac, domain)
        cdef fdb_entry_t *e
        pn_write_lock(self.sy)          # it may turn a dynamic entry static under a learner
        e = fdb_find(&self.t, key)
        if e == NULL:
            if self.t.count >= self.t.capacity:
                pn_write_unlock(self.sy)
                raise OverflowError(f"FDB full ({self.t.capacity} entries): static entry {mac} not added")
            fdb_learn(&self.t, key, port, now)
            self.t.learned -= 1        # not learned from traffic
            e = fdb_find(&self.t, key)
        e.port = port
        e.flags = FDB_STATIC
        e.seen = now
        pn_write_unlock(self.sy)

    def delete(self, mac, int domain=0):
        """Remove one entry; returns True if it existed."""
        cdef uint64_t key = key_of(mac, domain)
        cdef fdb_entry_t *e
        pn_write_lock(self.sy)          # deletions shift entries: no reader may probe meanwhile
        e = fdb_find(&self.t, key)
        if e != NULL:
            fdb_remove_slot(&self.t, e - self.t.slots)
        pn_write_unlock(self.sy)
        return e != NULL

    def lookup(self, mac, int domain=0, uint64_t now=0):
        cdef int p = fdb_lookup(&self.t, key_of(mac, domain), now)
        return None if p < 0 else p

    cdef uint64_t _remove_where(self, int port, int domain, bint dynamic_only,
                                bint expired_only, uint64_t now) noexcept nogil:
        cdef uint64_t i = 0, n = 0
        cdef fdb_entry_t *e
        # Under the table lock, in chunks: deletions shift entries, which no
        # worker may probe through, and a worker waits at most one chunk.
        pn_write_lock(self.sy)
        while i <= self.t.mask:
            if (i & 4095) == 4095:
                pn_write_unlock(self.sy)
                pn_write_lock(self.sy)
            e = &self.t.slots[i]
            if (e.key != 0
                    and (port < 0 or e.port == port)
                    and (domain < 0 or (e.key & (MAX_DOMAINS - 1)) == <uint64_t>domain)
                    and not (dynamic_only and (e.flags & FDB_STATIC))
                    and not (expired_only and fdb_live(&self.t, e, now))):
                fdb_remove_slot(&self.t, i)
                n += 1
                continue            # a shifted entry now sits at i: look again
            i += 1
        pn_write_unlock(self.sy)
        return n

    def flush(self, port=None, domain=None, bint include_static=False):
        """Remove dynamic entries (and static ones if asked) of a port, a domain,
        both, or all. Returns the number removed."""
        return self._remove_where(-1 if port is None else port, -1 if domain is None else domain,
                                  not include_static, False, 0)

    def age(self, uint64_t now):
        """Sweep out dynamic entries not seen within the aging time."""
        if self.t.aging_ms == 0:
            return 0
        cdef uint64_t n = self._remove_where(-1, -1, True, True, now)
        aadd(&self.t.aged, n)
        return n

    def dump(self, uint64_t now=0):
        # No lock: only the control thread deletes (under the table lock), so
        # while it reads nothing moves; workers' inserts and refreshes are
        # atomic stores, read atomically here (an entry learned meanwhile
        # may or may not be listed).
        out = []
        cdef uint64_t i, k
        cdef fdb_entry_t *e
        for i in range(self.t.mask + 1):
            e = &self.t.slots[i]
            k = ld_acq(&e.key)
            if k == 0 or (k & FDB_BUSY):
                continue
            static = bool(ld8(&e.flags) & FDB_STATIC)
            out.append({
                "mac": mac_str(k),
                "domain": int(k & (MAX_DOMAINS - 1)),
                "port": ld16(&e.port),
                "static": static,
                "age": 0.0 if static else max(0, <long long>(now - ld(&e.seen))) / 1000.0,
            })
        out.sort(key=lambda d: (d["domain"], d["mac"]))
        return out

    def export(self):
        """Every entry as RECORD_SIZE-byte records, for a snapshot."""
        # Read as dump() reads (no lock); entries learned during the scan
        # beyond the count taken first are left for the next snapshot.
        cdef uint64_t cap = ld(&self.t.count)
        cdef bytearray out = bytearray(cap * sizeof(fdb_rec_t))
        cdef fdb_rec_t *r = <fdb_rec_t *>(<char *>out) if cap else NULL
        cdef uint64_t i, n = 0, k
        for i in range(self.t.mask + 1):
            k = ld_acq(&self.t.slots[i].key)
            if k == 0 or (k & FDB_BUSY) or n == cap:
                continue
            r[n].key = k
            r[n].seen = ld(&self.t.slots[i].seen)
            r[n].port = ld16(&self.t.slots[i].port)
            r[n].flags = ld8(&self.t.slots[i].flags)
            r[n].pad = 0
            n += 1
        return out[:n * sizeof(fdb_rec_t)]

    def restore(self, const unsigned char[:] records, long long offset, uint64_t now, ports=None):
        """Insert entries from export() records, `seen` moved by offset ms.
        Skipped: aged out by now, on a port not in `ports` (when given),
        malformed, or already present. Returns (restored, skipped)."""
        if records.shape[0] % sizeof(fdb_rec_t):
            raise ValueError(f"FDB records: {records.shape[0]} bytes is not a multiple of {sizeof(fdb_rec_t)}")
        cdef bint allowed[MAX_PORTS]
        for p in range(MAX_PORTS):
            allowed[p] = ports is None
        for p in ports or ():
            if 0 <= p < MAX_PORTS:
                allowed[p] = True
        cdef uint64_t n = records.shape[0] // sizeof(fdb_rec_t), i, restored = 0
        cdef const fdb_rec_t *r
        cdef fdb_entry_t *e
        cdef long long seen
        pn_write_lock(self.sy)                  # sets flags of entries workers can already see
        for i in range(n):
            r = <const fdb_rec_t *>(&records[0] + i * sizeof(fdb_rec_t))
            seen = <long long>r.seen + offset
            if seen < 0:
                seen = 0
            if not (r.key & FDB_VALID) or (r.key & 0x7000) or r.port >= MAX_PORTS or not allowed[r.port] \
                    or (r.flags & ~FDB_STATIC) or fdb_find(&self.t, r.key) != NULL:
                continue
            if not (r.flags & FDB_STATIC) and self.t.aging_ms and <long long>now - seen > <long long>self.t.aging_ms:
                continue
            if self.t.count >= self.t.capacity:
                break
            fdb_learn(&self.t, r.key, r.port, <uint64_t>seen)
            self.t.learned -= 1                 # restored, not learned from traffic
            e = fdb_find(&self.t, r.key)
            e.flags = r.flags
            restored += 1
        pn_write_unlock(self.sy)
        return restored, n - restored

    def counters(self):
        return {
            "entries": ld(&self.t.count),
            "capacity": self.t.capacity,
            "learned": ld(&self.t.learned),
            "moved": ld(&self.t.moved),
            "full": ld(&self.t.full),
            "aged": ld(&self.t.aged),
            "static_conflicts": ld(&self.t.static_conflicts),
        }
