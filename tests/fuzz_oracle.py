"""The fuzzing oracle: every input runs through two identical dataplanes.

B runs one frame per burst in a slot whose bytes past the frame were just
filled with 0xa5, so each verdict and counter change belongs to one frame:
  - a dropped frame raised exactly its reason's counter; a frame that leaves
    (port, flood, local) raised none, unless one of its outputs is an answer
    the fast path wrote in its place, which then counts its drop: ICMP time
    exceeded (ttl_exceeded), fragmentation needed (too_big), a service's RST
    or port unreachable (service_rejected), the ARP request for an
    unresolved VTEP (vtep_unresolved; with ttl_exceeded too when that VTEP
    was to carry the time exceeded of a tunnelled frame);
  - it sits in the TX queue of its port, or of every other port of its
    domain for a flood, and nowhere else;
  - what the fast path writes itself (ICMP errors, RSTs, the VXLAN or
    IP-in-IP outer header) has correct checksums and lengths and, for a
    reply, a zero vnet header; an IP-in-IP outer header is RFC 2003's as
    Linux writes it (IHL 5, DF, TTL and ECN of the inner packet, DSCP 0, to
    a route's VTEP), never with GSO; a direct frame leaves from the node's
    MAC within the fabric MTU unless GSO; what it rewrites (routing, NAT,
    encap, decap) keeps the IP and
    L4 checksums that were right (complete or partial, as the vnet header
    says) right, and a vnet header that fitted the frame fitting it.
Expectations of its own, independent of the fast path's code:
  - a frame malformed on purpose (Frame.expect) gets its drop reason (or,
    for TTL expiry and a service without endpoints, its answer);
  - a frame to a port that does not exist is a bad_port drop, one longer
    than a slot a too_long drop;
  - on a guarded port, a frame that passes parsing is dropped as spoof_mac /
    spoof_ip exactly when its Ethernet source, IPv4 source, ARP sender MAC
    or ARP sender IP (0.0.0.0 allowed) is not the pod's;
  - a routed frame leaves with its TTL decremented exactly once (encap and
    decap included, a direct-mode frame from the fabric counted as routed),
    a bridged one with it unchanged, an echo reply with 64;
  - ARP requests for the gateway (pod side) or the node (uplink) are
    answered in place (op 2, sender the gateway/node, target the asker,
    Ethernet to the asker, the rest unchanged); ARP replies to them consumed;
  - a new service flow goes to one of the service's backends, to the one
    services.maglev_table (Python) gives for a Maglev service, SNATed to the
    gateway when the backend is the client.
A runs the same frames in multi-frame bursts through load/run_burst,
process(), the traced copy of the loop (Dataplane.trace, on the live tables
and sometimes in its forked copy, which must leave them untouched), or the
C I/O loop (IOLoop over AF_UNIX datagram socketpairs, one per port, with a
capture running on pod 0's port): its outputs and all its counters must
equal B's (so no result depends on bytes outside the frame, on burst
grouping, or on the entry point). Live changes (services, routes, ports,
guards) go to both. Before each snapshot, clean new flows from every pod
to the ClientIP and Maglev ports go to both (so there is state to carry).
A snapshot of B restored into a freshly built node C must give C B's tables
(affinity entries whose backend is still the service's, Maglev sizes) and,
on the next burst, B's verdicts and outputs; a corrupted or cut snapshot
must be refused or skipped with a message."""
import socket
import struct
import time
from collections import Counter
from pathlib import Path

from dataplane import snapshot
from fastpath.counters import DROP_NAMES
from fastpath.ioloop import IOLoop
from fastpath.services import maglev_table
from fuzz_frames import Frame
from fuzz_node import (GW_IP, GW_MAC, MAGLEV_SIZE, NO_NEIGH_IP, NODE_IP, NODE_MAC, PODS, SUBNET, UPLINK,
                       VIPS, VTEPS, build, change)
from fuzz_wire import (arp_at, ip4_arp_ok, ip4n, ip4s, ip_header_ok, ip_layers, l3_offset, l4_status, mix64,
                       vnet_fields)

ANSWERED = {"too_big", "ttl_exceeded", "vtep_unresolved", "service_rejected"}
# Decided before the guard: a frame dropped for one of these never met it.
BEFORE_GUARD = {"bad_port", "runt", "too_long", "vlan_truncated", "vlan_depth", "src_mac_multicast",
                "arp_truncated", "ip4_truncated", "ip4_version", "ip4_ihl", "ip4_length", "ip6_truncated",
                "ip6_length", "l4_truncated", "tcp_data_offset", "udp_length"}
SPOOF = {"spoof_mac", "spoof_ip"}
FILL = 0xa5
META = {"cluster": "fuzz", "node": "n"}
GW_MAC_B, NODE_MAC_B = bytes.fromhex(GW_MAC.replace(":", "")), bytes.fromhex(NODE_MAC.replace(":", ""))
GW_IP_B, NODE_IP_B = bytes(map(int, GW_IP.split("."))), bytes(map(int, NODE_IP.split(".")))
CAPTURED_PORT = PODS[0][2]
NODE_IP_N = int.from_bytes(NODE_IP_B, "big")
VTEPS_N = {int.from_bytes(bytes(map(int, v.split("."))), "big") for v in VTEPS}


def layers(frame, cfg):
    """The IPv4 layers of frame as cfg's backend carries them (fuzz_wire.ip_layers)."""
    return ip_layers(frame, cfg.vxlan_port, cfg.backend, NODE_IP_N)


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


class RealClock:
    """The I/O loop runs bursts on CLOCK_MONOTONIC: so must every dataplane of its twin."""
    t = None

    def __call__(self):
        return time.monotonic()


def drop_counts(c):
    return {k: v for k, v in c["drops"].items() if v}


