"""podnet's packet-testing toolkit: pytest fixtures and scapy send/expect
helpers, for a live cluster of network namespaces and for an in-memory node.

Installing podnet registers this module as a pytest plugin (the `pytest11`
entry point `podnet`), so its fixtures are there in every test:

    def test_routed(podnet_cluster):
        c = podnet_cluster(SPEC)                          # up now, down after the test
        a, b = c.pod("web-a"), c.pod("web-b")
        pkt = Ether(src=a.mac, dst=a.gateway_mac) / IP(src=a.ip, dst=b.ip) / UDP(dport=9) / b"x"
        [got] = send_and_expect(a, pkt, b)
        expect_routed(got, pkt, src_mac=b.gateway_mac, dst_mac=b.mac)

The model is FD.io VPP's test framework: frames are built and dissected with
scapy, sent from one endpoint (a pod's eth0, a node's uplink) and captured at
another, and sent and received frames are matched by a marker in their
payload (`send_and_expect`, `send_and_assert_no_reply`), never by order or
arrival time alone. A failed match shows what was sent, what arrived and the
fields that differ.

Fixtures (factories; what they make is torn down after the test, also when
it fails):
    podnet_cluster(spec)  a live cluster (Cluster): namespaces, TAPs, agents;
                          needs root and /dev/net/tun (skipped without them,
                          outside CI; under CI=true a failure).
    podnet_node(spec)     one node's fast path in this process (MemoryNode),
                          built from the spec as its agent builds it; no root.

docs/testing.md ("Writing packet tests") has a complete example file.

Isolation: a live cluster gets a run and state directory of its own and a
unique name, which prefixes its namespaces, so it never touches the user's
cluster (`podnet down` acts on /run/podnet, not on these) and two test runs
can share a host.

scapy is imported by the functions that need it, so loading the plugin
costs a pytest run that does not use it nothing.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import select
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Cluster", "MemoryNode", "Clock", "Pod", "Node", "NodeInfo", "Endpoint", "MemoryPod", "MemoryPort", "Capture",
    "PodnetTestError", "FrameTooLong", "marker", "mark", "markers_in", "send_and_expect",
    "send_and_assert_no_reply", "expect_vxlan", "expect_ipip", "expect_routed", "diff", "describe",
    "require_root", "podnet_cluster", "podnet_node",
]

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_IGNORE_OUTGOING = 23        # Linux 4.20: a packet socket skips what its interface sends
ETH_HLEN = 14
VLAN_HLEN = 4
RECV_MAX = 65536 + 1024            # a TCP super-frame the fast path hands a TAP whole
RCVBUF = 8 << 20                   # room for a burst the test has not read yet
UPLINK = "uplink"                  # the name of a node's fabric port
DEFAULT_TIMEOUT = 2.0              # seconds send_and_expect waits for what it expects
NO_REPLY_TIMEOUT = 1.0             # seconds send_and_assert_no_reply watches


class PodnetTestError(RuntimeError):
    """A toolkit call that cannot be carried out as asked: an unknown pod or
    node, a live cluster without root, a frame without a marker where one is
    needed. The message says what was wrong and what would be right."""


class FrameTooLong(PodnetTestError, ValueError):
    """A frame longer than the sending interface's MTU allows (MTU + 14 for
    the Ethernet header, + 4 with an 802.1Q tag). Nothing was sent."""


def _in_ci():
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _have_root():
    return os.geteuid() == 0 and os.path.exists("/dev/net/tun")


def require_root():
    """Skip the calling test (outside CI) or fail it (CI=true, where live
    tests must run) unless this process is root with /dev/net/tun."""
    import pytest
    if not _have_root():
        msg = "live podnet clusters need root and /dev/net/tun"
        if _in_ci():
            pytest.fail(msg + " (CI=true: these tests must run)")
        pytest.skip(msg)


# ---- markers ------------------------------------------------------------------

_RUN = os.urandom(3).hex()                         # per process: another run's frames never match
_seq = itertools.count(1)
MARKER_RE = re.compile(rb"PNMK[0-9a-f]{6}[0-9]{6}")


def marker():
    """A fresh 16-byte payload marker (b"PNMK" + this process's id + a
    sequence number), unique to this process and call."""
    return b"PNMK%s%06d" % (_RUN.encode(), next(_seq) % 1_000_000)


def markers_in(frame):
    """Every marker a frame (bytes or a scapy packet) carries, in order: a
    frame can carry several (an ICMP error quotes the packet it answers)."""
    return MARKER_RE.findall(_bytes(frame))


def mark(pkt):
    """Give pkt a marker; returns (pkt, marker). A packet that holds one
    already keeps it. A scapy packet without one gets a fresh marker
    appended to its innermost payload, in place, so the packet the test
    keeps is the one sent (compare against it). Length and checksum fields
    left unset, as scapy leaves them, are computed with the marker; fields
    the test set are kept as set (a frame dissected from bytes has them all
    set: give it a marker of its own). Raw bytes must carry one already
    (put marker() in the payload)."""
    if isinstance(pkt, (bytes, bytearray, memoryview)):
        found = markers_in(pkt)
        if found:
            return pkt, found[0]
        raise PodnetTestError("a frame given as bytes has no marker: build it with scapy (a marker is "
                              "appended to its payload) or put dataplane.testing.marker() in its payload")
    from scapy.packet import Raw
    for layer in pkt.iterpayloads():            # a marker in a payload given: no build needed to see it
        if isinstance(layer, Raw):
            found = MARKER_RE.findall(bytes(layer.load))
            if found:
                return pkt, found[0]
    m = marker()
    pkt.lastlayer().add_payload(Raw(m))
    for layer in pkt.iterpayloads():            # a dissected packet caches its bytes
        layer.raw_packet_cache = None
    return pkt, m


def _bytes(pkt):
    return bytes(pkt)


def _ether(frame):
    from scapy.layers.l2 import Ether
    return frame if isinstance(frame, Ether) else Ether(bytes(frame))


def _packets(pkts):
    """One packet or an iterable of them, as a list."""
    if isinstance(pkts, (bytes, bytearray, memoryview)) or hasattr(pkts, "layers"):
        return [pkts]
    return list(pkts)


# ---- describing and comparing frames -------------------------------------------

_FIELDS = {
    "Ether": ("src", "dst", "type"), "Dot1Q": ("vlan", "type"),
    "ARP": ("op", "hwsrc", "psrc", "hwdst", "pdst"),
    "IP": ("src", "dst", "ttl", "tos", "id", "flags", "frag", "proto", "len", "chksum"),
    "IPv6": ("src", "dst", "hlim", "nh"),
    "TCP": ("sport", "dport", "flags", "seq", "ack", "chksum"), "UDP": ("sport", "dport", "len", "chksum"),
    "ICMP": ("type", "code", "chksum"), "VXLAN": ("flags", "vni"),
}


def describe(frame):
    """One line per frame: each layer with the fields tests usually check."""
    from scapy.layers.l2 import Ether
    from scapy.packet import NoPayload, Raw
    p, parts = Ether(_bytes(frame)), []          # dissected again: every field as sent
    while p is not None and not isinstance(p, NoPayload):
        name = p.__class__.__name__
        if isinstance(p, Raw):
            data = _bytes(p)
            m = markers_in(data)
            parts.append(f"Raw {len(data)} B" + (f" marker {m[0].decode()}" if m else ""))
            break
        fields = _FIELDS.get(name)
        if fields:
            parts.append(name + " " + " ".join(f"{f}={p.getfieldval(f)}" for f in fields))
        else:
            parts.append(name)
        p = p.payload
    return " / ".join(parts)


def diff(expected, got):
    """The fields in which two frames differ, layer by layer: lines such as
    "IP.ttl: 64 -> 63" (a layer present in one only is named as such)."""
    from scapy.layers.l2 import Ether
    from scapy.packet import NoPayload, Raw
    a, b, out, depth = Ether(_bytes(expected)), Ether(_bytes(got)), [], 0
    while not isinstance(a, NoPayload) or not isinstance(b, NoPayload):
        if isinstance(a, NoPayload) or isinstance(b, NoPayload) or type(a) is not type(b):
            out.append(f"layer {depth}: {a.__class__.__name__} -> {b.__class__.__name__}")
            break
        name = a.__class__.__name__
        if isinstance(a, Raw):
            x, y = _bytes(a), _bytes(b)
            if x != y:
                at = next((i for i, (u, v) in enumerate(zip(x, y)) if u != v), min(len(x), len(y)))
                out.append(f"Raw: {len(x)} B -> {len(y)} B, first difference at byte {at}")
            break
        for f in a.fields_desc:
            va, vb = a.getfieldval(f.name), b.getfieldval(f.name)
            if va != vb and not hasattr(va, "layers"):
                out.append(f"{name}.{f.name}: {va!r} -> {vb!r}")
        a, b, depth = a.payload, b.payload, depth + 1
    return out


def _report(title, sent, marks, arrived, by_marker, others, limit=12):
    lines = [title, f"sent ({len(sent)}):"]
    for i, (pkt, m) in enumerate(zip(sent, marks)):
        got = by_marker.get(m, [])
        lines.append(f"  #{i} {m.decode()}  {describe(pkt)}")
        if not got:
            lines.append("      -> did not arrive")
        for g in got[:3]:
            lines.append(f"      -> arrived: {describe(g)}")
            lines.extend(f"         {d}" for d in diff(pkt, g)[:12])
        if len(got) > 3:
            lines.append(f"      -> and {len(got) - 3} more copies")
    if others:
        lines.append(f"also arrived, without a marker of these packets ({len(others)}, first {min(limit, len(others))}):")
        lines.extend(f"  {describe(f)}" for f in others[:limit])
    else:
        lines.append(f"nothing else arrived ({len(arrived)} frame{'' if len(arrived) == 1 else 's'} in all)")
    return "\n".join(lines)


# ---- endpoints: where frames are sent and captured -------------------------------

class Capture:
    """Frames arriving at an endpoint from the moment the capture opened
    (a context manager; Endpoint.capture() makes one). filter: a BPF
    expression in tcpdump's syntax (live endpoints: run in the kernel) or a
    callable taking a scapy Ether and returning a bool."""

    def __init__(self, filter=None):
        self.raw = []                  # the frames' bytes, in arrival order
        self._frames = []              # the same dissected (scapy Ether), as far as asked for
        self.filter = filter if callable(filter) else None
        self.bpf = filter if isinstance(filter, str) else None
        if filter is not None and not callable(filter) and not isinstance(filter, str):
            raise PodnetTestError(f"filter must be a BPF expression or a callable, got {filter!r}")

    def _take(self, frame):
        if self.filter is None:
            self.raw.append(frame)
            return
        e = _ether(frame)
        if self.filter(e):
            if len(self._frames) == len(self.raw):
                self._frames.append(e)
            self.raw.append(frame)

    @property
    def frames(self):
        """What arrived so far, as scapy Ether frames (dissected when asked for)."""
        from scapy.layers.l2 import Ether
        self._frames.extend(Ether(b) for b in self.raw[len(self._frames):])
        return self._frames

    def _poll(self, timeout):
        """Read what arrives within timeout s (0: what is there now)."""
        raise NotImplementedError

    def wait(self, done=None, timeout=DEFAULT_TIMEOUT):
        """Collect frames until done(raw) is true (raw: the frames' bytes so
        far) or timeout s have passed; returns the frames (scapy). Without
        done, collects for the whole timeout."""
        end = time.monotonic() + timeout
        while True:
            if done is not None and done(self.raw):
                self._poll(0)          # what is already there too: a duplicate is seen
                return self.frames
            left = end - time.monotonic()
            if left <= 0:
                self._poll(0)
                return self.frames
            self._poll(left)

    def close(self):
        """Stop capturing (the context manager's exit does)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _SocketCapture(Capture):
    def __init__(self, endpoint, filter=None):
        super().__init__(filter)
        self.sock = endpoint._socket(ETH_P_ALL)
        try:
            self.sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, 33, RCVBUF)      # SO_RCVBUFFORCE (root)
            except OSError:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            if self.bpf:
                self._attach(self.bpf)
            self._drain_before()
        except BaseException:
            self.sock.close()
            raise
        self.buf = bytearray(RECV_MAX)

    def _attach(self, expr):
        from scapy.arch.common import compile_filter
        from scapy.arch.linux import SO_ATTACH_FILTER, sock_fprog
        from scapy.error import Scapy_Exception
        try:
            bp = compile_filter(expr, linktype=1)          # DLT_EN10MB
        except Scapy_Exception as e:
            raise PodnetTestError(f"bad capture filter {expr!r}: {e}") from None
        self.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, sock_fprog(bp.bf_len, bp.bf_insns))

    def _drain_before(self):
        """Frames queued between socket() and the filter's attach are not the
        capture's: drop them (the filter applies from here)."""
        if self.bpf:
            self.sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                while True:
                    self.sock.recv(RECV_MAX)

    def _poll(self, timeout):
        r, _, _ = select.select([self.sock], [], [], max(0.0, timeout))
        if not r:
            return
        self.sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                n = self.sock.recv_into(self.buf)
                self._take(bytes(self.buf[:n]))

    def close(self):
        self.sock.close()


