"""The C I/O loop (fastpath/ioloop.pyx) on real fds: AF_UNIX SOCK_SEQPACKET
socketpairs keep frame boundaries as a TAP does, so one end is attached to a
port and the test reads and writes frames at the other (no root needed);
one test uses a real TAP in a namespace of its own (root).

poll() here mostly runs exactly one round (one epoll_wait, one burst): a
watched pipe is kept readable, and poll() returns after the first wakeup that
finds a watched fd ready. So assertions are about which frames come out of
which round and about counters, never about time. The cases where the loop
used to never return run in a child process with a bound, so a regression
fails instead of hanging the suite."""
import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from conftest import require_root
from fastpath import Dataplane
from fastpath.ioloop import IOLoop

TESTS = os.path.dirname(os.path.abspath(__file__))

OUT_MAC = "02:00:00:00:00:99"          # the station behind the output port (static FDB entry)


def mac(port):
    return f"02:00:00:00:01:{port:02x}"


def frame(port, seq, dst=OUT_MAC, size=0):
    """A UDP frame from port's station, its (port, seq) in the payload."""
    pay = b"p%03ds%05d" % (port, seq)
    f = Ether(src=mac(port), dst=dst) / IP(src="10.9.0.%d" % (port + 1), dst="10.9.0.200") / UDP(sport=1000 + port, dport=9) / pay
    if size:
        f = f / (b"\x00" * (size - len(f)))
    return bytes(f)


def tag(raw):
    """(port, seq) of a frame built by frame()."""
    pay = bytes(Ether(raw)[UDP].payload)
    return int(pay[1:4]), int(pay[5:10])


class Rig:
    """A Dataplane and an IOLoop whose ports are socketpairs."""

    def __init__(self, nslots=8, slot_size=2048):
        self.dp = Dataplane(nslots=nslots, slot_size=slot_size)
        self.io = IOLoop(self.dp)
        self.peer = {}                  # port -> the test's end
        self.loop_end = {}              # port -> the loop's end (kept open here)
        self.wake_r, self.wake_w = os.pipe()
        os.write(self.wake_w, b"x")     # never read: the watched fd stays ready
        self.io.watch(self.wake_r)

    def port(self, p, attach=True, vnet=0):
        self.dp.add_port(p)
        if vnet:
            self.dp.set_port_vnet(p, vnet)
        if attach:
            a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            b.setblocking(False)
            self.loop_end[p], self.peer[p] = a, b
            self.io.attach(p, a.fileno())
        return self.peer.get(p)

    def round(self):
        """One epoll wakeup, one burst."""
        before = self.io.counters()["wakeups"]
        assert self.io.poll(1000) == [self.wake_r]
        assert self.io.counters()["wakeups"] == before + 1

    def drain(self, p):
        out = []
        while True:
            try:
                out.append(self.peer[p].recv(70000))
            except BlockingIOError:
                return out

    def close(self):
        for p in list(self.loop_end):
            try:
                self.io.detach(p)
            except KeyError:
                pass
        for s in list(self.loop_end.values()) + list(self.peer.values()):
            s.close()
        self.io.unwatch(self.wake_r)
        os.close(self.wake_r)
        os.close(self.wake_w)


@pytest.fixture
def rig():
    made = []

    def make(**kw):
        r = Rig(**kw)
        made.append(r)
        return r
    yield make
    for r in made:
        r.close()


def port_counters(io, p):
    return {k: v for k, v in io.counters()["ports"][p].items() if k != "fd"}


ZERO = {"rx_errors": 0, "rx_truncated": 0, "tx_errors": 0, "tx_no_fd": 0}


# ---- fair sharing ---------------------------------------------------------

