"""`podnet capture` against the real Agent, in this process, without
namespaces: its pod port and its uplink are socketpairs (frame boundaries
kept, as on a TAP), its control socket is real, and its clock is injected.

What docs/architecture.md states: the agent copies the frames crossing one port (a pod,
a number or `uplink`) into a 4 MB buffer; frames that do not fit are counted
lost and never block forwarding; a capture nobody reads for 5 s stops by
itself; --snaplen cuts what is kept; the CLI writes a nanosecond pcap and
says how many frames were lost."""
import functools
import json
import os
import struct
import threading
import time

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import RawPcapReader

from agent_harness import AgentNode
from conftest import Clock
from dataplane import capture, cli
from dataplane.agent import CAPTURE_IDLE, UPLINK_DOMAIN, UPLINK_PORT
from dataplane.control import request

POD = {"name": "c1", "netns": "-", "ip": "10.244.0.2", "mac": "0a:58:0a:f4:00:02"}


def frame(seq, size):
    """A UDP frame of size bytes from the pod, seq in its payload. scapy builds
    it; thousands are needed, so seq is patched into a copy of one (the UDP
    checksum is left 0: nothing here checks it)."""
    return _template(size)[:OFF] + b"s%06d" % seq + _template(size)[OFF + 7:]


OFF = 14 + 20 + 8                                            # Ethernet, IP, UDP


@functools.lru_cache(maxsize=None)
def _template(size):
    f = Ether(src=POD["mac"], dst="02:00:00:00:00:77") / IP(src=POD["ip"], dst="10.244.0.9") / \
        UDP(sport=1, dport=2, chksum=0) / (b"s%06d" % 0)
    return bytes(f / (b"\x00" * (size - len(f))))


def seq_of(raw):
    assert raw[OFF:OFF + 1] == b"s", raw[:OFF + 8]
    return int(raw[OFF + 1:OFF + 7])


class Node(AgentNode):
    def __init__(self, tmp_path, clock):
        # no worker threads: round() forwards inline, so a round has read what
        # was sent before it (with a worker, the count raced the worker)
        super().__init__(tmp_path, clock, workers=0)
        self.attach(0, pod=POD)
        self.attach(UPLINK_PORT, domain=UPLINK_DOMAIN, uplink=True)
        self.wake_r, self.wake_w = os.pipe()
        os.write(self.wake_w, b"x")

    def round(self):
        """One burst of the I/O loop (the test drives it; no thread)."""
        self.agent.io.watch(self.wake_r)
        try:
            assert self.agent.io.poll(1000) == [self.wake_r]
        finally:
            self.agent.io.unwatch(self.wake_r)

    def one_loop_iteration(self):
        """Agent.run() for exactly one pass: its poll, then its housekeeping
        (the idle-capture check among it) at the injected clock's time."""
        agent, io = self.agent, self.agent.io

        class Once:
            def __getattr__(self, name):
                return getattr(io, name)

            def poll(self, timeout_ms):
                agent.stop = True
                return io.poll(0)
        agent.io, agent.stop = Once(), False
        try:
            agent.run()
        finally:
            agent.io = io

    def close(self):
        super().close()
        os.close(self.wake_r)
        os.close(self.wake_w)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def node(tmp_path, clock):
    n = Node(tmp_path, clock)
    yield n
    n.close()


def test_the_agents_capture_buffer_is_4_mb_and_what_does_not_fit_is_lost(node):
    """1000-byte frames take 1024 bytes each in the buffer (24-byte record
    header, 8-byte aligned): 4 MB holds 4096 of them; 4 more are lost."""
    a = node.agent
    info = a.handle("capture_start", {"port": 0})
    assert info["running"] and info["ports"] == [0]
    for first in range(0, 4100, 50):
        for s in range(first, min(first + 50, 4100)):
            node.peer[0].send(frame(s, 1000))
        node.round()
    assert a.io.counters()["frames"] == 4100                 # all read: capturing never held one back
    r = a.handle("capture_read", {})
    assert r["lost"] == 4 and len(r["frames"]) == 4096
    assert [seq_of(bytes.fromhex(f["data"])) for f in r["frames"]] == list(range(4096))
    assert {(f["port"], f["dir"], f["len"]) for f in r["frames"]} == {(0, "rx", 1000)}
    assert bytes.fromhex(r["frames"][7]["data"]) == frame(7, 1000)
    assert a.handle("capture_stop", {})["lost"] == 4


def test_a_capture_nobody_reads_for_5_s_stops_by_itself(node, clock):
    a = node.agent
    assert CAPTURE_IDLE == 5.0
    a.handle("capture_start", {"port": 0})
    clock.advance(4.9)
    node.one_loop_iteration()
    assert a.io.capture_info()["running"]
    a.handle("capture_read", {})                             # read at 4.9 s: idle from here
    clock.advance(4.9)
    node.one_loop_iteration()
    assert a.io.capture_info()["running"]                    # 9.8 s since start, 4.9 since the read
    clock.advance(0.2)
    node.one_loop_iteration()
    assert a.io.capture_info()["running"] is False           # 5.1 s unread: stopped, its buffer freed
    with pytest.raises(ValueError, match="no capture is running on node n1"):
        a.handle("capture_read", {})
    a.handle("capture_start", {"port": 0})                   # and the node takes a new one
    assert a.io.capture_info()["running"]