class Endpoint:
    """An interface frames can be sent from and captured at: a pod's eth0
    (Pod), a node's port on the fabric (Node.uplink). send() injects frames
    as the interface itself transmits them (an AF_PACKET socket inside its
    namespace): from a pod's eth0 into its node's fast path, from an uplink
    into the node from the fabric. capture()/sniff() see what arrives at
    the interface from the fast path (not what it sends)."""

    def __init__(self, netns, ifname, mtu, name=None):
        self.netns, self.ifname, self.mtu = netns, ifname, mtu
        self.name = name or f"{netns}:{ifname}"
        self._tx = None

    def __repr__(self):
        return f"<{type(self).__name__} {self.name}>"

    def _socket(self, proto):
        from tap.device import TapError, in_netns
        try:
            with in_netns(self.netns):
                s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(proto))
                try:
                    s.bind((self.ifname, proto))
                except OSError as e:
                    s.close()
                    raise PodnetTestError(f"{self.name}: no interface {self.ifname} in namespace "
                                          f"{self.netns} ({e.strerror})") from None
        except TapError as e:
            raise PodnetTestError(f"{self.name}: {e} (is the cluster still up?)") from None
        return s

    def check_frames(self, pkts):
        """The frames as bytes, each checked against this interface's MTU;
        FrameTooLong (nothing sent) names the first that does not fit."""
        frames = [_bytes(p) for p in _packets(pkts)]
        for i, f in enumerate(frames):
            limit = self.mtu + ETH_HLEN + (VLAN_HLEN if f[12:14] == b"\x81\x00" else 0)
            if len(f) > limit:
                raise FrameTooLong(f"{self.name}: frame #{i} is {len(f)} bytes; its MTU of {self.mtu} "
                                   f"carries frames of at most {limit} bytes (nothing was sent)")
            if len(f) < ETH_HLEN:
                raise PodnetTestError(f"{self.name}: frame #{i} is {len(f)} bytes, shorter than an "
                                      f"Ethernet header (nothing was sent)")
        return frames

    def send(self, pkts):
        """Transmit one frame or several (scapy packets or bytes), in order,
        as this interface sends them. All are checked against its MTU first."""
        return self._transmit(self.check_frames(pkts))

    def _transmit(self, frames):
        if self._tx is None:
            self._tx = self._socket(0)             # protocol 0: sends only, receives nothing
        for f in frames:
            self._tx.send(f)
        return len(frames)

    def capture(self, filter=None):
        """A Capture of what arrives here from now on (use it as a context
        manager; send, then capture.wait(...))."""
        return _SocketCapture(self, filter)

    def sniff(self, count=None, timeout=1.0, filter=None):
        """Frames (scapy Ether) arriving within timeout s, stopping early
        once count have arrived. filter: as Capture's."""
        with self.capture(filter) as cap:
            return cap.wait((lambda f: len(f) >= count) if count else None, timeout)[:count]

    def exec(self, cmd, timeout=30.0, check=True, input=None):
        """Run cmd (a list, or a string split as a shell would) inside this
        endpoint's namespace; returns the CompletedProcess (text). check: a
        non-zero exit raises PodnetTestError with its output."""
        argv = shlex.split(cmd) if isinstance(cmd, str) else [str(a) for a in cmd]
        pre = ["nsenter", f"--net={self.netns}"] if "/" in self.netns else ["ip", "netns", "exec", self.netns]
        r = subprocess.run(pre + argv, capture_output=True, text=True, timeout=timeout, input=input)
        if check and r.returncode != 0:
            raise PodnetTestError(f"{' '.join(argv)} in {self.name} exited with {r.returncode}:\n"
                                  f"{r.stdout}{r.stderr}")
        return r

    def close(self):
        """Close the endpoint's sending socket (Cluster.down does)."""
        if self._tx is not None:
            self._tx.close()
            self._tx = None


