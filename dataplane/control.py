"""The agent's control socket: a Unix stream socket (mode 0600), one JSON
object per line each way. Request {"op": NAME, ...args}; reply
{"ok": true, "result": ...} or {"ok": false, "error": "..."}.

The server runs inside the agent's forwarding loop, so it never blocks:
each client has an output buffer, filled from its reply a piece at a time
(a large result is encoded as the socket drains, never as one giant bytes
object) and written with non-blocking sends; the loop waits for the socket
to become writable only while output is pending. A client is served one
request at a time: while its reply is pending nothing more is read from it,
so its backlog is one reply plus at most MAX_REQUEST bytes of input. A
client that drains nothing for STALL_TIMEOUT seconds (the agent's clock) is
disconnected and counted, and so is one whose buffered output passes
MAX_PENDING."""
import itertools
import json
import os
import socket
import sys
import time


MAX_REQUEST = 64 << 20         # bytes (10k services x 10 endpoints is ~3 MB); longer is refused
# A client that has not taken a byte of its reply for this long (seconds, on
# the agent's clock) is dropped: request() gives up after 10 s without a
# byte by default, so such a client has given up by its own standard, and
# what its reply holds (the result's objects, its fd) is freed.
STALL_TIMEOUT = 10.0
# Encoded bytes buffered for one client. Replies are encoded a piece at a
# time only as the socket takes them, so the buffer holds one PIECE plus one
# indivisible value (a row, a string); this bound is for a value no handler
# should produce, so that a client can never make the agent hold more.
MAX_PENDING = 8 << 20
PIECE = 16 << 10               # encode ahead of the socket by about this much
# Time one client may take of one wakeup of the loop (encoding, sending,
# handling pipelined requests) before the loop returns to forwarding; it
# comes back at the next poll. Checked only after some work, so that small
# exchanges always complete in one call.
SLICE_SECONDS = 0.0005
SLICE_MIN_BYTES = 16 << 10
SLICE_MIN_REQUESTS = 16
BATCH = 64                     # long lists are encoded this many elements at a time


class ControlError(RuntimeError):
    pass


def request(path, op, timeout=10.0, **args):
    """Send one request to the agent at path and return its result."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise ControlError(f"agent not reachable at {path}: {e.strerror}") from None
        except PermissionError as e:
            raise ControlError(f"agent not reachable at {path}: {e.strerror} (the control socket "
                               "is root's alone)") from None
        s.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
        buf = bytearray()
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                raise ControlError(f"agent at {path} closed the connection")
            buf += chunk
    except socket.timeout:
        raise ControlError(f"agent at {path} did not answer {op!r} within {timeout} s") from None
    except (ConnectionResetError, BrokenPipeError) as e:      # the agent died mid-request
        raise ControlError(f"agent at {path} closed the connection: {e.strerror}") from None
    finally:
        s.close()
    reply = json.loads(buf)
    if not reply.get("ok"):
        raise ControlError(reply.get("error", "unknown error"))
    return reply.get("result")


class Stream:
    """A result a handler gives lazily: an iterable of JSON values, sent as
    one JSON array and pulled only as the client's socket drains (e.g. rows
    decoded from a table's export a few at a time)."""

    def __init__(self, items):
        self.items = items

    def __iter__(self):
        return iter(self.items)


def _dumps(obj):
    return json.dumps(obj, default=str)


def _key(k):
    """A dict key as json.dumps writes it (ints, floats, None become strings)."""
    return json.dumps({k: 0}, default=str)[1:-4]


def pieces(obj, depth=2):
    """str pieces whose concatenation is json.dumps(obj, default=str):
    Streams and long lists BATCH elements at a time (each batch in one C
    call), the top dict's values likewise, anything else whole."""
    if isinstance(obj, Stream) or (depth > 0 and isinstance(obj, (list, tuple)) and len(obj) > BATCH):
        it = iter(obj)
        yield "["
        sep = ""
        while batch := list(itertools.islice(it, BATCH)):
            yield sep + _dumps(batch)[1:-1]
            sep = ", "
        yield "]"
    elif depth >= 2 and isinstance(obj, dict):
        yield "{"
        for i, (k, v) in enumerate(obj.items()):
            yield (", " if i else "") + _key(k) + ": "
            yield from pieces(v, depth - 1)
        yield "}"
    else:
        yield _dumps(obj)


def _reply_pieces(reply):
    """The reply line a piece at a time, newline last."""
    if reply.get("ok"):
        yield '{"ok": true, "result": '
        yield from pieces(reply["result"])
        yield "}\n"
    else:
        yield _dumps(reply) + "\n"


