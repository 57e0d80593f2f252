"""The control socket never blocks the agent's forwarding loop (issue 13).

Against the real ControlServer driven by hand, and against the real Agent
serving its real control socket from its own loop in a thread, its pod ports
socketpairs (frame boundaries kept, as on a TAP) and its clock injected:
clients that send requests and never read their replies leave the loop
forwarding frames and answering others; their replies wait whole in the
server until they read them, or they are disconnected and counted once they
took nothing for STALL_TIMEOUT seconds of the agent's clock; a slow reader
gets a large reply intact; a client that goes away mid-reply is cleaned up;
pipelined requests are answered in order, one at a time."""
import fcntl
import json
import socket
import struct
import termios
import time

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether

from agent_harness import GW, AgentNode
from conftest import Clock
from dataplane import control, ctdump
from dataplane.control import STALL_TIMEOUT, ControlServer, Stream, request
from fastpath import Dataplane
from fastpath.ioloop import IOLoop

A = ("10.244.0.2", "0a:58:0a:f4:00:02", 0)       # a client pod on port 0
B = ("10.244.0.3", "0a:58:0a:f4:00:03", 1)       # a backend pod on port 1
VIP = "10.96.0.10"


def wait_for(what, cond, timeout=20.0):
    """Until cond() is true, bounded in time (the agent's loop runs in a thread)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


def read_line(sock, chunk=65536, timeout=20.0):
    """One reply line, read chunk bytes at a time."""
    sock.settimeout(timeout)
    buf = bytearray()
    while not buf.endswith(b"\n"):
        data = sock.recv(chunk)
        assert data, f"closed after {len(buf)} bytes"
        buf += data
    return json.loads(buf)


def read_to_eof(sock, timeout=20.0):
    sock.settimeout(timeout)
    buf = bytearray()
    while data := sock.recv(65536):
        buf += data
    return bytes(buf)


def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(path))
    return s


# ---- the server by hand ----------------------------------------------------

BIG = list(range(300000))          # ~2 MB of JSON: more than a Unix socket buffers


class Server:
    """A ControlServer on an injected clock, with one connected client; the
    test turns the loop's crank (ready, tick)."""

    def __init__(self, tmp_path, handler):
        self.clock = Clock()
        self.interest = {}
        self.srv = ControlServer(tmp_path / "ctl.sock", handler, clock=self.clock,
                                 interest=lambda fd, r, w: self.interest.__setitem__(fd, (r, w)))
        self.client = connect(tmp_path / "ctl.sock")
        [self.fd], _ = self.srv.ready(self.srv.sock.fileno())

    def crank(self):
        """One readiness of the client's fd; True if the server dropped it."""
        return self.srv.ready(self.fd)[1] == [self.fd]

    def exchange_all(self, nlines, chunk=65536, max_rounds=100000):
        """Turn the crank and read (non-blocking) until nlines replies came."""
        self.client.setblocking(False)
        buf = bytearray()
        for _ in range(max_rounds):
            if buf.count(b"\n") >= nlines:
                return [json.loads(line) for line in buf.splitlines()]
            assert not self.crank()
            try:
                while data := self.client.recv(chunk):
                    buf += data
            except BlockingIOError:
                pass
        raise AssertionError("%d of %d replies" % (buf.count(b"\n"), nlines))

    def close(self):
        self.client.close()
        self.srv.close()


@pytest.fixture
def server(tmp_path):
    calls = []

    def handler(op, args):
        calls.append((op, args.get("i")))
        if op == "echo":
            return args
        if op == "big":
            return BIG
        if op == "lazy":
            return Stream({"row": i} for i in range(args["n"]))
        if op == "huge-string":
            return "x" * args["n"]
        if op == "broken-stream":
            def rows():
                yield from range(args["n"])
                raise RuntimeError("table vanished")
            return Stream(rows())
        raise ValueError("unknown operation")
    s = Server(tmp_path, handler)
    s.calls = calls
    yield s
    s.close()


def test_pieces_join_to_what_json_dumps_writes():
    import datetime
    values = [BIG[:5], BIG[:100], {"a": BIG[:50], 3: None, None: [1], 2.5: {"x": (1, 2)}}, "x",
              [{"k": list(range(40))}] * 30, (1,) * 20, datetime.date(2024, 1, 2), []]
    for v in values:
        assert "".join(control.pieces(v)) == json.dumps(v, default=str)
    assert "".join(control.pieces(Stream(iter(BIG[:1000])))) == json.dumps(BIG[:1000])
    assert "".join(control.pieces(Stream(iter([])))) == "[]"