class Pod(Endpoint):
    """A pod of a live cluster. ip, mac: its eth0's; gateway, gateway_mac:
    its node's gateway (the default route); node: its node's name; netns,
    ifname, mtu: where its eth0 is. send/capture/sniff/exec as Endpoint's."""

    def __init__(self, rec, gateway_mac):
        super().__init__(rec.netns, rec.ifname, rec.mtu, rec.name)
        self.ip, self.mac, self.gateway, self.gateway_mac = rec.ip, rec.mac, rec.gateway, gateway_mac
        self.node, self.prefixlen, self.labels = rec.node, rec.prefixlen, dict(rec.labels)


@dataclass(frozen=True)
class NodeInfo:
    """A node's addresses: its pod subnet and gateway, and its address on the
    fabric (the VTEP of VXLAN, the tunnel end of IP-in-IP, the next hop of
    direct routing)."""
    name: str
    index: int
    subnet: str
    gateway_ip: str
    gateway_mac: str
    underlay_ip: str
    underlay_mac: str


class Node(NodeInfo):
    """A node of a live cluster: NodeInfo's addresses, uplink (an Endpoint
    on the node's port in the fabric namespace: what the node sends to the
    fabric is captured there, and what is sent there reaches the node from
    the fabric), and its agent's counters."""

    def __init__(self, ns, fabric_ns, fabric_mtu):
        object.__setattr__(self, "_ns", ns)
        for f in ("name", "index", "subnet", "gateway_ip", "gateway_mac", "underlay_ip", "underlay_mac"):
            object.__setattr__(self, f, getattr(ns, f))
        object.__setattr__(self, "netns", ns.netns)
        object.__setattr__(self, "uplink", Endpoint(fabric_ns, f"up{ns.index}", fabric_mtu,
                                                    f"{ns.name}:{UPLINK}"))

    def request(self, op, **args):
        """One control request to the node's agent (dataplane/control.py)."""
        from dataplane.control import request
        return request(self._ns.socket, op, **args)

    def counters(self):
        """The agent's counters (drops by reason, bridge, gateway, overlay,
        services, conntrack, ports)."""
        return self.request("counters")

    def drops(self):
        """The drop counters that are not zero, by reason."""
        return {k: v for k, v in self.counters()["drops"].items() if v}


