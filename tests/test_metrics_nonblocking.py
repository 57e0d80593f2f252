"""The metrics endpoint never blocks the agent's loop: a scraper that does not
read its response leaves ready() at once with the rest kept for when the fd
turns writable, gets the whole response when it reads at last, and one that
makes no progress for STALL_TIMEOUT on the agent's clock is dropped and
counted (the same for a request never finished)."""
import socket

from conftest import Clock

from dataplane.metrics import STALL_TIMEOUT, MetricsServer

BIG = "podnet_test_value{i=\"%d\"} 1\n"


def server(tmp_path, body_lines=200000):
    clock, interest = Clock(), []
    body = "".join(BIG % i for i in range(body_lines))         # several MB: more than a socket buffer
    m = MetricsServer(lambda: body, unix_path=str(tmp_path / "m.sock"), clock=clock,
                      interest=lambda fd, r, w: interest.append((fd, r, w)))
    return m, clock, interest, body


def connect(m, path):
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.connect(path)
    [lfd] = m.fds()
    added, _ = m.ready(lfd)
    return c, added[0]


def read_all(c):
    c.settimeout(5)
    chunks = []
    while True:
        b = c.recv(1 << 16)
        if not b:
            return b"".join(chunks)
        chunks.append(b)


def test_a_scraper_that_does_not_read_never_blocks_and_gets_everything_later(tmp_path):
    m, clock, interest, body = server(tmp_path)
    c, fd = connect(m, str(tmp_path / "m.sock"))
    c.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
    assert m.ready(fd) == ([], [])            # returned with most of the response still to send
    assert interest[-1] == (fd, False, True) and m.clients[fd][2] is not None
    pending = len(m.clients[fd][2])
    assert 0 < pending < len(body)
    # the fd turns writable only as the client reads; each ready() sends what fits
    c.setblocking(False)
    got = bytearray()
    for _ in range(100000):
        try:
            got += c.recv(1 << 16)
        except BlockingIOError:
            pass
        if fd not in m.clients:
            break
        m.ready(fd)
    c.setblocking(True)
    got += read_all(c)
    head, _, rest = bytes(got).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 OK") and b"Content-Length: %d" % len(body.encode()) in head
    assert rest == body.encode()
    assert m.slow_clients_dropped == 0 and m.clients == {}


def test_scrapers_that_make_no_progress_are_dropped_and_counted(tmp_path):
    m, clock, interest, body = server(tmp_path)
    path = str(tmp_path / "m.sock")
    reader, rfd = connect(m, path)            # asks, then never reads
    reader.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
    m.ready(rfd)
    half, hfd = connect(m, path)              # never finishes its request
    half.sendall(b"GET /metr")
    m.ready(hfd)
    clock.advance(STALL_TIMEOUT - 0.5)
    m.tick()
    assert set(m.clients) == {rfd, hfd} and m.slow_clients_dropped == 0
    clock.advance(1.0)
    m.tick()
    assert m.clients == {} and m.slow_clients_dropped == 2
    got = read_all(reader)                    # what was sent, then EOF: never a whole response
    assert len(got) < len(body)
    assert read_all(half) == b""


def test_a_scraper_gone_mid_response_is_cleaned_up(tmp_path):
    m, clock, interest, body = server(tmp_path)
    c, fd = connect(m, str(tmp_path / "m.sock"))
    c.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
    m.ready(fd)
    assert fd in m.clients
    c.close()
    _, removed = m.ready(fd)                  # the next write fails: dropped, not raised
    assert removed == [fd] and m.clients == {}
    # and the endpoint serves on, a small answer in one go
    c2, fd2 = connect(m, str(tmp_path / "m.sock"))
    c2.sendall(b"GET /nope HTTP/1.0\r\n\r\n")
    assert m.ready(fd2) == ([], [fd2])
    assert read_all(c2).startswith(b"HTTP/1.0 404 Not Found")