def test_snaplen_and_the_uplink_port(node):
    a = node.agent
    with pytest.raises(ValueError, match=r"port must be one of \[0, 255\], got 7"):
        a.handle("capture_start", {"port": 7})
    a.handle("capture_start", {"port": UPLINK_PORT, "snaplen": 64})
    node.peer[UPLINK_PORT].send(frame(1, 500))               # into the uplink
    node.peer[0].send(frame(2, 300))                         # a pod's frame: another port
    node.round()
    [f] = a.handle("capture_read", {})["frames"]
    assert (f["port"], f["dir"], f["len"]) == (UPLINK_PORT, "rx", 500)
    assert bytes.fromhex(f["data"]) == frame(1, 500)[:64]


def write_state(tmp_path, monkeypatch, node):
    run = tmp_path / "run"
    run.mkdir()
    from dataplane import state
    n1 = state.NodeState("n1", 0, "10.244.0.0/24", "10.244.0.1", "0a:58:0a:f4:00:01", "-", socket=node.socket)
    state.save(run / "state.json", state.ClusterState("pncapmem", "<test>", {}, {"n1": n1}, {}, {}, [], {},
                                                      1, 4789, 1450))
    monkeypatch.setenv("PODNET_RUN_DIR", str(run))


def wait_running(node, want=True):
    for _ in range(500):                                     # bounded: 10 s
        if request(node.socket, "counters")["capture"]["running"] is want:
            return
        time.sleep(0.02)
    raise AssertionError("capture state never became %s" % want)


def pcap_records(path):
    with open(path, "rb") as fh:
        magic, _, _, _, _, snaplen, linktype = struct.unpack("<IHHiIII", fh.read(24))
    return magic, snaplen, linktype, [(bytes(d), m.caplen, m.wirelen) for d, m in RawPcapReader(str(path))]


def test_cli_captures_the_uplink_cut_to_snaplen(node, tmp_path, monkeypatch, capsys):
    """`podnet capture n1 uplink -w F -c 3 --snaplen 64` against the agent's
    own loop: a nanosecond pcap whose records keep 64 bytes and the wire length."""
    write_state(tmp_path, monkeypatch, node)
    node.serve()
    path = tmp_path / "up.pcap"
    rc = []
    t = threading.Thread(target=lambda: rc.append(cli.main(
        ["capture", "n1", "uplink", "-w", str(path), "-c", "3", "--snaplen", "64", "--timeout", "20"])))
    t.start()
    wait_running(node)
    node.peer[0].send(frame(99, 200))                        # another port: not captured
    for s in range(4):
        node.peer[UPLINK_PORT].send(frame(s, 300 + s))
    t.join(30)
    assert not t.is_alive() and rc == [0]
    magic, snaplen, linktype, recs = pcap_records(path)
    assert (magic, snaplen, linktype) == (0xA1B23C4D, 64, 1)  # nanosecond pcap, Ethernet
    assert [(len(d), cap, wire) for d, cap, wire in recs] == [(64, 64, 300), (64, 64, 301), (64, 64, 302)]
    assert [d for d, _, _ in recs] == [frame(s, 300 + s)[:64] for s in range(3)]
    err = capsys.readouterr().err
    assert f"3 frames written to {path}" in err and "lost" not in err
    wait_running(node, False)                                # the CLI stopped it


def test_cli_reports_frames_lost_to_a_full_buffer(node, tmp_path, monkeypatch, capsys):
    """The CLI's first read is held back until 4100 frames of 1000 bytes
    crossed the pod's port: 4096 fit the 4 MB buffer, the CLI writes them and
    says 4 were lost."""
    write_state(tmp_path, monkeypatch, node)
    node.serve()
    gate = threading.Event()
    real = capture.request

    def held(path, op, **kw):
        if op == "capture_read":
            assert gate.wait(30)
        return real(path, op, **kw)
    monkeypatch.setattr(capture, "request", held)
    path = tmp_path / "lost.pcap"
    rc = []
    t = threading.Thread(target=lambda: rc.append(cli.main(
        ["capture", "n1", "c1", "-w", str(path), "-c", "4096", "--timeout", "30"])))
    t.start()
    wait_running(node)
    for s in range(4100):                                    # blocking sends: the agent's loop keeps up
        node.peer[0].send(frame(s, 1000))
    for _ in range(500):
        if request(node.socket, "counters")["capture"]["lost"] == 4:
            break
        time.sleep(0.02)
    gate.set()
    t.join(30)
    assert not t.is_alive() and rc == [0]
    recs = pcap_records(path)[3]
    assert [seq_of(d) for d, _, _ in recs] == list(range(4096))
    err = capsys.readouterr().err
    assert f"4096 frames written to {path}; 4 lost to a full capture buffer" in err


def test_ctrl_c_writes_what_the_agent_captured_since_the_last_read(node, tmp_path, monkeypatch):
    """Ctrl-C arrives while the CLI waits between reads, after 5 more frames
    crossed the port: they are in the pcap (they used to be dropped with the
    capture)."""
    write_state(tmp_path, monkeypatch, node)
    node.serve()
    real_sleep = time.sleep
    waits = []

    def interrupted(seconds):
        waits.append(seconds)
        if len(waits) == 1:                                   # after the first (empty) read
            for s in range(5):
                node.peer[0].send(frame(s, 200))
            for _ in range(500):
                if request(node.socket, "counters")["capture"]["frames"] == 5:
                    break
                real_sleep(0.02)
            raise KeyboardInterrupt
        real_sleep(seconds)
    monkeypatch.setattr(capture.time, "sleep", interrupted)
    path = tmp_path / "int.pcap"
    assert capture.run("n1", "c1", str(path)) == (5, 0)
    assert [d for d, _, _ in pcap_records(path)[3]] == [frame(s, 200) for s in range(5)]
    assert request(node.socket, "counters")["capture"]["running"] is False