# ---- specs -------------------------------------------------------------------------

def load_spec_input(spec):
    """A spec given as a dict, YAML text, a path (str or Path) or None (the
    embedded default), parsed and validated: a ClusterSpec (SpecError lists
    every problem)."""
    from dataplane.spec import DEFAULT_SPEC, parse_spec
    if spec is None:
        return parse_spec(DEFAULT_SPEC, "<default spec>")
    if isinstance(spec, dict):
        return parse_spec(json.dumps(spec), "<spec dict>")
    if isinstance(spec, Path) or (isinstance(spec, str) and "\n" not in spec and spec.endswith((".yaml", ".yml", ".json"))):
        path = Path(spec)
        if not path.is_file():
            raise PodnetTestError(f"spec file {path} does not exist")
        return parse_spec(path.read_text(), str(path))
    if isinstance(spec, str):
        return parse_spec(spec, "<spec text>")
    raise PodnetTestError(f"a spec is a dict, YAML text or a path, not {type(spec).__name__}")


def _unique_name():
    """A cluster name no namespace on this host starts with: 'pt', this
    process's PID and a counter (in hex), within the 20 characters a name
    may have."""
    from dataplane import netns
    taken = set(os.listdir(netns.NETNS_DIR)) if os.path.isdir(netns.NETNS_DIR) else set()
    while True:
        name = f"pt{os.getpid():x}x{next(_seq):x}"
        if not any(n.startswith(name + "-") for n in taken):
            return name


# ---- a live cluster ------------------------------------------------------------------

class Cluster:
    """A live podnet cluster for tests: namespaces, TAPs and agents, as
    `podnet up` makes them, in a run and state directory of its own (under
    workdir) and under a unique name (its namespaces' prefix), so the user's
    own cluster is never touched. The spec's cluster.name is replaced by
    that name; everything else is the spec's.

        with Cluster(spec) as c:          # up; down on leaving, also on an error
            c.pod("web-a").send(...)

    up() validates the spec before it creates anything (SpecError) and takes
    down whatever it made if it fails half-way."""

    def __init__(self, spec=None, workdir=None, *, vnet=True, workers=None, name=None):
        parsed = load_spec_input(spec)
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="podnet-test-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.name = name or _unique_name()
        doc = parsed.to_dict()
        doc["cluster"]["name"] = self.name
        self.spec_path = self.workdir / "spec.json"
        self.spec_path.write_text(json.dumps(doc, indent=1))
        self.spec = load_spec_input(self.spec_path)      # the name checked like the rest
        self.run_dir, self.state_dir = self.workdir / "run", self.workdir / "state"
        self.vnet, self.workers = vnet, workers
        self.started = False
        self._before = set(self._namespaces())            # a name given by the caller may have some already
        self._endpoints = []
        self._napply = 0
        self.log = []                                    # `podnet up`'s progress lines

    def __repr__(self):
        return f"<Cluster {self.name} ({len(self.spec.nodes)} nodes, {len(self.spec.pods)} pods)>"

    @contextlib.contextmanager
    def env(self):
        """This cluster's PODNET_RUN_DIR and PODNET_STATE_DIR in os.environ
        for the block (dataplane.cluster and the CLI read them)."""
        keys = {"PODNET_RUN_DIR": str(self.run_dir), "PODNET_STATE_DIR": str(self.state_dir)}
        old = {k: os.environ.get(k) for k in keys}
        os.environ.update(keys)
        try:
            yield
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def up(self):
        """Bring the cluster up (namespaces, fabric, agents, the spec's
        services). PodnetTestError without root; a failure leaves nothing."""
        if not _have_root():
            raise PodnetTestError("a live podnet cluster needs root and /dev/net/tun")
        from dataplane import cluster
        self._before |= set(self._namespaces())          # down removes only what this up made
        with self.env():
            cluster.up(str(self.spec_path), vnet=self.vnet, progress=self.log.append, workers=self.workers)
        self.started = True
        return self

    def down(self):
        """Take the cluster down (agents, namespaces, run files) and check
        that none of its namespaces is left; a second call does nothing."""
        for ep in self._endpoints:
            ep.close()
        self._endpoints.clear()
        from dataplane import cluster, netns
        with self.env():
            cluster.down(quiet=True, force=True, progress=lambda *_: None)
        left = [n for n in self._namespaces() if n not in self._before]
        for n in left:                                   # never expected: removed, then reported
            netns.remove(n)
        self.started = False
        if left:
            raise PodnetTestError(f"cluster {self.name}: namespaces left after down (removed): {', '.join(left)}")

    def _namespaces(self):
        from dataplane import netns
        d = netns.NETNS_DIR
        return sorted(n for n in os.listdir(d) if n.startswith(self.name + "-")) if os.path.isdir(d) else []

    def __enter__(self):
        try:
            return self.up()
        except BaseException:
            self.down()
            raise

    def __exit__(self, *exc):
        self.down()

    def state(self):
        """The cluster's record (dataplane/state.py ClusterState), read now."""
        from dataplane import cluster
        with self.env():
            s = cluster.load_state()
        if s is None:
            raise PodnetTestError(f"cluster {self.name} is not up")
        return s

    def pod(self, name):
        """The Pod called name (from the spec, `apply`, `podnet pod add` or CNI)."""
        s = self.state()
        rec = s.pods.get(name)
        if rec is None:
            raise PodnetTestError(f"no pod {name!r} in cluster {self.name}; its pods: {', '.join(s.pods) or 'none'}")
        pod = Pod(rec, s.nodes[rec.node].gateway_mac)
        self._endpoints.append(pod)
        return pod

    def node(self, name):
        """The Node called name."""
        s = self.state()
        ns = s.nodes.get(name)
        if ns is None:
            raise PodnetTestError(f"no node {name!r} in cluster {self.name}; its nodes: {', '.join(s.nodes)}")
        node = Node(ns, s.fabric["namespace"], s.fabric["mtu"])
        self._endpoints.append(node.uplink)
        return node

    @property
    def pods(self):
        """The names of the cluster's pods."""
        return list(self.state().pods)

    @property
    def nodes(self):
        """The names of the cluster's nodes."""
        return list(self.state().nodes)

    def apply(self, manifests, delete=False):
        """`podnet apply -f` (delete: `podnet delete -f`) of Pods, Services and
        EndpointSlices given as YAML text, a path, a dict or a list of dicts.
        Every object is validated before any is applied (a ManifestError
        changes nothing). Returns what dataplane.cluster.apply_file does."""
        from dataplane import cluster
        if isinstance(manifests, (dict, list)):
            items = manifests if isinstance(manifests, list) else [manifests]
            text = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
        elif isinstance(manifests, Path) or (isinstance(manifests, str) and "\n" not in manifests
                                             and os.path.isfile(manifests)):
            text = Path(manifests).read_text()
        elif isinstance(manifests, str):
            text = manifests
        else:
            raise PodnetTestError(f"manifests are YAML text, a path, a dict or a list, not {type(manifests).__name__}")
        self._napply += 1
        path = self.workdir / f"manifests-{self._napply}.yaml"
        path.write_text(text)
        with self.env():
            return cluster.apply_file(str(path), delete=delete)

    def status(self):
        """What `podnet status -o json` reports: nodes (agents, addresses,
        backend, offloads), pods, services."""
        from dataplane import cluster
        with self.env():
            return cluster.status()

    def podnet(self, *args, check=True, timeout=60.0):
        """Run the CLI (`podnet ARGS`) on this cluster; returns the
        CompletedProcess (text). check: a non-zero exit raises."""
        env = {**os.environ, "PODNET_RUN_DIR": str(self.run_dir), "PODNET_STATE_DIR": str(self.state_dir)}
        r = subprocess.run([sys.executable, "-m", "dataplane", *map(str, args)], capture_output=True,
                           text=True, timeout=timeout, env=env)
        if check and r.returncode != 0:
            raise PodnetTestError(f"podnet {' '.join(map(str, args))} exited with {r.returncode}:\n{r.stderr}")
        return r