def test_a_reply_the_socket_cannot_take_waits_and_later_requests_wait_behind_it(server):
    """One crank writes what the socket takes of a 2 MB reply and stops: the
    request pipelined behind it is not handled (not even read) until the
    reply is out; the fd then waits for writability only."""
    server.client.sendall(b'{"op": "big"}\n{"op": "echo", "i": 1}\n')
    assert not server.crank()
    assert server.calls == [("big", None)]
    assert server.interest[server.fd] == (False, True)
    c = server.srv.counters()
    assert (c["clients"], c["clients_pending"], c["requests"]) == (1, 1, 1)
    assert 0 < c["reply_bytes"] < len(json.dumps(BIG))
    replies = server.exchange_all(2)
    assert replies == [{"ok": True, "result": BIG}, {"ok": True, "result": {"i": 1}}]
    assert server.calls == [("big", None), ("echo", 1)]
    assert server.interest[server.fd] == (True, False)          # idle: back to reading
    c = server.srv.counters()
    assert (c["clients_pending"], c["requests"], c["errors"], c["slow_clients_dropped"]) == (0, 2, 0, 0)


def test_many_pipelined_requests_are_answered_in_order(server):
    """300 requests in one write, large and small mixed, read in small pieces."""
    reqs, want = [], []
    for i in range(300):
        if i % 100 == 50:
            reqs.append({"op": "big"})
            want.append({"ok": True, "result": BIG})
        elif i % 7 == 3:
            reqs.append({"op": "nope", "i": i})
            want.append({"ok": False, "error": "nope: unknown operation"})
        else:
            reqs.append({"op": "echo", "i": i})
            want.append({"ok": True, "result": {"i": i}})
    server.client.sendall(b"".join(json.dumps(r).encode() + b"\n" for r in reqs))
    assert server.exchange_all(300, chunk=4096) == want
    c = server.srv.counters()
    assert (c["requests"], c["errors"]) == (300, sum(1 for w in want if not w["ok"]))


def test_a_lazy_result_is_pulled_as_the_socket_drains(server):
    """A Stream of 200k rows: one crank encodes only about what the socket
    took (plus PIECE), never the whole reply."""
    pulled = []

    def rows():
        for i in range(200000):
            pulled.append(i)
            yield {"row": i}
    server.srv.handler = lambda op, args: Stream(rows())
    server.client.sendall(b'{"op": "lazy"}\n')
    assert not server.crank()
    sent = server.srv.counters()["reply_bytes"]
    encoded = sum(len(json.dumps({"row": i})) + 2 for i in pulled)
    assert encoded < sent + 2 * control.PIECE and len(pulled) < 200000
    [reply] = server.exchange_all(1, chunk=1000)
    assert reply == {"ok": True, "result": [{"row": i} for i in range(200000)]}


def test_a_client_that_takes_nothing_is_dropped_after_the_stall_timeout_and_counted_once(server):
    server.client.sendall(b'{"op": "big"}\n')
    assert not server.crank()
    server.clock.advance(STALL_TIMEOUT - 0.1)
    assert server.srv.tick() == []
    # it reads a little: progress, so the timer starts again
    server.client.recv(1000)
    assert not server.crank()
    server.clock.advance(STALL_TIMEOUT - 0.1)
    assert server.srv.tick() == []
    server.clock.advance(0.2)
    assert server.srv.tick() == [server.fd]
    assert server.srv.tick() == []
    c = server.srv.counters()
    assert (c["slow_clients_dropped"], c["clients"], c["clients_pending"]) == (1, 0, 0)
    rest = read_to_eof(server.client)                        # what it had been given, then end of file
    assert rest and not rest.endswith(b"\n")


def test_an_idle_client_with_nothing_pending_is_never_dropped(server):
    server.client.sendall(b'{"op": "echo", "i": 1}\n')
    assert server.exchange_all(1) == [{"ok": True, "result": {"i": 1}}]
    server.clock.advance(10 * STALL_TIMEOUT)
    assert server.srv.tick() == [] and server.srv.counters()["clients"] == 1


