"""The agent's control socket: a Unix stream socket (mode 0600), one JSON
object per line each way. Request {"op": NAME, ...args}; reply
{"ok": true, "result": ...} or {"ok": false, "error": "..."}."""
import json
import os
import socket
import sys

from dataplane.textload import json_loads

MAX_REQUEST = 64 << 20         # bytes (10k services x 10 endpoints is ~3 MB); longer is refused


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


class ControlServer:
    """Non-blocking server driven by the agent's loop: fds() to watch,
    ready(fd) when one is readable. handler(op, args) returns a result or
    raises ValueError/KeyError for a clear error reply."""

    def __init__(self, path, handler):
        self.path = str(path)
        self.handler = handler
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
        self.clients = {}                      # fd -> (socket, buffer)

    def fds(self):
        return [self.sock.fileno()] + list(self.clients)

    def ready(self, fd):
        """Handle readiness of fd; returns fds added (new clients) and removed."""
        if fd == self.sock.fileno():
            try:
                c, _ = self.sock.accept()
            except BlockingIOError:
                return [], []
            c.setblocking(False)
            self.clients[c.fileno()] = (c, bytearray())
            return [c.fileno()], []
        c, buf = self.clients[fd]
        try:
            data = c.recv(65536)
        except BlockingIOError:
            return [], []
        except OSError:
            data = b""
        if not data:
            return [], [self._drop(fd)]
        buf += data                            # in place: a large request costs O(n), not O(n^2)
        if b"\n" in data:                      # only the new bytes can hold the end of a request
            *lines, rest = buf.split(b"\n")
            buf = bytearray(rest)
            for line in lines:
                self._reply(c, self._handle(line))
        if len(buf) > MAX_REQUEST:
            self._reply(c, {"ok": False, "error": f"request longer than {MAX_REQUEST} bytes"})
            return [], [self._drop(fd)]
        self.clients[fd] = (c, buf)
        return [], []

    def _handle(self, line):
        try:
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

    def _reply(self, c, obj):
        data = json.dumps(obj, default=str).encode() + b"\n"
        c.setblocking(True)                    # replies are small; a slow reader only delays itself
        c.settimeout(2.0)
        try:
            c.sendall(data)
        except OSError:
            pass
        finally:
            c.setblocking(False)

    def _drop(self, fd):
        c, _ = self.clients.pop(fd)
        c.close()
        return fd

    def close(self):
        for fd in list(self.clients):
            self._drop(fd)
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