# ---- an in-memory node ------------------------------------------------------------------

class Clock:
    """An injected clock (seconds) for the in-memory node (and any
    Dataplane): tests move it, never sleep."""

    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t

    def advance(self, seconds):
        """Move the clock seconds on."""
        self.t += seconds


class _MemoryCapture(Capture):
    def __init__(self, queue, filter=None):
        if isinstance(filter, str):
            raise PodnetTestError("in-memory captures take a callable filter, not BPF")
        super().__init__(filter)
        self.queue, self.start = queue, len(queue)

    def _poll(self, timeout):
        """Everything the fast path put out is there the moment send() returns."""
        for f in self.queue[self.start:]:
            self._take(f)
        self.start = len(self.queue)


class MemoryPort:
    """A port of an in-memory node: send() runs frames into the fast path
    as if they arrived on it (returns the output frames per port, as
    MemoryNode.send); capture()/sniff() see what the fast path put out on it."""

    def __init__(self, node, port, name, mtu):
        self._node, self.port, self.name, self.mtu = node, port, name, mtu

    def __repr__(self):
        return f"<{type(self).__name__} {self.name} (port {self.port})>"

    check_frames = Endpoint.check_frames

    def send(self, pkts):
        """Run frames into the fast path as if they arrived on this port;
        returns the output frames per port (MemoryNode.send)."""
        return self._node.send(self.name, pkts)

    def _transmit(self, frames):
        self._node._process(self.port, frames)

    def capture(self, filter=None):
        """A Capture of what the fast path puts out on this port from now on
        (filter: a callable; BPF needs a kernel)."""
        return _MemoryCapture(self._node._queue(self.port), filter)

    def sniff(self, count=None, timeout=0.0, filter=None):
        """The frames put out on this port since the last sniff (at most
        count); timeout is accepted for symmetry with live pods and unused:
        nothing arrives later in memory."""
        q = self._node._queue(self.port)
        frames = [f for f in (_ether(b) for b in q) if filter is None or filter(f)]
        q.clear()
        return frames[:count] if count else frames

    def exec(self, cmd, **kw):
        """An in-memory port has no namespace: PodnetTestError."""
        raise PodnetTestError(f"{self.name} is in memory: it has no namespace to run {cmd!r} in")


class MemoryPod(MemoryPort):
    """A pod of an in-memory node, with a live Pod's attributes (ip, mac,
    gateway, gateway_mac, node, mtu, labels). A pod of another node of the
    spec has them too (port None): its frames reach this node over the uplink."""

    def __init__(self, node, rec, gateway_mac, local):
        super().__init__(node, rec.port if local else None, rec.name, rec.mtu)
        self.ip, self.mac, self.gateway, self.gateway_mac = rec.ip, rec.mac, rec.gateway, gateway_mac
        self.node, self.prefixlen, self.labels = rec.node, rec.prefixlen, dict(rec.labels)

    def _local(self):
        if self.port is None:
            raise PodnetTestError(f"pod {self.name} is on node {self.node}, not on this in-memory node "
                                  f"({self._node.name}): its frames reach this node over the {UPLINK!r} port")

    def send(self, pkts):
        self._local()
        return super().send(pkts)

    def _transmit(self, frames):
        self._local()
        return super()._transmit(frames)

    def capture(self, filter=None):
        self._local()
        return super().capture(filter)

    def sniff(self, count=None, timeout=0.0, filter=None):
        self._local()
        return super().sniff(count, timeout, filter)