def test_output_past_max_pending_drops_the_client(server, monkeypatch):
    """One indivisible value bigger than MAX_PENDING (here made small): the
    server does not hold it; the client is disconnected and counted."""
    monkeypatch.setattr(control, "MAX_PENDING", 64 << 10)
    server.client.sendall(b'{"op": "huge-string", "n": 100000}\n')
    assert server.crank()
    assert server.srv.counters()["slow_clients_dropped"] == 1
    assert read_to_eof(server.client) == b""


def test_a_lazy_result_that_fails_before_a_byte_is_sent_gets_an_error_reply(server, capsys):
    server.client.sendall(b'{"op": "broken-stream", "n": 1}\n{"op": "echo", "i": 2}\n')
    assert server.exchange_all(2) == [
        {"ok": False, "error": "internal error encoding the reply (RuntimeError: table vanished)"},
        {"ok": True, "result": {"i": 2}}]
    assert server.srv.counters()["errors"] == 1
    assert "table vanished" in capsys.readouterr().err


def test_a_lazy_result_that_fails_midway_ends_the_connection_without_a_complete_line(server, capsys):
    """Part of the line is out: no error can follow it, so the connection
    ends and the client sees an unfinished line (request() says the agent
    closed the connection)."""
    server.client.sendall(b'{"op": "broken-stream", "n": 100000}\n')
    server.client.setblocking(False)
    data = bytearray()
    for _ in range(100000):
        dropped = server.crank()
        try:
            while chunk := server.client.recv(65536):
                data += chunk
        except BlockingIOError:
            pass
        if dropped:
            break
    data += read_to_eof(server.client)
    full = ('{"ok": true, "result": ' + json.dumps(list(range(100000)))).encode()
    assert len(data) > 100000 and data == full[:len(data)]   # streamed, then cut: never a whole line
    assert server.srv.counters()["errors"] == 1
    assert "table vanished" in capsys.readouterr().err


def test_oversized_request_gets_its_error_then_the_connection_ends(server, monkeypatch):
    monkeypatch.setattr(control, "MAX_REQUEST", 1000)
    server.client.sendall(b'{"op": "echo", "x": "' + b"a" * 2000)
    for _ in range(10):
        if server.crank():
            break
    else:
        raise AssertionError("never dropped")
    assert read_to_eof(server.client) == b'{"ok": false, "error": "request longer than 1000 bytes"}\n'
    assert server.srv.counters()["errors"] == 1


def test_a_client_that_closes_mid_reply_is_cleaned_up(server):
    server.client.sendall(b'{"op": "big"}\n')
    assert not server.crank()
    server.client.recv(100)
    server.client.close()
    assert server.crank()                                    # its send fails: dropped
    c = server.srv.counters()
    assert (c["clients"], c["replies_abandoned"]) == (0, 1)


# ---- the I/O loop's write interest -----------------------------------------

def test_ioloop_reports_a_watched_fd_writable_only_while_asked():
    io = IOLoop(Dataplane(nslots=64))
    a, b = socket.socketpair()
    try:
        io.watch(a.fileno())
        assert io.poll(0) == []                               # nothing to read
        io.interest(a.fileno(), read=False, write=True)
        assert io.poll(0) == [a.fileno()]                     # room to write
        io.interest(a.fileno(), read=True, write=False)
        assert io.poll(0) == []
        b.send(b"x")
        assert io.poll(0) == [a.fileno()]
        io.unwatch(a.fileno())
        io.watch(a.fileno(), read=False, write=True)
        assert io.poll(0) == [a.fileno()]
    finally:
        a.close()
        b.close()


# ---- the agent ---------------------------------------------------------------

class Node(AgentNode):
    """The real Agent with pod ports 0 and 1 on socketpairs, served by its
    own loop in a thread once serve() is called."""

    def __init__(self, tmp_path, clock):
        super().__init__(tmp_path, clock, service_capacity=4096, conntrack_capacity=65536,
                         service_cidr="10.96.0.0/12")
        for ip, mac, port in (A, B):
            self.attach(port)
            self.agent.dp.gateway.add_neighbor(ip, mac)
            self.agent.dp.process(bytes(Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc=ip, pdst="10.244.0.250")),
                                  port)

    def counters(self):
        return request(self.socket, "counters")["io"]

    def forwards(self, n=200):
        """n frames from the pod on port 0 to the one on port 1, bridged by the
        agent's loop: all arrive, in order, as sent."""
        frames = [bytes(Ether(src=A[1], dst=B[1]) / IP(src=A[0], dst=B[0]) / UDP(sport=7, dport=9) /
                        (b"seq%06d" % i)) for i in range(n)]
        self.peer[B[2]].settimeout(20)
        got = []
        for f in frames:
            self.peer[A[2]].send(f)
            got.append(self.peer[B[2]].recv(65536))
        assert got == frames


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def node(tmp_path, clock):
    n = Node(tmp_path, clock)
    yield n
    n.close()