class _Client:
    __slots__ = ("sock", "fd", "inbuf", "head", "scan", "out", "pieces", "begun", "closing", "since",
                 "want")

    def __init__(self, sock):
        self.sock = sock
        self.fd = sock.fileno()
        self.inbuf = bytearray()
        self.head = 0                  # inbuf[:head] is handled already
        self.scan = 0                  # no newline in inbuf[head:scan]
        self.out = bytearray()         # encoded, not yet taken by the socket
        self.pieces = None             # the rest of the current reply, lazily
        self.begun = False             # a byte of the current reply was sent
        self.closing = False           # close once the output is written
        self.since = 0.0               # the reply started or last made progress (agent's clock)
        self.want = (True, False)      # epoll interest: read, write

    def pending(self):
        return bool(self.out) or self.pieces is not None

    def next_line(self):
        """The next complete request line, or None."""
        i = self.inbuf.find(b"\n", max(self.scan, self.head))
        if i < 0:
            self.scan = len(self.inbuf)
            return None
        line = bytes(self.inbuf[self.head:i])
        self.head = self.scan = i + 1
        if self.head == len(self.inbuf):
            self.inbuf.clear()
            self.head = self.scan = 0
        return line

    def has_line(self):
        return self.inbuf.find(b"\n", max(self.scan, self.head)) >= 0


_DROPPED, _WAIT, _DONE = range(3)
COUNTERS = ("clients_accepted", "requests", "errors", "slow_clients_dropped", "replies_abandoned",
            "reply_bytes", "accept_errors")