class MemoryNode:
    """One node of a spec, its fast path in this process, configured as its
    agent configures it (dataplane.agent.Agent.configure: the gateway, each
    pod's port with its anti-spoofing guard and ARP entry, the uplink with
    the cluster's backend and the routes to the other nodes, the spec's
    services with their endpoints): no TAPs, no root, an injected clock.

    Differences from a live agent, all for running without a fabric: frames
    carry no vnet headers (no offloads), the other nodes' underlay MACs are
    known up front (a live agent learns them by ARP), and nothing runs
    between send() calls (advance the clock, then send, to age things).

        node = MemoryNode(spec, "node-a")
        out = node.send("client-a", frame)    # {"uplink": [Ether ...]}"""

    def __init__(self, spec=None, node=None, *, workdir=None, clock=None, fdb_capacity=4096,
                 service_capacity=4096, conntrack_capacity=16384, burst=64):
        from dataplane import cluster
        from dataplane.agent import Agent, UPLINK_PORT
        from dataplane.ipam import Ipam
        from dataplane.manifests import ServiceStore
        self.spec = load_spec_input(spec)
        names = [n.name for n in self.spec.nodes]
        self.name = node or names[0]
        if self.name not in names:
            raise PodnetTestError(f"no node {self.name!r} in the spec; its nodes: {', '.join(names)}")
        tmp = tempfile.TemporaryDirectory(prefix="podnet-memnode-") if workdir is None else None
        wd = Path(workdir) if workdir else Path(tmp.name)
        try:
            plan = Ipam(wd / "ipam.json").plan(self.spec)
            self.state = cluster.plan_state(self.spec, plan, vnet=False, nworkers=0)
            cfg = cluster.agent_config(self.spec, self.state, self.name, wd)
            cfg.update(workers=0, burst=burst, fdb_capacity=fdb_capacity, service_capacity=service_capacity,
                       conntrack_capacity=conntrack_capacity)
            macs = {n.underlay_ip: n.underlay_mac for n in self.state.nodes.values()}
            cfg["routes"] = [{**r, "vtep_mac": macs[r["vtep"]]} for r in cfg["routes"]]
            self.clock = clock or Clock()
            self.agent = Agent(cfg, clock=self.clock)
            self.agent.configure(uplink_vnet_len=0, tunnel_gso=False)
            self.dp = self.agent.dp
            pods = {p.name: (p.ip, dict(p.labels)) for p in self.state.pods.values()}
            store = ServiceStore(pods=pods, service_cidr=str(self.spec.service_cidr))
            store.apply(cluster.spec_services(self.spec, plan))
            self.service_entries = store.resolve()
            if self.service_entries:
                self.agent.services_apply(self.service_entries, [])
        finally:
            if tmp is not None:
                tmp.cleanup()
        self.uplink_port = UPLINK_PORT
        self.backend = self.spec.backend
        self.vni = self.spec.vni
        self._ports = {p.name: p.port for p in self.state.pods_on(self.name)}
        self._names = {**{v: k for k, v in self._ports.items()}, UPLINK_PORT: UPLINK}
        self._queues = {}
        self.uplink = MemoryPort(self, UPLINK_PORT, UPLINK, self.spec.mtu)

    def __repr__(self):
        return f"<MemoryNode {self.name} ({self.backend}, {len(self._ports)} pods)>"

    def _queue(self, port):
        return self._queues.setdefault(port, [])

    def info(self, name=None):
        """NodeInfo of this node, or of another node of the spec."""
        n = self.state.nodes.get(name or self.name)
        if n is None:
            raise PodnetTestError(f"no node {name!r} in the spec; its nodes: {', '.join(self.state.nodes)}")
        return NodeInfo(n.name, n.index, n.subnet, n.gateway_ip, n.gateway_mac, n.underlay_ip, n.underlay_mac)

    @property
    def pods(self):
        """The names of this node's pods."""
        return list(self._ports)

    def pod(self, name):
        """The MemoryPod called name (a pod of this node, or of another node
        of the spec: then only its addresses are of use)."""
        rec = self.state.pods.get(name)
        if rec is None:
            raise PodnetTestError(f"no pod {name!r} in the spec; its pods: {', '.join(self.state.pods) or 'none'}")
        return MemoryPod(self, rec, self.state.nodes[rec.node].gateway_mac, rec.node == self.name)

    def port_of(self, port_or_name):
        """The port number of a pod's name, "uplink" or a port number of
        this node; PodnetTestError naming what there is otherwise."""
        if isinstance(port_or_name, int) and not isinstance(port_or_name, bool):
            if port_or_name not in self._names:
                raise PodnetTestError(f"node {self.name} has no port {port_or_name}; its ports: "
                                      + ", ".join(f"{p} ({n})" for p, n in sorted(self._names.items())))
            return port_or_name
        if port_or_name == UPLINK:
            return self.uplink_port
        port = self._ports.get(port_or_name)
        if port is None:
            where = self.state.pods.get(port_or_name)
            raise PodnetTestError(
                f"pod {port_or_name!r} is on node {where.node}, not {self.name}" if where else
                f"no pod or port {port_or_name!r} on node {self.name}; its pods: {', '.join(self._ports) or 'none'}"
                f", and {UPLINK!r}")
        return port

    def send(self, port_or_name, pkts):
        """Run frames through the fast path as if they arrived on a port (a
        pod's name, "uplink" or a port number). Returns the frames put out,
        per port name ({"web-b": [Ether, ...], "uplink": [...]}, ports with
        none left out); they are also kept for that port's capture/sniff."""
        port = self.port_of(port_or_name)
        mtu = self.spec.mtu if port == self.uplink_port else self.spec.pod_mtu
        frames = Endpoint.check_frames(_MTU(port_or_name, mtu), pkts)
        out = {}
        for p, b in self._process(port, frames):
            out.setdefault(self._names.get(p, str(p)), []).append(_ether(b))
        return out

    def _process(self, port, frames):
        res = self.dp.process(frames, port)
        for p, b in res:
            self._queue(p).append(b)
        return res

    def counters(self):
        """The fast path's counters, as the agent's `counters` request gives them."""
        return self.dp.counters()

    def drops(self):
        """The drop counters that are not zero, by reason."""
        return {k: v for k, v in self.dp.counters()["drops"].items() if v}

    def close(self):
        """Stop the in-memory agent's loop object (no threads ran)."""
        self.agent.io.stop()


@dataclass
class _MTU:
    name: str
    mtu: int


# ---- send and expect ------------------------------------------------------------------

class _Matcher:
    """Which captured frames carry which sent packet's marker, kept up to
    date as frames arrive (each frame's bytes scanned once)."""

    def __init__(self, marks):
        self.wanted = set(marks)
        self.by = {}                   # marker -> indices of the frames carrying it
        self.others = []               # indices of frames carrying none of them
        self.seen = 0

    def update(self, raw):
        for k in range(self.seen, len(raw)):
            hit = [m for m in MARKER_RE.findall(raw[k]) if m in self.wanted]
            if hit:
                self.by.setdefault(hit[0], []).append(k)
            else:
                self.others.append(k)
        self.seen = len(raw)
        return self

    def frames_by(self, frames):
        return {m: [frames[k] for k in ks] for m, ks in self.by.items()}

    def marked(self):
        return sorted(k for ks in self.by.values() for k in ks)


def _send_capturing(src, pkts, dst, done, timeout, filter):
    pkts = _packets(pkts)
    if not pkts:
        raise PodnetTestError("no packets to send")
    sent, marks = zip(*(mark(p) for p in pkts))
    frames = src.check_frames(sent)                   # before the capture: nothing sent if one is too long
    match = _Matcher(marks)
    with dst.capture(filter) as cap:
        src._transmit(frames)
        got = cap.wait(lambda raw: done(match.update(raw)), timeout)
    match.update(cap.raw)
    return list(sent), list(marks), got, match