def delta(before, after):
    return {k: after.get(k, 0) - before.get(k, 0) for k in set(before) | set(after)
            if after.get(k, 0) != before.get(k, 0)}


class IoRig:
    """An IOLoop on a dataplane, each port's fd one end of an AF_UNIX
    SOCK_DGRAM socketpair (frame boundaries kept, a short read truncates, as
    on a TAP); the harness holds the other ends."""

    def __init__(self, dp, ports, snaplen):
        self.dp, self.io, self.socks = dp, IOLoop(dp), {}
        self.snaplen = snaplen
        for p in ports:
            self.attach(p)
        if CAPTURED_PORT in self.socks:
            self.io.capture_start([CAPTURED_PORT], snaplen=snaplen)

    def attach(self, port):
        ours, loop = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        for s in (ours, loop):                 # room for a burst of 64 KB super-frames each way
            for opt in (getattr(socket, "SO_SNDBUFFORCE", 32), getattr(socket, "SO_RCVBUFFORCE", 33)):
                try:
                    s.setsockopt(socket.SOL_SOCKET, opt, 8 << 20)
                except OSError:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        ours.setblocking(False)
        self.io.attach(port, loop.fileno())
        self.socks[port] = (ours, loop)

    def detach(self, port):
        if port in self.socks:
            if self.io.capture_info()["running"] and port == CAPTURED_PORT:
                self.io.capture_stop()
            self.io.detach(port)
            for s in self.socks.pop(port):
                s.close()

    def close(self):
        for p in list(self.socks):
            self.detach(p)

    def send(self, port, wire):
        while True:
            try:
                self.socks[port][0].send(wire)
                return
            except BlockingIOError:
                self.io.poll(0)                # let the loop drain what is queued, then retry

    def drain(self, got, captured):
        """Run the loop until every socket is read (poll(0) returns once no fd
        is ready), then collect what it wrote: got[port] += frames, and
        captured += those written to CAPTURED_PORT."""
        self.io.poll(0)
        for p, (ours, _) in self.socks.items():
            while True:
                try:
                    w = ours.recv(1 << 17)
                except BlockingIOError:
                    break
                got.setdefault(p, []).append(w)
                if p == CAPTURED_PORT:
                    captured.append(w)