def test_ready_ports_share_each_burst_equally_and_in_turn(rig):
    """Three ports, each with more frames queued than a whole burst: every
    round takes the next nslots/3 frames of each port, so all three move
    together and none waits for another's backlog."""
    r = rig(nslots=6)
    ins = [1, 2, 3]
    for p in ins:
        r.port(p)
    r.port(9)
    r.dp.fdb.add_static(OUT_MAC, 9)
    per_port = 10                                          # > nslots: a port alone would fill bursts
    for p in ins:
        for s in range(per_port):
            r.peer[p].send(frame(p, s))
    out = []
    for k in range(per_port // 2):
        r.round()
        got = sorted(tag(f) for f in r.drain(9))
        # round k: frames 2k and 2k+1 of every port, nothing else
        assert got == sorted((p, s) for p in ins for s in (2 * k, 2 * k + 1)), (k, got)
        out += got
    assert len(out) == 3 * per_port
    c = r.io.counters()
    assert c["bursts"] == per_port // 2 and c["frames"] == 3 * per_port
    assert c["frames_per_burst"] == 6.0
    for p in ins + [9]:
        assert port_counters(r.io, p) == ZERO
    assert r.dp.counters()["ports"][9]["tx_packets"] == 3 * per_port


def test_a_port_with_one_frame_is_not_starved_by_a_backlog(rig):
    """Port 1 has 50 frames queued, port 2 has one: the first burst carries
    port 2's frame (a loop reading each port until EAGAIN would have filled
    the burst from port 1 and left it waiting)."""
    r = rig(nslots=8)
    r.port(1)
    r.port(2)
    r.port(9)
    r.dp.fdb.add_static(OUT_MAC, 9)
    for s in range(50):
        r.peer[1].send(frame(1, s))
    r.peer[2].send(frame(2, 0))
    r.round()
    got = [tag(f) for f in r.drain(9)]
    assert (2, 0) in got
    assert sorted(got) == [(1, 0), (1, 1), (1, 2), (1, 3), (2, 0)]   # share = 8 // 2 ready ports
    # port 1's frames leave in the order they came
    assert [s for p, s in got if p == 1] == [0, 1, 2, 3]
    r.round()
    assert [tag(f) for f in r.drain(9)] == [(1, s) for s in range(4, 12)]   # alone now: the whole burst


# ---- rx_truncated ------------------------------------------------------------

def test_a_frame_longer_than_the_slot_is_counted_rx_truncated_and_dropped(rig):
    r = rig(nslots=8, slot_size=256)
    r.port(1)
    r.port(9)
    r.dp.fdb.add_static(OUT_MAC, 9)
    r.peer[1].send(frame(1, 0, size=255))        # fits
    r.peer[1].send(frame(1, 1, size=256))        # exactly the slot: read() cannot tell it was not cut
    r.peer[1].send(frame(1, 2, size=1000))       # cut by read()
    r.peer[1].send(frame(1, 3, size=100))        # fits: the loop goes on after a truncated frame
    r.round()
    out = r.drain(9)
    assert [tag(f) for f in out] == [(1, 0), (1, 3)]
    assert [len(f) for f in out] == [255, 100]
    assert port_counters(r.io, 1) == dict(ZERO, rx_truncated=2)
    assert r.dp.counters()["ports"][1]["rx_packets"] == 2     # the fast path never saw the cut ones


def test_rx_truncated_counts_with_a_vnet_header(rig):
    """The slot holds slot_size bytes of frame after the port's vnet header."""
    r = rig(nslots=8, slot_size=256)
    r.port(1, vnet=12)
    r.port(9)
    r.dp.fdb.add_static(OUT_MAC, 9)
    r.peer[1].send(bytes(12) + frame(1, 0, size=255))
    r.peer[1].send(bytes(12) + frame(1, 1, size=256))
    r.round()
    assert [tag(f) for f in r.drain(9)] == [(1, 0)]
    assert port_counters(r.io, 1) == dict(ZERO, rx_truncated=1)


# ---- rx_errors ---------------------------------------------------------------

def test_a_failing_read_is_counted_rx_errors(rig):
    """read() fails with ECONNRESET once the other end closed with frames
    unread: one rx_error, and the other ready port is still served."""
    r = rig(nslots=8)
    r.port(1)
    r.port(2)
    r.port(9)
    r.dp.fdb.add_static(OUT_MAC, 9)
    r.loop_end[1].send(b"unread")                # into the peer's queue ...
    r.peer.pop(1).close()                        # ... which then closes: ECONNRESET on our end
    r.peer[2].send(frame(2, 0))
    r.round()
    assert port_counters(r.io, 1) == dict(ZERO, rx_errors=1)
    assert [tag(f) for f in r.drain(9)] == [(2, 0)]
    assert r.io.counters()["frames"] == 1


def test_a_read_shorter_than_the_vnet_header_is_counted_rx_errors(rig):
    r = rig(nslots=8)
    r.port(1, vnet=12)
    r.port(9)
    r.dp.fdb.add_static(OUT_MAC, 9)
    r.peer[1].send(b"short")                     # 5 bytes: no room for the 12-byte header
    r.peer[1].send(bytes(12) + frame(1, 1))
    r.round()
    assert port_counters(r.io, 1) == dict(ZERO, rx_errors=1)
    assert [tag(f) for f in r.drain(9)] == [(1, 1)]


def bounded(code, *args, timeout=30, netns=None):
    """Run code in a child Python and return what it prints (JSON): a loop
    that never returns must fail the test, not hang the suite."""
    cmd = [sys.executable, "-c", "import sys; sys.path.insert(0, %r)\n" % TESTS + textwrap.dedent(code), *args]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the I/O loop did not return within {timeout} s") from None
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_a_port_at_end_of_file_cannot_hold_the_loop():
    """A vnet port whose other end is gone reads 0 bytes forever. Each such
    read counts against the port's share of the burst, so the round ends
    (it used to retry without bound inside the C loop: poll() never returned)."""
    got = bounded("""
        import json
        from test_ioloop import OUT_MAC, Rig, frame, port_counters, tag
        r = Rig(nslots=8)
        r.port(1, vnet=12)
        r.port(2)
        r.port(9)
        r.dp.fdb.add_static(OUT_MAC, 9)
        r.peer.pop(1).close()                     # nothing unread: plain end of file
        r.peer[2].send(frame(2, 0))
        r.round()
        print(json.dumps([port_counters(r.io, 1), [tag(f) for f in r.drain(9)]]))
        """)
    assert got == [dict(ZERO, rx_errors=4), [[2, 0]]]      # its share: 8 // 2 ready ports


def test_poll_returns_at_its_deadline_while_a_port_stays_ready():
    """poll(timeout) with no watched fd ready returns once timeout passes even
    if a port never stops being ready (here: at end of file; under sustained
    traffic alike). It used to return only after an idle epoll_wait, so the
    agent's timers between polls (FDB aging, snapshots, the idle-capture
    stop) never ran while traffic kept coming."""
    got = bounded("""
        import json
        from test_ioloop import Rig, port_counters
        r = Rig(nslots=8)
        r.io.unwatch(r.wake_r)                    # nothing watched: only the deadline ends poll()
        r.port(1, vnet=12)
        r.peer.pop(1).close()
        ready = r.io.poll(50)
        print(json.dumps([ready, port_counters(r.io, 1), r.io.counters()["wakeups"]]))
        """)
    ready, c, wakeups = got
    assert ready == [] and wakeups >= 1
    assert c["rx_errors"] == 8 * wakeups and c["rx_truncated"] == c["tx_errors"] == c["tx_no_fd"] == 0


def test_a_tap_whose_link_is_down_or_gone_counts_tx_errors_and_rx_errors():
    """A real TAP in a namespace of this test's own: a frame forwarded to it
    while its link is down fails (EIO, tx_errors); once the interface is
    deleted every read fails (EBADFD, rx_errors) and epoll reports the fd
    for ever, yet poll() returns at its deadline."""
    require_root()
    ns = "pnioloop-tap"
    subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        got = bounded("""
            import json, subprocess
            from tap.device import Tap
            from test_ioloop import OUT_MAC, Rig, frame, port_counters
            r = Rig(nslots=8)
            r.dp.set_vnet_len(12)
            tap = Tap("pniotap0", vnet_hdr=True)
            r.dp.add_port(0)
            r.io.attach(0, tap.fileno())
            r.port(1)
            r.dp.fdb.add_static(OUT_MAC, 0)
            subprocess.run(["ip", "link", "set", "pniotap0", "up"], check=True)
            subprocess.run(["ip", "link", "set", "pniotap0", "down"], check=True)
            r.peer[1].send(bytes(12) + frame(1, 0))
            r.round()
            down = port_counters(r.io, 0)
            subprocess.run(["ip", "link", "del", "pniotap0"], check=True)
            r.io.unwatch(r.wake_r)
            ready = r.io.poll(50)
            print(json.dumps([down, ready, port_counters(r.io, 0)]))
            """, netns=ns)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=True)
    down, ready, gone = got
    assert down == dict(ZERO, tx_errors=1)
    assert ready == [] and gone["rx_errors"] >= 1 and gone["tx_errors"] == 1