class ControlServer:
    """Non-blocking server driven by the agent's loop: fds() to watch,
    ready(fd) when one is ready, tick() on every pass of the loop (drops
    stalled clients). handler(op, args) returns a result (a Stream for a
    lazy one) or raises ValueError/KeyError for a clear error reply.
    interest(fd, read, write) is told what each client's fd should wait for
    (IOLoop.interest); clock is the agent's."""

    def __init__(self, path, handler, clock=time.monotonic, interest=None):
        self.path = str(path)
        self.handler = handler
        self.clock = clock
        self.interest = interest
        if os.path.exists(self.path):
            os.unlink(self.path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)                  # born 0600: no window where others can connect
        try:
            self.sock.bind(self.path)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        self.sock.listen(16)
        self.sock.setblocking(False)
        self.clients = {}                      # fd -> _Client
        self.stats = dict.fromkeys(COUNTERS, 0)

    def fds(self):
        return [self.sock.fileno()] + list(self.clients)

    def counters(self):
        return {**self.stats, "clients": len(self.clients),
                "clients_pending": sum(1 for c in self.clients.values() if c.pending())}

    def ready(self, fd):
        """Handle readiness of fd; returns fds added (new clients) and removed."""
        if fd == self.sock.fileno():
            try:
                c, _ = self.sock.accept()
            except BlockingIOError:
                return [], []
            except OSError as e:               # out of fds, say: count it, keep forwarding
                self.stats["accept_errors"] += 1
                print(f"control: accept failed: {e}", file=sys.stderr, flush=True)
                return [], []
            c.setblocking(False)
            self.clients[c.fileno()] = _Client(c)
            self.stats["clients_accepted"] += 1
            return [c.fileno()], []
        cl = self.clients.get(fd)
        if cl is None:                         # dropped earlier in this pass
            return [], []
        if not self._serve(cl):
            return [], [self._drop(fd)]
        return [], []

    def tick(self):
        """Drop clients whose pending output made no progress for
        STALL_TIMEOUT; returns their fds."""
        now = self.clock()
        gone = [fd for fd, cl in self.clients.items() if cl.pending() and now - cl.since > STALL_TIMEOUT]
        for fd in gone:
            self.stats["slow_clients_dropped"] += 1
            print(f"control: client fd {fd} took no byte of its reply for {STALL_TIMEOUT:g} s: "
                  "disconnected", file=sys.stderr, flush=True)
            self._drop(fd)
        return gone

    # ---- one client --------------------------------------------------------

    def _serve(self, cl):
        """Write, handle and read for one client within one slice of the
        loop's time. Returns False if the client is to be dropped."""
        start = time.perf_counter()
        sent0 = self.stats["reply_bytes"]
        handled = 0

        def over():
            return ((self.stats["reply_bytes"] - sent0 >= SLICE_MIN_BYTES or handled >= SLICE_MIN_REQUESTS)
                    and time.perf_counter() - start >= SLICE_SECONDS)

        while True:
            if cl.pending():
                r = self._write(cl, over)
                if r == _DROPPED:
                    return False
                if r == _WAIT:
                    break
            if cl.closing:
                return False
            if over():
                break
            line = cl.next_line()
            if line is not None:
                self._start(cl, self._handle(line))
                handled += 1
                continue
            if cl.head:                        # compact before reading more
                del cl.inbuf[:cl.head]
                cl.scan -= cl.head
                cl.head = 0
            try:
                data = cl.sock.recv(65536)
            except BlockingIOError:
                break
            except OSError:
                data = b""
            if not data:                       # end of file: what was asked is answered
                return False
            cl.inbuf += data                   # in place: a large request costs O(n), not O(n^2)
            if len(cl.inbuf) > MAX_REQUEST and not cl.has_line():
                self._start(cl, {"ok": False, "error": f"request longer than {MAX_REQUEST} bytes"})
                cl.closing = True              # nothing more is read: the input goes now
                cl.inbuf, cl.head, cl.scan = bytearray(), 0, 0
        # Pending work (output, or requests already read) waits for
        # writability, which also brings the loop back at once when the
        # socket has room; nothing more is read until it is done.
        write = cl.pending() or cl.has_line()
        return self._want(cl, not write and not cl.closing, write)

    def _want(self, cl, read, write):
        if cl.want != (read, write):
            cl.want = (read, write)
            if self.interest:
                try:
                    self.interest(cl.fd, read, write)
                except OSError:
                    return False
        return True

    def _start(self, cl, reply):
        self.stats["requests"] += 1
        if not reply.get("ok"):
            self.stats["errors"] += 1
        cl.pieces = _reply_pieces(reply)
        cl.begun = False
        cl.since = self.clock()

    def _write(self, cl, over):
        """Encode ahead of the socket and send what it takes: _DONE when the
        reply is written, _WAIT when the socket is full or the slice is used,
        _DROPPED when the client is gone or is to be dropped."""
        while True:
            try:
                while cl.pieces is not None and len(cl.out) < PIECE:
                    try:
                        cl.out += next(cl.pieces).encode()
                    except StopIteration:
                        cl.pieces = None
            except Exception as e:             # a bug in a lazy result
                print(f"control: encoding a reply failed: {type(e).__name__}: {e}", file=sys.stderr,
                      flush=True)
                self.stats["errors"] += 1
                if cl.begun:                   # part of the line is out: it cannot be ended well
                    return _DROPPED
                cl.out.clear()                 # nothing sent yet: an error reply instead
                cl.pieces = _reply_pieces({"ok": False, "error": "internal error encoding the reply "
                                                                 f"({type(e).__name__}: {e})"})
                continue
            if len(cl.out) > MAX_PENDING:
                self.stats["slow_clients_dropped"] += 1
                print(f"control: client fd {cl.fd}: {len(cl.out)} bytes of output pending, more than "
                      f"{MAX_PENDING}: disconnected", file=sys.stderr, flush=True)
                return _DROPPED
            if not cl.out:
                return _DONE
            try:
                n = cl.sock.send(cl.out, socket.MSG_NOSIGNAL)
            except BlockingIOError:
                return _WAIT
            except OSError:                    # closed or reset mid-reply
                self.stats["replies_abandoned"] += 1
                return _DROPPED
            del cl.out[:n]
            cl.begun = True
            self.stats["reply_bytes"] += n
            cl.since = self.clock()
            if cl.pending() and over():
                return _WAIT

    def _handle(self, line):
        try:
            from dataplane.textload import json_loads   # the agent's side only: clients skip yaml
            req = json_loads(line)
        except ValueError as e:
            return {"ok": False, "error": f"malformed JSON request: {e}"}
        if not isinstance(req, dict) or not isinstance(req.get("op"), str):
            return {"ok": False, "error": 'request must be a JSON object with a string "op"'}
        op = req.pop("op")
        try:
            return {"ok": True, "result": self.handler(op, req)}
        except (ValueError, KeyError, TypeError, OverflowError) as e:
            msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            return {"ok": False, "error": f"{op}: {msg}"}
        except Exception as e:                 # a bug, not bad input: answer, log, keep serving
            print(f"control: {op} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            return {"ok": False, "error": f"{op}: internal error ({type(e).__name__}: {e})"}

    def _drop(self, fd):
        cl = self.clients.pop(fd)
        cl.sock.close()                        # a closed fd leaves epoll by itself
        return fd

    def close(self):
        for fd in list(self.clients):
            self._drop(fd)
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