class Twin:
    def __init__(self, cfg, tmpdir):
        self.cfg = cfg
        self.clock = RealClock() if cfg.io else Clock()
        self.wall = time.time if cfg.io else (lambda: 5000.0)
        self.a = build(cfg, self.clock)
        self.b = build(cfg, self.clock)
        self.fill = bytes([FILL]) * cfg.slot_size
        self.frames = 0
        self.tmp = Path(tmpdir)
        self.changes = []           # port and guard changes, replayed on a node built to restore a snapshot
        self.rig = None             # A's I/O loop, made at the first I/O burst
        self.shadow = None          # (C restored from B's snapshot, compare?) for the next burst
        self.reached = Counter()    # what this scenario exercised, for the run's summary
        self.reached["backend:" + cfg.backend] += 1
        self.maglev = {}
        if cfg.prelearn:
            for ip, mac, port in PODS:
                arp = (bytes.fromhex("ff" * 6 + mac.replace(":", "")) + b"\x08\x06\x00\x01\x08\x00\x06\x04\x00\x01"
                       + bytes.fromhex(mac.replace(":", "")) + bytes(map(int, ip.split(".")))
                       + bytes(6) + bytes([10, 244, 0, 250]) + bytes(18))
                assert self.a.process(arp, port) == self.b.process(arp, port)

    def close(self):
        if self.rig is not None:
            self.rig.close()

    # ---- control steps ------------------------------------------------------

    def control(self, op):
        if op[0] == "change":
            ra, rb = change(self.a, op[1], self.cfg), change(self.b, op[1], self.cfg)
            assert ra == rb, f"live change {op[1]}: {ra} on A, {rb} on B"
            self.reached["change:" + op[1][0] + ("" if ra is None else "-refused")] += 1
            if op[1][0] in ("port_rm", "port_add", "guard"):
                self.changes.append(op[1])
            if self.rig is not None and ra is None:
                if op[1][0] == "port_rm":
                    self.rig.detach(op[1][1])
                elif op[1][0] == "port_add" and op[1][1] not in self.rig.socks:   # adding a port that is there changes nothing
                    self.rig.attach(op[1][1])
            self.same_counters()
            return
        if op[0] == "restore":
            self.restore(op[1])
            return
        for dp in (self.a, self.b):
            if op[0] == "advance":
                pass
            elif op[0] == "gc":
                dp.conntrack_gc()
            elif op[0] == "age":
                dp.age()
            elif op[0] == "dead":         # a backend removed: its TCP flows get a RST next
                dp.conntrack.flush(backend=op[1], mark_tcp_dead=True)
            elif op[0] == "flush":
                dp.fdb.flush()
        if op[0] == "advance" and not self.cfg.io:
            self.clock.t += op[1]
        self.same_counters()

    def same_counters(self):
        ca, cb = self.a.counters(), self.b.counters()
        assert ca == cb, f"counters differ between burst shapes/entry points:\nA={ca}\nB={cb}"

    # ---- snapshots ------------------------------------------------------------

    def fresh(self):
        """A node as a restarted agent builds it before restoring: ports,
        gateway, overlay and guards as configured, no services or routes."""
        c = build(self.cfg, self.clock, services=False, route_table=False)
        for op in self.changes:
            change(c, op, self.cfg)
        return c

    def restore(self, corrupt):
        """Save B's snapshot (as the agent does), restore it into a fresh node
        C; the next burst runs through C too. corrupt: None, ("cut", frac) or
        ("flip", frac, bit): then C must come up with a message and no crash."""
        self.new_flows()
        path = self.tmp / "snapshot"
        path.unlink(missing_ok=True)         # an earlier one would be restored into B by the arming below
        saver = snapshot.Snapshotter(self.b, path, META, clock=self.clock, wall=self.wall)
        saver.restore()                      # nothing on disk: only arms saving
        assert saver.save(force=True)
        c, logs = self.fresh(), []
        if corrupt:
            data = path.read_bytes()
            if corrupt[0] == "cut":
                data = data[:int(len(data) * corrupt[1])]
            else:
                pos = min(len(data) - 1, int(len(data) * corrupt[1]))
                data = data[:pos] + bytes([data[pos] ^ (1 << corrupt[2])]) + data[pos + 1:]
            path.write_bytes(data)
            try:
                snapshot.read(path)
                refused = False
            except snapshot.SnapshotError:
                refused = True
            assert refused or corrupt[0] == "flip", f"a snapshot cut to {len(data)} bytes was read as whole"
            got = snapshot.Snapshotter(c, path, META, clock=self.clock, wall=self.wall,
                                       log=logs.append).restore(local_subnet=SUBNET)
            assert isinstance(got, dict)
            if refused:
                assert got == {} and len(logs) == 1 and "unreadable, ignored" in logs[0], (got, logs)
            self.reached["restore-corrupt-" + ("refused" if refused else "read")] += 1
            self.shadow = (c, False)
            return
        got = snapshot.Snapshotter(c, path, META, clock=self.clock, wall=self.wall,
                                   log=logs.append).restore(local_subnet=SUBNET)
        assert not logs, f"a whole snapshot restored with complaints: {logs}"
        self.same_tables(self.b, c)
        # Not in a snapshot: the random generator's state (Maglev table sizes
        # and affinity entries are, and same_tables checked them).
        seed = self.frames + 11
        for dp in (self.a, self.b, c):
            dp.services.seed(seed)
        self.reached["restore"] += 1
        self.shadow = (c, True)

    def new_flows(self):
        """Clean first packets from each pod to the ClientIP ports and the
        Maglev one, through A and B like any burst: generated service frames
        are rarely clean first packets, and the snapshot should hold
        connections, affinity entries and Maglev choices to carry over."""
        sport = 40000 + self.frames % 8
        for ip, mac, port in PODS:
            for vip, vport, l4 in ((VIPS[2], 53, b"\x11"), (VIPS[2], 443, b"\x06"), (VIPS[0], 53, b"\x11")):
                self.burst([Frame(port, service_packet(mac, ip, vip, sport, vport, l4[0]), None, "new-flow")],
                           "process", 0, [0])
                self.reached["new-flow-sent"] += 1

    def same_tables(self, b, c):
        """C holds what B had that is still live."""
        io = self.cfg.io

        def fdb(dp, only_live):
            return [dict(e, age=0) if io else e for e in dp.fdb_dump()
                    if not only_live or e["static"] or e["age"] <= 300.0]

        def ct(dp, only_live):
            return sorted((dict(e, expires_in=0) if io else e for e in dp.conntrack_dump()
                           if not only_live or e["expires_in"] > 0), key=lambda e: (e["proto"], e["client"], e["service"]))

        assert fdb(c, False) == fdb(b, True), "FDB after restore"
        assert ct(c, False) == ct(b, True), "conntrack after restore"
        assert c.services.list() == b.services.list(), "services after restore"
        assert c.overlay.routes() == b.overlay.routes(), "routes after restore"
        assert c.gateway.neighbors() == b.gateway.neighbors(), "neighbours after restore"

        def usable(e, svc):
            # what a restore keeps: the service port is there with affinity
            # and still has the backend (B may hold live entries to a backend
            # that left: its fast path skips them, a restore drops them)
            return svc is not None and svc["affinity_timeout"] and \
                tuple(e["backend"].rsplit(":", 1)) in {(ip, str(p)) for ip, p in svc["backends"]}

        def aff(dp, only_usable):
            now = int(self.clock() * 1000)
            out = []
            for e in dp.services.affinity(now):
                vip, rest = e["service"].split(":")
                port, proto = rest.split("/")
                svc = dp.services.get(vip, int(port), proto)
                if only_usable and not usable(e, svc):
                    continue
                left = 0 if io else min(e["expires_in"], svc["affinity_timeout"])
                out.append(dict(e, expires_in=left))
            return out
        assert aff(c, False) == aff(b, True), "affinity after restore"
        self.reached["restore-affinity"] += bool(aff(c, False))

    # ---- bursts ------------------------------------------------------------

    def burst(self, frames, mode, start, slots):
        """frames through A as one burst (mode 'run', 'process', 'trace',
        'trace-fork' or 'io') and through B one by one (frame k in slots[k]);
        compare, check B's verdicts."""
        want, self.verdicts = [], []
        for k, f in enumerate(frames):
            want += [(k, p, w) for p, w in self.one(f, slots[k])]
        self.shadow = None
        self.reached["burst:" + mode] += 1
        if mode == "io":
            got = self.run_io(frames)
            by_port = {}
            for k, p, w in want:
                by_port.setdefault(p, []).append(w)
            got = {p: ws for p, ws in got.items() if ws}
            assert got == by_port, f"burst of {len(frames)} via the I/O loop differs from one-by-one:\n{got}\n{by_port}"
            self.same_counters()
            return
        got = self.run_a(frames, mode, start)
        if mode == "process":
            want = [(p, w[self.cfg.vnet_len(p):]) for k, p, w in want]
        assert got == want, f"burst of {len(frames)} via {mode} differs from one-by-one:\n{got}\n{want}"
        self.same_counters()

    def run_a(self, frames, mode, start):
        dp = self.a
        if mode == "process":
            assert len({f.port for f in frames}) == 1, "process() takes frames of one port"
            return dp.process([f.data for f in frames], frames[0].port)
        if mode.startswith("trace"):
            return self.run_traced(frames, fork=mode == "trace-fork")
        out = []
        live = []
        for k, f in enumerate(frames):
            if dp.load(start + k, f.data, f.port, vnet=f.vnet):
                live.append(k)
            else:
                out += self._collect_segment(live, start)
                live = []
        out += self._collect_segment(live, start)
        return sorted(out, key=lambda x: (x[0], x[1]))

    def _collect_segment(self, live, start):
        if not live:
            return []
        dp = self.a
        dp.run_burst(start + live[0], len(live))
        res = []
        for p in dp.tx_ports():
            for s in dp.tx_queue(p):
                res.append((s - start, p, wire_vnet(dp, s, p) + dp.frame(s)))
        return res

    def run_traced(self, frames, fork):
        """Each frame through Dataplane.trace on A's live tables (the traced
        copy of the loop); with fork, the first one first in the forked copy,
        which must give the same and leave A untouched."""
        dp, out = self.a, []
        for k, f in enumerate(frames):
            if f.port >= 256:                  # trace refuses it: plain run
                out += [(k, p, w) for _, p, w in self.run_a([f], "run", 0)]
                continue
            if fork and k == 0:
                before = tables(dp)
                r0 = dp.trace(f.data, f.port, f.vnet)
                assert tables(dp) == before, \
                    "a trace in the forked copy changed the live tables"
                self.reached["trace-fork"] += 1
            r = dp.trace(f.data, f.port, f.vnet, commit=True)
            if fork and k == 0:
                assert r0 == r, f"forked trace {r0} differs from the live one {r}"
            self.check_trace(f, r, self.verdicts[k])
            self.reached["traced"] += 1
            out += sorted(((k, p, h + b) for p, b, h in r["outputs"]), key=lambda x: x[1])
        return out

    def check_trace(self, f, r, verdict):
        assert r["verdict"] == verdict, f"traced verdict {r['verdict']}, untraced {verdict}"
        assert r["lost_events"] == 0, r
        ev = r["events"]
        if verdict[0] == "drop":
            reason = verdict[1]
            if reason == "service_rejected":
                assert ev[-1][0] == "reject", ev
            else:
                assert ev[-1][:2] == ("drop", DROP_NAMES.index(reason)), (ev, reason)
        else:
            assert ev[0][0] == "rx", ev
            assert sorted(e[1] for e in ev if e[0] == "tx") == sorted(p for p, _, _ in r["outputs"]), ev

    def run_io(self, frames):
        """frames written into their ports' sockets, through A's I/O loop;
        returns {port: [vnet header + frame written to it]}. Frames the loop
        cannot take (no such port, or not fitting a slot: read() then fills the
        slot and the loop drops it as truncated) go through load/run_burst
        after the loop's queue is drained, so A stays B's twin."""
        cfg, dp = self.cfg, self.a
        if self.rig is None:
            ports = [p for p in range(256) if p in dp.ports]
            self.rig = IoRig(dp, ports, 64 if cfg.nslots in (1, 8) else 65535)
        rig, got = self.rig, {}
        sent, written = [], []                  # frames the loop read from / wrote to the captured port
        io0 = rig.io.counters()
        truncated, last = 0, None
        for f in frames:
            wire = (f.vnet if f.vnet is not None else bytes(cfg.vnet_len(f.port) if f.port < 256 else 0)) + f.data
            if f.port not in rig.socks:
                rig.drain(got, written)
                last = None
                for _, p, w in self.run_a([f], "run", 0):
                    got.setdefault(p, []).append(w)
                continue
            if len(f.data) >= cfg.slot_size:
                rig.drain(got, written)
                last = None
                before = dp.counters()
                rig.send(f.port, wire)
                rig.drain(got, written)
                truncated += 1
                assert dp.counters() == before, "a frame the I/O loop truncated reached the fast path"
                for _, p, w in self.run_a([f], "run", 0):
                    got.setdefault(p, []).append(w)
                continue
            if f.port != last:
                # one port at a time: in one wakeup the loop reads the ready
                # ports in epoll's order, not in the order frames were sent
                rig.drain(got, written)
                last = f.port
            rig.send(f.port, wire)
            if f.port == CAPTURED_PORT:
                sent.append(f.data)
        rig.drain(got, written)
        io1 = rig.io.counters()
        for p, c in io1["ports"].items():
            assert (c["rx_errors"], c["tx_errors"], c["tx_no_fd"]) == (0, 0, 0), f"I/O loop errors on port {p}: {c}"
        trunc = sum(c["rx_truncated"] for c in io1["ports"].values()) - \
            sum(c["rx_truncated"] for c in io0["ports"].values())
        assert trunc == truncated, f"{trunc} frames truncated by the I/O loop, {truncated} expected"
        self.reached["io-frames"] += len(frames) - truncated
        self.reached["io-truncated"] += truncated
        if rig.io.capture_info()["running"]:
            recs = rig.io.capture_read()
            n = rig.snaplen
            hl = dp.port_vnet(CAPTURED_PORT)
            rx = [(r[1], r[3], r[4]) for r in recs if r[2] == 0]
            tx = [(r[1], r[3], r[4]) for r in recs if r[2] == 1]
            assert rx == [(CAPTURED_PORT, len(d), d[:n]) for d in sent], "capture of received frames"
            assert tx == [(CAPTURED_PORT, len(w) - hl, w[hl:hl + n]) for w in written], "capture of sent frames"
            self.reached["captured"] += len(recs)
        return got

    def one(self, f, slot):
        """f alone through B in slot; returns [(port, vnet + frame)] after checking it."""
        dp, cfg = self.b, self.cfg
        expect = self.expected(f)
        guard = dp.guard.get(f.port) if f.port < 256 and f.port != UPLINK else None
        c0 = dp.counters()
        dp.load(slot, self.fill, 0)
        ok = dp.load(slot, f.data, f.port, vnet=f.vnet)
        if ok:
            dp.run_burst(slot, 1)
        c1 = dp.counters()
        d = delta(drop_counts(c0), drop_counts(c1))
        v = dp.verdict(slot)
        self.verdicts.append(v)
        outs = []
        if ok:
            for p in dp.tx_ports():
                q = dp.tx_queue(p)
                assert q == [slot], f"port {p} queue {q} after a burst of slot {slot} alone"
                outs.append((p, wire_vnet(dp, slot, p), dp.frame(slot)))
        else:
            assert v == ("drop", "too_long") and len(f.data) > cfg.slot_size, (v, len(f.data))
        outs.sort(key=lambda o: o[0])
        self.check_accounting(f, v, d, outs)
        self.check_expected(f, expect, v, d, outs)
        self.check_guard(f, guard, v)
        self.check_arp(f, v, outs)
        for p, h, b in outs:
            self.check_output(f, v, d, p, h, b)
            self.check_ttl(f, p, b)
        self.check_service(f, v, outs, c0, c1)
        if self.shadow is not None:
            self.run_shadow(f, slot, v, outs, c0, c1)
        self.frames += 1
        return [(p, h + b) for p, h, b in outs]

    def run_shadow(self, f, slot, v, outs, c0, c1):
        """The same frame through C, restored from B's snapshot: same verdict
        and outputs (the outer IP id of encapsulated frames aside: it restarts
        with the process), until a table eviction may make them diverge."""
        c, compare = self.shadow
        e0 = (c.counters()["conntrack"]["evictions"], c.counters()["fdb"]["full"])
        ok = c.load(slot, f.data, f.port, vnet=f.vnet)
        if ok:
            c.run_burst(slot, 1)
        cv = c.verdict(slot)
        couts = sorted((p, wire_vnet(c, slot, p), c.frame(slot)) for p in c.tx_ports()) if ok else []
        if not compare:
            return
        evicted = (c.counters()["conntrack"]["evictions"], c.counters()["fdb"]["full"]) != e0 or \
            (c1["conntrack"]["evictions"], c1["fdb"]["full"]) != (c0["conntrack"]["evictions"], c0["fdb"]["full"])
        if evicted:
            self.shadow = (c, False)
            return
        if v == ("drop", "vtep_unresolved") and cv == (UPLINK, None):
            return                 # B asked for that VTEP within the second; C (restarted) asks again
        assert cv == v, f"after restore: verdict {cv}, before {v} ({f!r})"
        assert [(p, h, outer_id_zeroed(b)) for p, h, b in couts] == [(p, h, outer_id_zeroed(b)) for p, h, b in outs], \
            f"after restore the outputs differ ({f!r})"
        self.reached["restored-frames"] += 1

    # ---- expectations of its own ---------------------------------------------------

    def expected(self, f):
        """The drop reason f must get, from how it was made and the node's
        configuration now (None: no expectation)."""
        dp, cfg = self.b, self.cfg
        if len(f.data) > cfg.slot_size:
            return "too_long"
        if f.port >= 256 or f.port not in dp.ports:
            return "bad_port"
        e = f.expect
        if e == "no_neighbor" and any(n["ip"] == NO_NEIGH_IP for n in dp.gateway.neighbors()):
            return None
        if e in ("service_rejected", "conntrack_invalid"):
            vip = VIPS[1] if e == "service_rejected" else VIPS[0]
            ip = l3_offset(f.data)[0]
            cip, sport = ip4s(int.from_bytes(f.data[ip + 12:ip + 16], "big")), struct.unpack("!H", f.data[ip + 20:ip + 22])[0]
            if any(c["client"] == f"{cip}:{sport}" and c["service"] == f"{vip}:80" and c["proto"] == "TCP"
                   for c in dp.conntrack_dump()):
                return None                # a connection from earlier (the generator's ports may repeat)
            svc = dp.services.get(vip, 80, "TCP")
            if svc is None:
                return "service_rejected"
            if e == "service_rejected" and svc["backends"]:
                return None                # a live change gave it endpoints
        return e

    def check_expected(self, f, expect, v, d, outs):
        if expect is None:
            return
        self.reached["expect:" + expect] += 1
        if expect in ("ttl_exceeded", "service_rejected") and v[0] != "drop":
            assert d == {expect: 1}, f"{f.label}: answered, drop counters moved by {d}, expected {expect}"
            assert [p for p, _, _ in outs] == [f.port], f"{f.label}: answered on {[p for p, _, _ in outs]}"
            assert answers(f, outs[0][0], outs[0][2], self.cfg) == [expect], f"{f.label}: the answer is not one"
            return
        assert v == ("drop", expect), f"{f.label}: verdict {v}, expected a {expect} drop ({f!r})"

    def check_guard(self, f, guard, v):
        """The guard's rule, computed here from the frame's bytes."""
        if v[0] == "drop" and v[1] in BEFORE_GUARD:
            return
        if guard is None:
            assert v[1] not in SPOOF, f"{v[1]} on an unguarded port {f.port}"
            return
        self.reached["guarded"] += 1
        mac, ip = bytes.fromhex(guard["mac"].replace(":", "")), bytes(map(int, guard["ip"].split(".")))
        data, why = f.data, None
        l3 = l3_offset(data)
        if data[6:12] != mac:
            why = "spoof_mac"
        elif l3[1] == 0x0800 and data[l3[0] + 12:l3[0] + 16] != ip:
            why = "spoof_ip"
        elif l3[1] == 0x0806:
            a = data[l3[0]:l3[0] + 28]
            if a[8:14] != mac:
                why = "spoof_mac"
            elif a[14:18] not in (ip, bytes(4)):
                why = "spoof_ip"
        if why:
            self.reached["spoof-dropped"] += 1
            assert v == ("drop", why), f"guarded port {f.port} ({guard}): verdict {v}, expected {why} ({f!r})"
        else:
            assert v[1] not in SPOOF, f"guarded port {f.port} ({guard}) dropped its pod's own frame as {v[1]}"

    def check_arp(self, f, v, outs):
        """ARP for the gateway (pods) or the node (uplink): answered in place,
        replies to them consumed."""
        got = arp_at(f.data)
        if got is None or (v[0] == "drop" and (v[1] in BEFORE_GUARD or v[1] in SPOOF)):
            return
        off, a = got
        op, tpa = a[6:8], a[24:28]
        if f.port == UPLINK:
            mac, ip = NODE_MAC_B, NODE_IP_B
            if not ip4_arp_ok(a):
                assert v == ("drop", "uplink_unsupported"), v
                return
            if op != b"\x00\x01" or tpa != ip:
                assert v == ("local", None), f"ARP on the uplink not consumed: {v}"
                return
        else:
            mac, ip = GW_MAC_B, GW_IP_B
            if not ip4_arp_ok(a):
                return
            if op == b"\x00\x02" and f.data[:6] == mac:
                assert v == ("local", None), f"ARP reply to the gateway not consumed: {v}"
                return
            if op != b"\x00\x01" or tpa != ip:
                return
        assert v == (f.port, None), f"ARP request for {'the node' if f.port == UPLINK else 'the gateway'}: verdict {v}"
        [(p, h, b)] = outs
        want = (a[8:14] + mac + f.data[12:off] + a[:6] + b"\x00\x02" + mac + ip + a[8:18] + f.data[off + 28:])
        assert b == want, f"ARP reply {b.hex()}, expected {want.hex()}"
        assert h == bytes(len(h)), "ARP reply with a vnet header"
        self.reached["arp-answered"] += 1

    def check_ttl(self, f, port, frame):
        """The same packet after the fast path: TTL one less if it was routed
        (sent to the gateway MAC, here or inside the tunnel), the same if
        bridged; an echo reply's is 64."""
        cfg = self.cfg
        ins, outs = layers(f.data, cfg), layers(frame, cfg)
        if not ins or not outs:
            return
        routed = None
        if port == UPLINK and f.port != UPLINK and len(outs) == 2 and outs[0].src == ip4n(NODE_IP):
            i, o = ins[0], outs[1]                  # encapsulated
        elif f.port == UPLINK and port != UPLINK:
            if len(ins) == 2:
                i, o = ins[1], outs[0]              # decapsulated
                if i.eth is None:
                    routed = True                   # IP in IP: a routed packet, no Ethernet header inside
            elif cfg.backend == "direct":
                i, o, routed = ins[0], outs[0], True    # direct mode: routed from the fabric
            else:
                return
        elif f.port == UPLINK or (port == UPLINK and len(outs) == 2 and outs[0].src == ip4n(NODE_IP)):
            return                                  # answers into the tunnel, and the node's own
        else:
            i, o = ins[0], outs[0]
        if generated(i, f.data, o, frame):
            return
        if i.proto == 1 and o.proto == 1 and i.l4_len >= 1 and o.l4_len >= 1 and f.data[i.l4] == 8 and frame[o.l4] == 0:
            assert o.ttl == 64 and o.dst == i.src, "echo reply"
            return
        if o.proto != i.proto or frame[o.off + 4:o.off + 6] != f.data[i.off + 4:i.off + 6]:
            return                                  # not the same packet
        if routed is None:
            routed = f.data[i.eth:i.eth + 6] == GW_MAC_B
        want = (i.ttl - 1) & 0xff if routed else i.ttl
        assert o.ttl == want, f"TTL {i.ttl} -> {o.ttl}, {'routed' if routed else 'bridged'} ({f!r})"
        self.reached["ttl-routed" if routed else "ttl-bridged"] += 1

    def check_service(self, f, v, outs, c0, c1):
        """A new service flow: a backend of the service, Maglev's by the table."""
        if c1["conntrack"]["inserts"] == c0["conntrack"]["inserts"] or v[0] == "drop" or f.port == UPLINK:
            return
        cfg = self.cfg
        ins = layers(f.data, cfg)
        i = ins[0]
        proto = {6: "TCP", 17: "UDP"}[i.proto]
        sport, vport = struct.unpack("!HH", f.data[i.l4:i.l4 + 4])
        svc = self.b.services.get(ip4s(i.dst), vport, proto)
        assert svc is not None, f"a new flow to {ip4s(i.dst)}:{vport}/{proto}, no such service"
        for p, h, b in outs:
            outl = layers(b, cfg)
            if not outl:
                continue                               # the ARP request for the backend's VTEP
            o = outl[1] if p == UPLINK and len(outl) == 2 and outl[0].src == ip4n(NODE_IP) else outl[0]
            if generated(i, f.data, o, b):
                continue                               # e.g. too big for the tunnel
            backend = (ip4s(o.dst), struct.unpack("!H", b[o.l4 + 2:o.l4 + 4])[0])
            assert backend in svc["backends"], f"new flow to {backend}, backends {svc['backends']}"
            if svc["lb"] == "maglev":
                key = tuple(svc["backends"])
                if key not in self.maglev:
                    self.maglev[key] = maglev_table(list(key), MAGLEV_SIZE)
                flow = mix64(((i.src << 32) | i.dst) ^ (sport << 16) ^ i.proto)
                want = svc["backends"][self.maglev[key][mix64(flow) % MAGLEV_SIZE]]
                assert backend == want, f"Maglev sent the flow to {backend}, its table says {want}"
                self.reached["maglev-checked"] += 1
            if backend[0] == ip4s(i.src):
                assert o.src == ip4n(GW_IP), "hairpin flow not SNATed to the gateway"
                self.reached["hairpin"] += 1
            self.reached["new-flow-checked"] += 1

    # ---- invariants ----------------------------------------------------------

    def check_accounting(self, f, v, d, outs):
        where = v[0]
        ports = [p for p, _, _ in outs]
        if where == "drop":
            want = {v[1]: 1}
            if f.port == UPLINK and v[1] in ("vtep_unresolved", "no_route") and tunnelled_ttl_expired(f, self.cfg):
                want["ttl_exceeded"] = 1           # its time exceeded could not go back into the tunnel
            assert d == want, f"dropped as {v[1]} but drop counters moved by {d}"
            assert ports == [], f"dropped frame queued on {ports}"
            return
        if where == "flood":
            # frames decapsulated from the uplink are routed into the gateway's domain
            dom = 0 if f.port == UPLINK else self.b.ports.domain_of(f.port)
            others = [p for p in self.b.ports.members(dom) if p != f.port]
            assert ports == sorted(others), f"flood reached {ports}, domain has {others}"
        elif where == "local":
            assert ports == [], f"consumed frame queued on {ports}"
        else:
            assert ports == [where], f"verdict port {where}, queued on {ports}"
        want = Counter()
        for p, _, b in outs:
            want.update(answers(f, p, b, self.cfg))
        assert d == dict(want), f"frame left ({where}); drop counters moved by {d}, its outputs answer {dict(want)}"
        for r in want:
            self.reached["answered:" + r] += 1

    def check_output(self, f, v, d, port, hdr, frame):
        cfg = self.cfg
        assert len(frame) >= 14, f"{len(frame)}-byte frame out of port {port}"
        assert port in self.b.ports, f"queued on port {port}, which does not exist"
        assert len(hdr) == cfg.vnet_len(port), (port, hdr)
        limit = cfg.slot_size + (50 if port == UPLINK else 0)
        assert len(frame) <= limit, f"{len(frame)}-byte frame out of port {port}, slot {cfg.slot_size}"
        vin = vnet_fields(f.vnet if f.vnet is not None else bytes(cfg.vnet_len(f.port) if f.port < 256 else 0))
        vout = vnet_fields(hdr)
        outs = layers(frame, cfg)
        ins = layers(f.data, cfg)
        if port == UPLINK and len(outs) == 2 and outs[0].src == ip4n(NODE_IP):
            if cfg.backend == "ipip":
                self.check_outer_ipip(frame, outs[0], outs[1], vout)
            else:
                self.check_outer(frame, outs[0], vout)
            if f.port != UPLINK:
                self.reached["encap:" + cfg.backend] += 1
        elif port == UPLINK and cfg.backend == "direct" and outs and outs[0].src != ip4n(NODE_IP):
            self.check_direct_out(frame, outs[0], vout)
            if f.port != UPLINK:
                self.reached["encap:direct"] += 1
        if f.port == UPLINK and port != UPLINK and outs and (len(ins) == 2 or cfg.backend == "direct"):
            self.reached["decap:" + cfg.backend] += 1
        if not outs:
            return
        o = outs[-1]
        i = ins[-1] if ins else None
        if generated(i, f.data, o, frame):
            assert hdr == bytes(len(hdr)), f"a frame the fast path wrote has vnet header {hdr.hex()}"
            assert ip_header_ok(frame, o), "bad IP checksum on a generated frame"
            assert o.tot == len(frame) - o.off, "IP length of a generated frame"
            assert l4_status(frame, o, {}) == "ok", "bad L4 checksum on a generated frame"
            return
        if i is None:
            return
        if ip_header_ok(f.data, i):
            assert ip_header_ok(frame, o), "IP header checksum was right, is wrong after the fast path"
        if l4_status(f.data, i, vin, ins[0] if len(ins) == 2 else None) == "ok":
            assert l4_status(frame, o, vout, outs[0] if len(outs) == 2 else None) != "bad", \
                f"L4 checksum was right, is wrong after the fast path (vnet in {vin}, out {vout})"
        if vin.get("flags", 0) & 1 and vin["csum_start"] + vin["csum_offset"] + 2 <= len(f.data) \
                and vin["csum_start"] >= i.l4 and vout:
            assert vout["flags"] & 1 == 0 or vout["csum_start"] + vout["csum_offset"] + 2 <= len(frame), \
                f"vnet checksum offsets fitted the frame, no longer do: in {vin}, out {vout}, {len(frame)} bytes"

    def check_outer(self, frame, outer, vout):
        """The VXLAN header encap wrote."""
        cfg = self.cfg
        assert ip_header_ok(frame, outer), "outer IP checksum"
        udp = frame[outer.l4:outer.l4 + 16]
        sport, dport, ulen, ucsum = struct.unpack("!HHHH", udp[:8])
        assert dport == cfg.vxlan_port and sport >= 49152 and ucsum == 0, (sport, dport, ucsum)
        assert udp[8] == 0x08 and udp[12:15] == (1).to_bytes(3, "big"), udp[8:].hex()
        if not vout or vout["gso_type"] == 0:
            assert outer.tot == len(frame) - 14 and ulen == len(frame) - 34, (outer.tot, ulen, len(frame))
            assert len(frame) <= cfg.mtu + 14, f"{len(frame)}-byte encapsulated frame, fabric MTU {cfg.mtu}"


    def check_outer_ipip(self, frame, outer, inner, vout):
        """The RFC 2003 header encap wrote (notes/contract15.md): IHL 5,
        protocol 4, DF and no fragment, TTL inherited from the inner packet,
        DSCP 0 and the inner ECN, to a route's VTEP from the node's MAC;
        lengths final (there is no IPIP GSO type)."""
        cfg = self.cfg
        assert ip_header_ok(frame, outer), "outer IP checksum"
        o = frame[outer.off:outer.off + 20]
        assert (outer.ihl, outer.proto, o[6:8]) == (20, 4, b"\x40\x00"), o.hex()
        assert outer.ttl == inner.ttl, f"outer TTL {outer.ttl}, inner {inner.ttl}"
        assert o[1] == frame[inner.off + 1] & 3, f"outer TOS {o[1]:#x}, inner {frame[inner.off + 1]:#x}"
        assert outer.dst in VTEPS_N and frame[6:12] == NODE_MAC_B, (ip4s(outer.dst), frame[6:12].hex())
        assert not vout or vout["gso_type"] == 0, f"an IP-in-IP frame with GSO {vout}"
        assert outer.tot == len(frame) - 14 == inner.tot + 20, (outer.tot, inner.tot, len(frame))
        assert len(frame) <= cfg.mtu + 14, f"{len(frame)}-byte IP-in-IP frame, fabric MTU {cfg.mtu}"

    def check_direct_out(self, frame, ip, vout):
        """A frame routed onto the fabric in direct mode: from the node's
        MAC, within the fabric MTU unless the uplink segments it."""
        cfg = self.cfg
        assert frame[6:12] == NODE_MAC_B, f"direct frame from {frame[6:12].hex()}"
        if not vout or vout["gso_type"] == 0:
            assert len(frame) <= cfg.mtu + 14, f"{len(frame)}-byte direct frame, fabric MTU {cfg.mtu}"
        else:
            assert cfg.tunnel_gso, f"a GSO frame {vout} on an uplink without TSO"