# ---- tx_errors, tx_no_fd -----------------------------------------------------

def test_a_failing_write_is_counted_tx_errors_and_the_rest_still_leave(rig):
    """The output socket is full (its reader stopped): every write of the
    burst to it fails (EAGAIN on the non-blocking fd) and is counted; frames
    for another port in the same burst are written."""
    r = rig(nslots=8)
    r.port(1)
    r.port(8)
    r.port(9)
    r.dp.fdb.add_static(OUT_MAC, 9)
    r.dp.fdb.add_static("02:00:00:00:00:88", 8)
    full = r.loop_end[9]
    full.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    full.setblocking(False)
    filled = 0
    with pytest.raises(BlockingIOError):
        for filled in range(10000):
            full.send(b"f" * 100)
    assert filled > 0
    for s in range(3):
        r.peer[1].send(frame(1, s))
    r.peer[1].send(frame(1, 3, dst="02:00:00:00:00:88"))
    r.round()
    assert port_counters(r.io, 9) == dict(ZERO, tx_errors=3)
    assert [tag(f) for f in r.drain(8)] == [(1, 3)]
    assert len(r.drain(9)) == filled                    # only the filler: none of the 3 got in
    assert port_counters(r.io, 8) == ZERO


def test_a_write_to_a_peer_that_stopped_reading_is_counted_tx_errors(rig):
    """The other end shut its reading side: write() fails with EPIPE (Python
    ignores SIGPIPE, as the agent does), each frame counted once."""
    r = rig(nslots=8)
    r.port(1)
    r.port(9)
    r.dp.fdb.add_static(OUT_MAC, 9)
    r.peer[9].shutdown(socket.SHUT_RD)
    r.peer[1].send(frame(1, 0))
    r.peer[1].send(frame(1, 1))
    r.round()
    assert port_counters(r.io, 9) == dict(ZERO, tx_errors=2)
    assert r.dp.counters()["ports"][9]["tx_packets"] == 2     # the fast path sent them; the write failed


