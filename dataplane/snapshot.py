"""Agent snapshots: what a node's fast path learned or was told at run time,
kept in the run directory so an agent restarted after a crash (SIGKILL
included) resumes where it was instead of starting empty.

Saved: the FDB, conntrack (tuples, NAT fields, state, flags, expiry),
services (Maglev table size included), overlay routes (those added at run
time by `podnet node add` included), peer VTEP MACs, ARP-learned neighbours
and ClientIP affinity entries (client, service port, backend, expiry), so a
client pinned to a backend keeps it across a restart. Not saved: counters
and the random generator's state.

The file: a magic line, one line of JSON (meta, save time, services, routes,
VTEPs, neighbours, record sizes and counts), then the FDB, conntrack and
affinity records as the Cython tables export them (fixed-size, native byte
order: a snapshot never leaves its host). Binary because 100k connections
would otherwise cost ~80 ms of base64 and JSON a second in the agent's only
thread. Version 1 files (before affinity records) have no affinity section
and restore as they did; a version 2 file must have all three sections.

The agent calls tick() from its loop; every EVERY seconds it writes the file
(to a temporary file renamed over the old one, so a crash mid-write leaves
the previous snapshot whole), and only if something changed: times are stored
absolute on the fast path's clock, so an idle table exports the same bytes.
save() on clean shutdown. A connection opened less than
EVERY seconds before a SIGKILL can be missing from the snapshot: its next
packet after the restart is then a mid-stream packet of an unknown flow.

Timers are restored as remaining time less the time the agent was down
(wall clock): a connection or affinity entry that would have expired
meanwhile is not restored. Affinity entries are restored after the services,
and only those whose service port is there with affinity and still has that
backend.
"""
import json
import os
import time
from pathlib import Path

from fastpath.conntrack import RECORD_SIZE as CT_RECORD
from fastpath.fdb import RECORD_SIZE as FDB_RECORD
from fastpath.services import AFFINITY_RECORD_SIZE as AFF_RECORD

VERSION = 2
READABLE = (1, 2)          # 1: no affinity section (and no Maglev sizes: the default is used)
# the binary sections, in file order, by version
SECTIONS = {1: ("fdb", "conntrack"), 2: ("fdb", "conntrack", "affinity")}
EVERY = 1.0                # seconds between snapshots
SERVICES_EVERY = 30.0       # seconds between re-encodings of a changing service map
MAGIC = b"podnet-snapshot\n"


class SnapshotError(ValueError):
    pass


def boot_id():
    """Clock times in a snapshot mean nothing after a reboot."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def read(path):
    """A snapshot file -> (header dict, {"fdb": records, "conntrack": records,
    "affinity": records}); a version 1 file's affinity records are empty."""
    data = Path(path).read_bytes()
    if not data.startswith(MAGIC):
        raise SnapshotError("not a podnet snapshot")
    end = data.find(b"\n", len(MAGIC))
    if end < 0:
        raise SnapshotError("truncated header")
    try:
        head = json.loads(data[len(MAGIC):end])
        if not isinstance(head, dict):
            raise SnapshotError("bad header")
        pos, tables = end + 1, {"affinity": b""}
        version = head.get("version")
        if isinstance(version, bool) or version not in SECTIONS:      # JSON true == 1
            raise SnapshotError(f"format version {version!r}, this build reads {READABLE}")
        for name in SECTIONS[version]:
            size = int(head[name]["record"]) * int(head[name]["count"])
            tables[name] = data[pos:pos + size]
            if len(tables[name]) != size:
                raise SnapshotError(f"{name} records truncated")
            pos += size
    except SnapshotError:
        raise
    except (ValueError, KeyError, TypeError) as e:
        raise SnapshotError(f"bad header: {e}") from None
    return head, tables


def _routes(dp):
    """The overlay's routes in set_routes() form (static VTEP MACs kept)."""
    if not dp.overlay.enabled:
        return []
    return [{"name": r["name"], "cidr": r["cidr"], "vtep": r["vtep"], "inner_mac": r["inner_mac"],
             "vni": r["vni"], **({"vtep_mac": r["vtep_mac"]} if r["vtep_state"] == "static" else {})}
            for r in dp.overlay.routes()]