def service_packet(mac, ip, vip, sport, dport, proto):
    """Ethernet/IPv4 to the gateway's MAC: a UDP datagram or a TCP SYN."""
    if proto == 17:
        l4 = struct.pack("!HHHH", sport, dport, 9, 0) + b"q"
    else:
        l4 = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 0x50, 0x02, 65535, 0, 0)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0, 64, proto, 0, ip4b(ip), ip4b(vip))
    hdr = hdr[:10] + struct.pack("!H", inet_checksum(hdr)) + hdr[12:]
    ph = ip4b(ip) + ip4b(vip) + struct.pack("!BBH", 0, proto, len(l4))
    csum = inet_checksum(ph + l4)
    at = 6 if proto == 17 else 16
    l4 = l4[:at] + struct.pack("!H", csum or (0xffff if proto == 17 else 0)) + l4[at + 2:]
    return bytes.fromhex(GW_MAC.replace(":", "") + mac.replace(":", "")) + b"\x08\x00" + hdr + l4


def ip4b(ip):
    return bytes(map(int, ip.split(".")))


def inet_checksum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff


def tables(dp):
    """Counters, FDB and conntrack, without the times a dump reads off the clock."""
    return (dp.counters(), [dict(e, age=None) for e in dp.fdb_dump()],
            [dict(e, expires_in=None) for e in dp.conntrack_dump()])