def services(n):
    return [{"vip": f"10.96.{1 + (i >> 8)}.{i & 255}", "port": 80, "protocol": "TCP",
             "backends": [[f"10.244.0.{2 + j}", 8080] for j in range(10)]} for i in range(n)]


def stuck_clients(node, k=3):
    """k clients that ask for `services` (~700 KB: more than the socket
    buffers) and read nothing; returns once the agent holds all k replies."""
    clients = [connect(node.socket) for _ in range(k)]
    for c in clients:
        c.sendall(b'{"op": "services"}\n')
    wait_for(f"{k} replies pending", lambda: node.counters()["control_clients_pending"] == k)
    # Pending is not yet stuck: a reply is written a slice per wakeup while
    # the socket has room. Stuck is when what the clients hold stops growing
    # over a whole pass of the loop (a writable one would have been served).
    last = []

    def full():
        node.counters()                                      # one whole pass of the loop
        held = [queued(c) for c in clients]
        stable = bool(last) and held == last[-1]
        last.append(held)
        return stable
    wait_for("their sockets full", full)
    return clients


def queued(sock):
    """Bytes waiting unread in sock."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]


def test_clients_that_never_read_stall_neither_forwarding_nor_other_clients(node):
    node.agent.services_apply(services(2000), [])
    node.serve()
    clients = stuck_clients(node)
    try:
        assert request(node.socket, "ping") == "pong"        # a fourth client is answered
        node.forwards(200)                                   # and the fast path forwards
        io = node.counters()
        assert io["control_clients_pending"] == 3 and io["control_slow_clients_dropped"] == 0
        # the replies waited whole: each client, reading at last, gets all of it
        want = request(node.socket, "services")
        assert len(want) == 2000
        for c in clients:
            assert read_line(c) == {"ok": True, "result": want}
        wait_for("nothing pending", lambda: node.counters()["control_clients_pending"] == 0)
    finally:
        for c in clients:
            c.close()


def test_clients_that_stop_reading_are_dropped_on_the_agents_clock(node, clock):
    node.agent.services_apply(services(2000), [])
    node.serve()
    clients = stuck_clients(node)
    try:
        clock.advance(STALL_TIMEOUT - 0.5)
        node.counters()                                      # a whole pass of the loop (its tick) ...
        assert node.counters()["control_slow_clients_dropped"] == 0   # ... ran at the new time
        clock.advance(1.0)
        wait_for("3 dropped", lambda: node.counters()["control_slow_clients_dropped"] == 3)
        io = node.counters()
        assert (io["control_clients_pending"], io["control_clients"]) == (0, 1)   # only the asker
        for c in clients:
            data = read_to_eof(c)                            # what it had been given, then the end
            assert data and not data.endswith(b"\n")
        text = request(node.socket, "metrics")
        assert 'podnet_control_slow_clients_dropped_total{node="n1"} 3\n' in text
        assert 'podnet_control_clients_accepted_total{node="n1"} ' in text
        assert 'podnet_control_clients{node="n1"} 1\n' in text
        node.forwards(20)
    finally:
        for c in clients:
            c.close()


def fill_conntrack(dp, n):
    """n UDP connections from pod A to VIP:53, served by B."""
    dp.services.set(VIP, 53, "UDP", [(B[0], 5353)])
    base = bytes(Ether(src=A[1], dst=GW["mac"]) / IP(src=A[0], dst=VIP) / UDP(sport=1, dport=53, chksum=0) / b"q")
    frames = [base[:34] + sp.to_bytes(2, "big") + base[36:] for sp in range(1, n + 1)]
    dp.process(frames, A[2])
    assert len(dp.conntrack) == n


def test_a_slow_reader_gets_a_large_conntrack_dump_whole(node):
    fill_conntrack(node.agent.dp, 20000)
    want = node.agent.dp.conntrack_dump()                    # the clock is frozen: same expiries
    node.serve()
    c = connect(node.socket)
    try:
        c.sendall(b'{"op": "conntrack"}\n')
        reply = read_line(c, chunk=1000)                     # ~4 MB, 1000 bytes at a time
        assert reply == {"ok": True, "result": want}
        assert request(node.socket, "conntrack") == want     # and through request(), as the CLI reads it
    finally:
        c.close()


def test_a_client_gone_mid_reply_is_cleaned_up_and_the_agent_serves_on(node):
    fill_conntrack(node.agent.dp, 20000)
    node.serve()
    c = connect(node.socket)
    c.sendall(b'{"op": "conntrack"}\n')
    c.settimeout(20)
    assert c.recv(100).startswith(b'{"ok": true, "result": [')
    c.close()
    wait_for("cleaned up", lambda: node.counters()["control_clients"] == 1)
    io = node.counters()
    assert (io["control_replies_abandoned"], io["control_clients_pending"]) == (1, 0)
    assert request(node.socket, "ping") == "pong"
    node.forwards(20)


def test_conntrack_rows_decoded_from_export_are_dumps_rows(clock):
    """Every protocol, state and flag: ctdump.rows(export()) == dump()."""
    dp = Dataplane(nslots=64, clock=clock, conntrack_capacity=1024, service_capacity=64)
    for ip, mac, port in (A, B):
        dp.add_port(port)
    dp.gateway.configure(GW["ip"], GW["mac"], GW["subnet"])
    for ip, mac, port in (A, B):
        dp.gateway.add_neighbor(ip, mac)
        dp.process(bytes(Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc=ip, pdst="10.244.0.250")), port)
    dp.services.set(VIP, 80, "TCP", [(B[0], 8080)])
    dp.services.set(VIP, 81, "TCP", [(A[0], 8080)])          # hairpin for A: source NAT
    dp.services.set(VIP, 82, "TCP", [(B[0], 8080)])          # its connection is marked dead
    dp.services.set(VIP, 53, "UDP", [(B[0], 5353)])

    def tcp(sport, dport=80, flags="S"):
        return bytes(Ether(src=A[1], dst=GW["mac"]) / IP(src=A[0], dst=VIP) / TCP(sport=sport, dport=dport, flags=flags))

    def udp(sport):
        return bytes(Ether(src=A[1], dst=GW["mac"]) / IP(src=A[0], dst=VIP) / UDP(sport=sport, dport=53))

    def back(dport, l4=TCP):
        return bytes(Ether(src=B[1], dst=A[1]) / IP(src=B[0], dst=A[0]) /
                     (TCP(sport=8080, dport=dport, flags="SA") if l4 is TCP else UDP(sport=5353, dport=dport)))
    dp.process(tcp(1000), A[2])                               # new
    dp.process(tcp(1001), A[2])
    dp.process(back(1001), B[2])                              # established
    dp.process(tcp(1002), A[2])
    dp.process(back(1002), B[2])
    dp.process(tcp(1002, flags="FA"), A[2])                   # fin_wait
    dp.process(tcp(1003), A[2])
    dp.process(tcp(1003, flags="R"), A[2])                    # closed
    dp.process(tcp(1004, dport=81), A[2])                     # hairpin: snat
    dp.process(tcp(1005, dport=82), A[2])
    dp.conntrack.flush(vip=VIP, vport=82, proto=6, mark_tcp_dead=True)     # dead
    dp.process(udp(2000), A[2])                               # unreplied
    dp.process(udp(2001), A[2])
    dp.process(back(2001, UDP), B[2])                         # replied
    clock.advance(3.5)                                        # expiries in the future, some reached
    want = dp.conntrack_dump()
    now = int(clock() * 1000)
    assert list(ctdump.rows(dp.conntrack.export(), now)) == want
    kinds = {(r["proto"], r["state"], r["snat"], r["dead"]) for r in want}
    assert kinds == {("TCP", "new", None, False), ("TCP", "established", None, False),
                     ("TCP", "fin_wait", None, False), ("TCP", "closed", None, False),
                     ("TCP", "new", GW["ip"], False), ("TCP", "new", None, True),
                     ("UDP", "unreplied", None, False), ("UDP", "replied", None, False)}, kinds
    assert list(ctdump.rows(dp.conntrack.export(), now, limit=3)) == dp.conntrack.dump(now, limit=3)