def send_and_expect(src, pkts, dst, count=None, timeout=DEFAULT_TIMEOUT, filter=None):
    """Send pkts from src (a Pod, an uplink, a MemoryPod or MemoryPort) and
    expect them at dst: returns the frames (scapy) that arrived carrying the
    sent packets' markers (a packet without one gets one: see mark()).

    count None: every packet must arrive exactly once, and the frames are
    returned in the order the packets were sent. count n: n marked frames
    must arrive (one packet may arrive several times, some not at all), in
    arrival order. Waits up to timeout s, returning as soon as that many
    are in. filter (BPF text or a callable) narrows what dst captures.
    Fails with an AssertionError listing each packet sent, what it arrived
    as (with the fields that changed) or that it did not, and what else
    arrived."""
    n = len(_packets(pkts))
    if count is None:
        done = lambda m: len(m.by) == n                        # noqa: E731
    else:
        done = lambda m: sum(map(len, m.by.values())) >= count  # noqa: E731
    sent, marks, frames, match = _send_capturing(src, pkts, dst, done, timeout, filter)
    by = match.frames_by(frames)
    others = [frames[k] for k in match.others]
    title = f"send_and_expect {_name(src)} -> {_name(dst)}: "
    if count is None:
        missing = [m for m in marks if m not in by]
        twice = [m for m in marks if len(by.get(m, ())) > 1]
        if missing or twice:
            what = []
            if missing:
                what.append(f"{len(missing)} of {len(sent)} packets did not arrive within {timeout} s")
            if twice:
                what.append(f"{len(twice)} arrived more than once")
            raise AssertionError(_report(title + "; ".join(what), sent, marks, frames, by, others))
        return [by[m][0] for m in marks]
    got = [frames[k] for k in match.marked()]
    if len(got) != count:
        raise AssertionError(_report(title + f"expected {count} marked frames, {len(got)} arrived within {timeout} s",
                                     sent, marks, frames, by, others))
    return got


def send_and_assert_no_reply(src, pkts, dst, timeout=NO_REPLY_TIMEOUT, filter=None):
    """Send pkts from src and assert that nothing carrying their markers
    arrives at dst within timeout s (a drop, a filter, an ACL). Fails with
    the same report as send_and_expect, listing what did arrive."""
    sent, marks, frames, match = _send_capturing(src, pkts, dst, lambda m: bool(m.by), timeout, filter)
    if match.by:
        raise AssertionError(_report(f"send_and_assert_no_reply {_name(src)} -> {_name(dst)}: "
                                     f"{len(match.by)} of {len(sent)} packets arrived", sent, marks, frames,
                                     match.frames_by(frames), [frames[k] for k in match.others]))


def _name(ep):
    return getattr(ep, "name", repr(ep))


# ---- checking encapsulated and routed frames ----------------------------------------

class _Checks:
    """Collects every mismatch of a frame, then fails once with all of them."""

    def __init__(self, what, frame):
        self.what, self.frame, self.problems = what, frame, []

    def eq(self, field, got, want):
        if want is not None and got != want:
            self.problems.append(f"{field}: {got!r}, expected {want!r}")

    def true(self, cond, msg):
        if not cond:
            self.problems.append(msg)

    def done(self):
        if self.problems:
            n = len(self.problems)
            raise AssertionError(f"{self.what}: {n} field{'s' if n > 1 else ''} wrong in {describe(self.frame)}\n"
                                 + "\n".join(f"  {p}" for p in self.problems))


def _addr(x, attr_ip="underlay_ip", attr_mac="underlay_mac"):
    """(ip, mac) of a node object (underlay) or an IP string (MAC unknown)."""
    if x is None:
        return None, None
    if isinstance(x, str):
        return x, None
    return getattr(x, attr_ip), getattr(x, attr_mac)


def _ip_checksum_ok(hdr):
    s = sum(int.from_bytes(hdr[k:k + 2], "big") for k in range(0, len(hdr), 2))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return s == 0xffff


def _outer_ip(c, e, raw, src, dst, proto, ttl):
    from scapy.layers.inet import IP
    s_ip, s_mac = _addr(src)
    d_ip, d_mac = _addr(dst)
    c.eq("Ether.src", e.src, s_mac)
    c.eq("Ether.dst", e.dst, d_mac)
    c.eq("Ether.type", e.type, 0x0800)
    if IP not in e:
        c.problems.append("no IPv4 header")
        c.done()
    ip = e[IP]
    c.eq("IP.version", ip.version, 4)
    c.eq("IP.ihl", ip.ihl, 5)
    c.eq("IP.proto", ip.proto, proto)
    c.eq("IP.src", ip.src, s_ip)
    c.eq("IP.dst", ip.dst, d_ip)
    c.eq("IP.flags", int(ip.flags), 2)                       # DF
    c.eq("IP.frag", ip.frag, 0)
    c.eq("IP.ttl", ip.ttl, ttl)
    c.eq("IP.len", ip.len, len(raw) - ETH_HLEN)
    c.true(_ip_checksum_ok(raw[14:34]), f"IP.chksum: {ip.chksum:#06x} is not the header's checksum")
    return ip