def answers(f, port, frame, cfg):
    """The drops an output stands for: [] for a forwarded frame, else what
    the fast path answered in the frame's place."""
    l3 = l3_offset(frame)
    if port == UPLINK and l3 is not None and l3[1] == 0x0806 and frame[l3[0] + 6:l3[0] + 8] == b"\x00\x01" \
            and frame[l3[0] + 14:l3[0] + 18] == NODE_IP_B and arp_at(f.data) is None:
        # the ARP request for the VTEP, in place of what was to be encapsulated
        return ["vtep_unresolved"] + (["ttl_exceeded"] if f.port == UPLINK and tunnelled_ttl_expired(f, cfg) else [])
    outs = layers(frame, cfg)
    if not outs:
        return []
    ins = layers(f.data, cfg)
    o, i = outs[-1], (ins[-1] if ins else None)
    if not generated(i, f.data, o, frame):
        return []
    if o.proto == 6:
        return ["service_rejected"]
    t, code = frame[o.l4], frame[o.l4 + 1]
    return [{(11, 0): "ttl_exceeded", (3, 4): "too_big", (3, 3): "service_rejected"}[(t, code)]]


def tunnelled_ttl_expired(f, cfg):
    """A frame from the fabric whose inner IPv4 packet (in direct mode: the
    frame's own, to our MAC and not our IP), routed to a local pod (no
    transit: others are no_route drops first), has no TTL left."""
    ins = layers(f.data, cfg)
    if cfg.backend == "direct":
        if len(ins) != 1 or f.data[:6] != NODE_MAC_B or ins[0].dst == NODE_IP_N:
            return False
        p = ins[0]
    elif len(ins) == 2:
        p = ins[1]
    else:
        return False
    return p.ttl <= 1 and p.dst != ip4n(GW_IP) and p.dst >> 8 == ip4n(GW_IP) >> 8