def test_a_frame_for_a_port_without_an_fd_is_counted_tx_no_fd(rig):
    """Port 5 is in the bridge but has no fd: a broadcast floods to it (and
    to port 2, which gets it); the copy for port 5 is counted tx_no_fd."""
    r = rig(nslots=8)
    r.port(1)
    r.port(2)
    r.port(5, attach=False)
    r.dp.fdb.add_static(OUT_MAC, 5)
    r.peer[1].send(frame(1, 0, dst="ff:ff:ff:ff:ff:ff"))
    r.peer[1].send(frame(1, 1))                          # unicast to the station behind port 5
    r.round()
    assert [tag(f) for f in r.drain(2)] == [(1, 0)]
    assert r.io.counters()["ports"][5] == {"fd": -1, **dict(ZERO, tx_no_fd=2)}
    assert port_counters(r.io, 2) == ZERO


# ---- capture -----------------------------------------------------------------

def test_capture_copies_both_directions_and_cuts_to_snaplen(rig):
    r = rig(nslots=8)
    r.port(1)
    r.port(9)
    r.dp.fdb.add_static(OUT_MAC, 9)
    r.dp.fdb.add_static(mac(1), 1)
    r.io.capture_start([1], bufsize=65536, snaplen=64)
    r.peer[1].send(frame(1, 0, size=300))                # rx on port 1
    r.peer[9].send(frame(9, 0, dst=mac(1), size=200))    # tx to port 1
    r.round()
    assert [tag(f) for f in r.drain(9)] == [(1, 0)]
    assert [tag(f) for f in r.drain(1)] == [(9, 0)]
    recs = r.io.capture_read()
    assert [(p, d, n, len(b)) for _, p, d, n, b in recs] == [(1, 0, 300, 64), (1, 1, 200, 64)]
    assert recs[0][4] == frame(1, 0, size=300)[:64]
    assert recs[1][4] == frame(9, 0, dst=mac(1), size=200)[:64]
    assert r.io.capture_read() == []                     # drained
    info = r.io.capture_info()
    assert info["running"] and info["ports"] == [1] and info["frames"] == 2 and info["lost"] == 0
    r.io.capture_stop()
    assert r.io.capture_info()["running"] is False


def test_frames_that_do_not_fit_the_capture_buffer_are_lost_not_blocked(rig):
    """A 64 KB buffer holds 64 records of a 1000-byte frame (24-byte record
    header, 8-byte aligned: 1024 bytes each); nobody drains it: the rest are
    counted lost, and every frame is still forwarded."""
    r = rig(nslots=8)
    r.port(1)
    r.port(9)
    r.dp.fdb.add_static(OUT_MAC, 9)
    r.io.capture_start([1], bufsize=65536)
    sent = 0
    forwarded = []
    while sent < 80:
        for s in range(sent, sent + 8):
            r.peer[1].send(frame(1, s, size=1000))
        sent += 8
        r.round()
        forwarded += [tag(f)[1] for f in r.drain(9)]
    assert forwarded == list(range(80))
    info = r.io.capture_info()
    assert (info["frames"], info["lost"], info["buffered_bytes"]) == (64, 16, 65536)
    recs = r.io.capture_read()
    assert [tag(b)[1] for _, _, _, _, b in recs] == list(range(64))      # the first ones, whole
    # drained: room again, and the lost count stays (it is the capture's total)
    r.peer[1].send(frame(1, 80, size=1000))
    r.round()
    assert [tag(b)[1] for _, _, _, _, b in r.io.capture_read()] == [80]
    assert r.io.capture_info()["lost"] == 16
