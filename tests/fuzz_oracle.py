"""The fuzzing oracle: every input runs through two identical dataplanes.

B runs one frame per burst in a slot whose bytes past the frame were just
filled with 0xa5, so each verdict and counter change belongs to one frame:
  - a dropped frame raised exactly its reason's counter; a frame that leaves
    (port, flood, local) raised none, except the drops that are answered
    (ICMP frag-needed, the ARP request for a VTEP, a service's RST/ICMP);
  - it sits in the TX queue of its port, or of every other port of its
    domain for a flood, and nowhere else;
  - what the fast path writes itself (ICMP errors, RSTs, the VXLAN outer
    header) has correct checksums and lengths and, for a reply, a zero vnet
    header; what it rewrites (routing, NAT, encap, decap) keeps the IP and
    L4 checksums that were right (complete or partial, as the vnet header
    says) right, and a vnet header that fitted the frame fitting it.
A runs the same frames in multi-frame bursts through load/run_burst or
process(), with whatever the slots held before: its outputs and all its
counters must equal B's (so no result depends on bytes outside the frame,
on burst grouping, or on the entry point)."""
import struct

from fuzz_node import NODE_IP, PODS, UPLINK, build
from fuzz_wire import ip_header_ok, ip_layers, l4_status, vnet_fields

# Drops that still send something: the frame became the answer.
ANSWERED = {"too_big", "ttl_exceeded", "vtep_unresolved", "service_rejected"}
FILL = 0xa5


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


def drop_counts(dp):
    return {k: v for k, v in dp.counters()["drops"].items() if v}


def delta(before, after):
    return {k: after.get(k, 0) - before.get(k, 0) for k in set(before) | set(after)
            if after.get(k, 0) != before.get(k, 0)}


class Twin:
    def __init__(self, cfg):
        self.cfg = cfg
        self.clock = Clock()
        self.a = build(cfg, self.clock)
        self.b = build(cfg, self.clock)
        self.fill = bytes([FILL]) * cfg.slot_size
        self.frames = 0
        if cfg.prelearn and cfg.slot_size >= 60:
            for ip, mac, port in PODS:
                arp = (bytes.fromhex("ff" * 6 + mac.replace(":", "")) + b"\x08\x06\x00\x01\x08\x00\x06\x04\x00\x01"
                       + bytes.fromhex(mac.replace(":", "")) + bytes(map(int, ip.split(".")))
                       + bytes(6) + bytes([10, 244, 0, 250]) + bytes(18))
                assert self.a.process(arp, port) == self.b.process(arp, port)

    # ---- control steps ------------------------------------------------------

    def control(self, op):
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
        if op[0] == "advance":
            self.clock.t += op[1]
        self.same_counters()

    def same_counters(self):
        ca, cb = self.a.counters(), self.b.counters()
        assert ca == cb, f"counters differ between burst shapes/entry points:\nA={ca}\nB={cb}"

    # ---- bursts ------------------------------------------------------------

    def burst(self, frames, mode, start, slots):
        """frames through A as one burst (mode 'run' or 'process') and through
        B one by one (frame k in slots[k]); compare, check B's verdicts."""
        want = []
        for k, f in enumerate(frames):
            want += [(k, p, w) for p, w in self.one(f, slots[k])]
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

    def one(self, f, slot):
        """f alone through B in slot; returns [(port, vnet + frame)] after checking it."""
        dp, cfg = self.b, self.cfg
        before = drop_counts(dp)
        dp.load(slot, self.fill, 0)
        ok = dp.load(slot, f.data, f.port, vnet=f.vnet)
        if ok:
            dp.run_burst(slot, 1)
        d = delta(before, drop_counts(dp))
        v = dp.verdict(slot)
        outs = []
        if ok:
            for p in dp.tx_ports():
                q = dp.tx_queue(p)
                assert q == [slot], f"port {p} queue {q} after a burst of slot {slot} alone"
                outs.append((p, wire_vnet(dp, slot, p), dp.frame(slot)))
        else:
            assert v == ("drop", "too_long") and len(f.data) > cfg.slot_size, (v, len(f.data))
        outs.sort(key=lambda o: o[0])
        self.check_accounting(f, v, d, [p for p, _, _ in outs])
        for p, h, b in outs:
            self.check_output(f, v, d, p, h, b)
        self.frames += 1
        return [(p, h + b) for p, h, b in outs]

    # ---- invariants ----------------------------------------------------------

    def check_accounting(self, f, v, d, ports):
        where = v[0]
        if where == "drop":
            assert d == {v[1]: 1}, f"dropped as {v[1]} but drop counters moved by {d}"
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
        assert d == {} or (len(d) == 1 and list(d.values()) == [1] and set(d) <= ANSWERED), \
            f"frame left ({where}) yet drop counters moved by {d}"

    def check_output(self, f, v, d, port, hdr, frame):
        cfg = self.cfg
        assert len(frame) >= 14, f"{len(frame)}-byte frame out of port {port}"
        assert port in self.b.ports, f"queued on port {port}, which does not exist"
        assert len(hdr) == cfg.vnet_len(port), (port, hdr)
        limit = cfg.slot_size + (50 if port == UPLINK else 0)
        assert len(frame) <= limit, f"{len(frame)}-byte frame out of port {port}, slot {cfg.slot_size}"
        vin = vnet_fields(f.vnet if f.vnet is not None else bytes(cfg.vnet_len(f.port) if f.port < 256 else 0))
        vout = vnet_fields(hdr)
        outs = ip_layers(frame, cfg.vxlan_port)
        ins = ip_layers(f.data, cfg.vxlan_port)
        if port == UPLINK and len(outs) == 2 and outs[0].src == ip4n(NODE_IP):
            self.check_outer(frame, outs[0], vout)
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


def wire_vnet(dp, slot, port):
    """The vnet header the I/O loop writes with slot's frame on port: the
    port's header size, ending at the frame. (vnet_hdr() sizes a flooded
    frame's header by its ingress port, which differs for decapsulated frames.)"""
    h = dp.vnet_hdr(slot)
    n = dp.port_vnet(port)
    assert n <= len(h), f"port {port} takes {n}-byte vnet headers, only {len(h)} known"
    return h[len(h) - n:]


def ip4n(s):
    return int.from_bytes(bytes(map(int, s.split("."))), "big")


def generated(i, indata, o, frame):
    """The output's innermost IP packet was written by the fast path (an ICMP
    error, or a RST), not forwarded."""
    if o.proto == 1 and o.l4_len >= 1 and frame[o.l4] in (3, 11):
        return not (i is not None and i.proto == 1 and i.l4_len >= 1 and indata[i.l4] == frame[o.l4])
    if o.proto == 6 and o.l4_len >= 14 and frame[o.l4 + 13] & 0x04:
        return not (i is not None and i.proto == 6 and i.l4_len >= 14 and indata[i.l4 + 13] & 0x04)
    return False