def outer_id_zeroed(frame):
    """An encapsulated frame with its outer IP id and checksum zeroed."""
    if len(frame) >= 34 and frame[12:14] == b"\x08\x00" and frame[26:30] == NODE_IP_B:
        return frame[:18] + b"\0\0" + frame[20:24] + b"\0\0" + frame[26:]
    return frame


def wire_vnet(dp, slot, port):
    """The vnet header the I/O loop writes with slot's frame on port: the
    port's header size, ending at the frame. (vnet_hdr() sizes a flooded
    frame's header by its ingress port, which differs for decapsulated frames.)"""
    h = dp.vnet_hdr(slot)
    n = dp.port_vnet(port)
    assert n <= len(h), f"port {port} takes {n}-byte vnet headers, only {len(h)} known"
    return h[len(h) - n:]


def generated(i, indata, o, frame):
    """The output's innermost IP packet was written by the fast path (an ICMP
    error, or a RST), not forwarded."""
    if o.proto == 1 and o.l4_len >= 1 and frame[o.l4] in (3, 11):
        return not (i is not None and i.proto == 1 and i.l4_len >= 1 and indata[i.l4] == frame[o.l4])
    if o.proto == 6 and o.l4_len >= 14 and frame[o.l4 + 13] & 0x04:
        return not (i is not None and i.proto == 6 and i.l4_len >= 14 and indata[i.l4 + 13] & 0x04)
    return False