def expect_vxlan(frame, src=None, dst=None, *, vni=1, dport=4789, inner=None, ttl=64,
                 sport_range=(49152, 65535)):
    """Check every outer field of a VXLAN frame (RFC 7348) as podnet writes
    it and return the inner Ethernet frame (scapy). src, dst: the sending
    and receiving nodes (NodeInfo / Node: underlay IP and MAC) or their
    underlay IPs. Checked: Ethernet addresses and type; IPv4 version, IHL,
    protocol 17, addresses, DF, no fragment, TTL (ttl, None: any), total
    length, header checksum; UDP destination port, source port within
    sport_range (None: any; Linux's vxlan uses 32768-60999), length,
    checksum 0 (or correct); VXLAN flags (only I) and reserved bits zero, the
    VNI; the inner frame byte for byte when inner (scapy or bytes) is given.
    Every mismatch is listed in one AssertionError."""
    from scapy.layers.inet import UDP
    from scapy.layers.vxlan import VXLAN
    raw = _bytes(frame)
    e = _ether(raw)
    c = _Checks("expect_vxlan", e)
    ip = _outer_ip(c, e, raw, src, dst, 17, ttl)
    if UDP not in ip:
        c.problems.append("no UDP header")
        c.done()
    u = ip[UDP]
    c.eq("UDP.dport", u.dport, dport)
    if sport_range:
        c.true(sport_range[0] <= u.sport <= sport_range[1], f"UDP.sport: {u.sport}, expected {sport_range[0]}-{sport_range[1]}")
    c.eq("UDP.len", u.len, ip.len - 20)
    if u.chksum:
        q = ip.copy()
        del q[UDP].chksum
        c.eq("UDP.chksum", u.chksum, q.__class__(bytes(q))[UDP].chksum)
    hdr = raw[42:50]
    c.true(len(hdr) == 8, "no VXLAN header")
    if len(hdr) == 8:
        c.eq("VXLAN.flags", hdr[0], 0x08)
        c.eq("VXLAN.reserved", hdr[1:4] + hdr[7:8], b"\0\0\0\0")
        c.eq("VXLAN.vni", int.from_bytes(hdr[4:7], "big"), vni)
    inner_frame = _ether(raw[50:])
    if inner is not None and raw[50:] != _bytes(inner):
        c.problems.append("inner frame differs from the one expected:\n    "
                          + "\n    ".join(diff(inner, inner_frame) or ["(bytes differ beyond the fields)"]))
    c.done()
    return inner_frame


def expect_ipip(frame, src=None, dst=None, *, inner=None, ttl="inherit", ecn="copy"):
    """Check every outer field of an IP-in-IP frame (RFC 2003) as podnet
    writes it and return the inner IPv4 packet (scapy). src, dst as for
    expect_vxlan. Checked: Ethernet addresses and type; IPv4 version, IHL,
    protocol 4, addresses, DF, no fragment, total length, header checksum;
    DSCP 0; ECN copied from the inner header (RFC 6040 normal mode; ecn=None:
    any); TTL that of the inner packet (ttl="inherit", as Linux's ipip
    `ttl inherit`; a number: that; None: any); the inner packet byte for byte
    when inner is given. Every mismatch is listed in one AssertionError."""
    from scapy.layers.inet import IP
    raw = _bytes(frame)
    e = _ether(raw)
    c = _Checks("expect_ipip", e)
    inner_raw = raw[34:]
    inner_ip = IP(inner_raw) if len(inner_raw) >= 20 else None
    want_ttl = (inner_ip.ttl if inner_ip is not None else None) if ttl == "inherit" else ttl
    ip = _outer_ip(c, e, raw, src, dst, 4, want_ttl)
    c.eq("IP.dscp", ip.tos >> 2, 0)
    if ecn == "copy" and inner_ip is not None:
        c.eq("IP.ecn", ip.tos & 3, inner_ip.tos & 3)
    if inner_ip is None:
        c.problems.append("no inner IPv4 packet")
    elif inner is not None:
        want = _bytes(inner[IP] if hasattr(inner, "layers") and IP in inner else inner)
        if inner_raw != want:
            c.problems.append("inner packet differs from the one expected:\n    "
                              + "\n    ".join(diff_ip(want, inner_raw) or ["(bytes differ beyond the fields)"]))
    c.done()
    return inner_ip


def diff_ip(a, b):
    """diff() of two IPv4 packets (bytes or scapy) without Ethernet headers."""
    from scapy.layers.inet import IP
    from scapy.layers.l2 import Ether
    return diff(Ether() / IP(_bytes(a)), Ether() / IP(_bytes(b)))


def expect_routed(got, sent, *, src_mac=None, dst_mac=None, hops=1):
    """Check that got is sent's IPv4 packet after hops routers: Ethernet
    addresses rewritten to src_mac/dst_mac (when given), TTL hops lower, the
    header checksum correct for it, every other byte of the IP packet as
    sent. Returns got as a scapy Ether. One AssertionError lists every
    mismatch."""
    from scapy.layers.inet import IP
    g, s = _ether(got), _ether(sent)
    c = _Checks("expect_routed", g)
    c.eq("Ether.src", g.src, src_mac)
    c.eq("Ether.dst", g.dst, dst_mac)
    if IP not in g or IP not in s:
        c.problems.append("not an IPv4 packet")
        c.done()
    gi, si = _bytes(g[IP]), _bytes(s[IP])
    c.eq("IP.ttl", g[IP].ttl, s[IP].ttl - hops)
    c.true(_ip_checksum_ok(gi[:g[IP].ihl * 4]), f"IP.chksum: {g[IP].chksum:#06x} is not the header's checksum")
    if len(gi) != len(si) or gi[:8] != si[:8] or gi[9:10] != si[9:10] or gi[12:] != si[12:]:
        c.problems.append("the IP packet changed beyond TTL and checksum:\n    "
                          + "\n    ".join(d for d in diff_ip(si, gi) if not d.startswith(("IP.ttl", "IP.chksum")))
                          or "(bytes differ)")
    c.done()
    return g


# ---- pytest fixtures ------------------------------------------------------------------

try:
    import pytest
except ImportError:                      # the helpers work without pytest; the fixtures need it
    pytest = None

if pytest is not None:
    @pytest.fixture
    def podnet_cluster(tmp_path_factory):
        """Factory: podnet_cluster(spec=None, **kw) brings a live Cluster up
        (spec: dict, YAML text, path; None: the embedded default; kw: vnet,
        workers) and returns it; every cluster made is taken down after the
        test, also when it fails. Skips without root (fails under CI=true)."""
        made = []

        def make(spec=None, **kw):
            require_root()
            c = Cluster(spec, tmp_path_factory.mktemp("podnet"), **kw)     # SpecError: nothing made
            made.append(c)
            return c.up()
        yield make
        errors = []
        for c in reversed(made):
            try:
                c.down()
            except Exception as e:          # every cluster is taken down, the first error reported
                errors.append(e)
        if errors:
            raise errors[0]

    @pytest.fixture
    def podnet_node(tmp_path_factory):
        """Factory: podnet_node(spec=None, node=None, **kw) returns a
        MemoryNode (node: its name, default the spec's first node; kw:
        clock, table capacities, burst). No root needed."""
        made = []

        def make(spec=None, node=None, **kw):
            n = MemoryNode(spec, node, workdir=tmp_path_factory.mktemp("podnet-node"), **kw)
            made.append(n)
            return n
        yield make
        for n in made:
            n.close()