def _services(dp):
    return [{"vip": s["vip"], "port": s["port"], "protocol": s["protocol"], "lb": s["lb"],
             "affinity_timeout": s["affinity_timeout"], "backends": s["backends"],
             **({"maglev_size": s["maglev_size"]} if "maglev_size" in s else {})}
            for s in dp.services.list()]


class Snapshotter:
    """Saves dp's state to path and restores it. meta (cluster, node) is
    written into the file and checked on restore, with the boot id.
    clock: the Dataplane's clock (seconds), for its absolute times; wall:
    seconds that keep counting while no agent runs, for the time spent down."""

    def __init__(self, dp, path, meta, clock=time.monotonic, every=EVERY, log=None, wall=time.time,
                 services_every=SERVICES_EVERY):
        self.dp = dp
        self.path = Path(path)
        self.meta = dict(meta, version=VERSION, boot_id=boot_id())
        self.clock = clock
        self.wall = wall
        self.every = every
        self.log = log or (lambda msg: None)
        self.armed = False         # restore() done: saving cannot clobber an unread snapshot
        self.next = 0.0
        self.last = None
        self._svc = (None, "[]")   # (services generation, encoded): 10k services are not re-encoded each second
        self._routes_gen = None
        self._svc_at = float("-inf")  # when the service map was last encoded
        self.services_every = services_every
        self.writes = 0

    # ---- saving ------------------------------------------------------------

    def body(self, force_services=False):
        """Everything but the save time: (JSON text without braces, FDB
        records, conntrack records, affinity records)."""
        dp = self.dp
        gen = dp.services.generation
        now = time.monotonic()
        if self._svc[0] != gen and (now >= self._svc_at + self.services_every or force_services):
            # Encoding 10k services x 10 endpoints takes ~0.25 s of the agent's
            # only thread: at most every SERVICES_EVERY seconds while services
            # change. A restart gets any newer ones from `podnet up` (resync).
            self._svc = (gen, json.dumps(_services(dp), separators=(",", ":")))
            self._svc_at = now
        fdb, ct = dp.fdb.export(), dp.conntrack.export()
        aff = dp.services.export_affinity(int(self.clock() * 1000))   # live entries only
        parts = {**self.meta,
                 "fdb": {"record": FDB_RECORD, "count": len(fdb) // FDB_RECORD},
                 "conntrack": {"record": CT_RECORD, "count": len(ct) // CT_RECORD},
                 "affinity": {"record": AFF_RECORD, "count": len(aff) // AFF_RECORD},
                 "routes": _routes(dp),
                 "vteps": dp.overlay.learned_vteps() if dp.overlay.enabled else [],
                 "neighbors": [[n["ip"], n["mac"]] for n in dp.gateway.neighbors() if n["state"] == "learned"]}
        return json.dumps(parts, separators=(",", ":"))[1:-1] + ',"services":' + self._svc[1], fdb, ct, aff

    def save(self, force=False):
        """Write the snapshot if it changed (or force). Returns True if written."""
        if not self.armed:
            return False
        body = self.body(force_services=force)
        if body == self.last and not force:
            return False
        head = json.dumps({"saved_wall": self.wall(), "saved_clock_ms": int(self.clock() * 1000)})
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(MAGIC + (head[:-1] + "," + body[0] + "}\n").encode())
            f.write(body[1])
            f.write(body[2])
            f.write(body[3])
        os.replace(tmp, self.path)
        self.last = body
        self.writes += 1
        return True

    def tick(self):
        """Called from the agent's loop: save every `every` seconds, and at
        once when routes changed (control requests). Service changes ride on
        the periodic save (see body())."""
        now = time.monotonic()
        if now < self.next and self._routes_gen == self.dp.overlay.generation:
            return False
        self.next = now + self.every
        self._routes_gen = self.dp.overlay.generation
        try:
            return self.save()
        except OSError as e:                      # a full disk must not stop forwarding
            self.log(f"snapshot not written: {e}")
            return False

    # ---- restoring -----------------------------------------------------------

    def read(self):
        """The snapshot on disk if it is this node's, from this boot, as one
        dict (tables' records under "records"); else None."""
        try:
            snap, tables = read(self.path)
        except FileNotFoundError:
            return None
        except (OSError, SnapshotError) as e:
            self.log(f"snapshot {self.path} unreadable, ignored: {e}")
            return None
        snap["records"] = tables
        if snap.get("version") not in READABLE:     # read() refuses these already; kept for dicts made by hand
            self.log(f"snapshot {self.path} ignored: version is {snap.get('version')!r}, this build reads {READABLE}")
            return None
        for k in ("cluster", "node", "boot_id"):
            if snap.get(k) != self.meta.get(k):
                self.log(f"snapshot {self.path} ignored: {k} is {snap.get(k)!r}, expected {self.meta.get(k)!r}")
                return None
        return snap

    def restore(self, local_subnet=None):
        """Load the snapshot into the fast path (before it serves traffic),
        then allow saving. Each part is restored on its own: a bad part is
        logged and skipped. Returns {part: entries restored} ({} if none)."""
        snap = self.read()
        try:
            return restore(self.dp, snap, self.clock, local_subnet, self.log, self.wall) if snap else {}
        finally:
            self.armed = True
            self.next = time.monotonic() + self.every
            self._routes_gen = self.dp.overlay.generation


def restore(dp, snap, clock=time.monotonic, local_subnet=None, log=print, wall=time.time):
    """Put a snapshot (Snapshotter.read()'s dict) into dp, whose ports, gateway
    and overlay are configured already. Timers: remaining time at the save,
    less the wall-clock time since. FDB entries for ports dp lacks are dropped;
    affinity entries whose service port is gone, has no affinity or lacks
    their backend too (they come after the services for that)."""
    out = {}
    now = int(clock() * 1000)
    # expiry (absolute) - saved_clock_ms = remaining at the save; less the time since
    age_ms = max(0, int((wall() - float(snap.get("saved_wall", 0))) * 1000))
    offset = now - int(snap.get("saved_clock_ms", now)) - age_ms
    out["snapshot_age_s"] = round(age_ms / 1000, 3)

    def part(name, fn):
        try:
            out[name] = fn()
        except (ValueError, TypeError, KeyError, OverflowError) as e:
            log(f"snapshot: {name} not restored: {e}")

    def routes():
        if not dp.overlay.enabled or not snap.get("routes"):
            return 0
        dp.overlay.set_routes(snap["routes"], local=local_subnet)
        return len(snap["routes"])

    def services():
        n = 0
        for s in snap.get("services", []):
            try:
                dp.services.set(s["vip"], s["port"], s["protocol"], [tuple(b) for b in s["backends"]],
                                s["lb"], s["affinity_timeout"],
                                # version 1 did not save it: the default, as it was built then
                                s.get("maglev_size", 16381))
                n += 1
            except (ValueError, TypeError, KeyError, OverflowError) as e:
                log(f"snapshot: service {s!r} not restored: {e}")
        return n

    def table(name, record, restore_fn, *extra):
        sec = snap.get(name) or {}
        if sec.get("record") != record:
            raise ValueError(f"record size {sec.get('record')}, this build uses {record}")
        restored, skipped = restore_fn(snap["records"][name], offset, now, *extra)
        return restored

    part("routes", routes)
    part("vteps", lambda: dp.overlay.restore_vteps(snap.get("vteps", [])) if dp.overlay.enabled else 0)
    part("neighbors", lambda: sum(bool(_learn(dp, ip, mac)) for ip, mac in snap.get("neighbors", [])))
    part("services", services)
    part("fdb", lambda: table("fdb", FDB_RECORD, dp.fdb.restore, [p for p, _ in dp.ports.list()]))
    part("conntrack", lambda: table("conntrack", CT_RECORD, dp.conntrack.restore))
    if "affinity" in snap:                       # version 1: none saved, nothing to restore
        part("affinity", lambda: table("affinity", AFF_RECORD, dp.services.restore_affinity))
    return out


def _learn(dp, ip, mac):
    try:
        return dp.gateway.learn_neighbor(ip, mac)
    except (ValueError, RuntimeError):
        return False
