"""Prometheus text exposition (format 0.0.4) of an agent's counters, and the
opt-in endpoint that serves it: HTTP/1.0 on a Unix socket in the run
directory, and on 127.0.0.1:PORT when asked. Driven by the agent's loop like
the control socket, so a slow scraper never blocks forwarding."""
import os
import socket
import time

GAUGES = {"entries", "capacity", "service_ports", "frames_per_burst", "fd"}
SECTIONS = ("bridge", "fdb", "gateway", "overlay", "services", "conntrack")
MAX_HEADER = 8192
STALL_TIMEOUT = 10.0        # seconds without progress before a metrics client is dropped
CONTROL_HELP = {
    "clients_accepted": "Control socket connections accepted.",
    "requests": "Control requests answered.",
    "errors": "Control requests answered with an error.",
    "slow_clients_dropped": "Control clients disconnected for not reading their reply.",
    "replies_abandoned": "Control clients that went away with a reply pending.",
    "reply_bytes": "Control reply bytes written.",
    "accept_errors": "Control connections that could not be accepted.",
    "clients": "Control clients connected.",
    "clients_pending": "Control clients with a reply pending.",
}


def _labels(**kv):
    return "{" + ",".join(f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
                          for k, v in kv.items()) + "}"


def exposition(node, counters, pods=None):
    """counters: the agent's "counters" result; pods: port -> pod name."""
    pods = pods or {}
    out = []

    def family(name, kind, help, samples):
        out.append(f"# HELP {name} {help}")
        out.append(f"# TYPE {name} {kind}")
        out.extend(f"{name}{_labels(**lab)} {val}" for lab, val in samples)

    for key in ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "rx_dropped"):
        family(f"podnet_port_{key}_total", "counter", f"Per-port {key.replace('_', ' ')}.",
               [({"node": node, "port": p, "pod": pods.get(int(p), "uplink" if int(p) == 255 else "")}, c[key])
                for p, c in sorted(counters["ports"].items(), key=lambda kv: int(kv[0]))])
    family("podnet_drops_total", "counter", "Frames dropped by the fast path, by reason.",
           [({"node": node, "reason": r}, v) for r, v in counters["drops"].items()])
    for section in SECTIONS:
        for key, v in counters.get(section, {}).items():
            gauge = key in GAUGES
            family(f"podnet_{section}_{key}{'' if gauge else '_total'}", "gauge" if gauge else "counter",
                   f"{section} {key.replace('_', ' ')}.", [({"node": node}, v)])
    io = counters.get("io", {})
    for key in ("wakeups", "bursts", "frames"):
        if key in io:
            family(f"podnet_io_{key}_total", "counter", f"I/O loop {key}.", [({"node": node}, io[key])])
    # the control socket (dataplane/control.py), served by the same loop
    for key in ("clients_accepted", "requests", "errors", "slow_clients_dropped", "replies_abandoned",
                "reply_bytes", "accept_errors", "clients", "clients_pending"):
        if f"control_{key}" in io:
            gauge = key in ("clients", "clients_pending")
            family(f"podnet_control_{key}{'' if gauge else '_total'}", "gauge" if gauge else "counter",
                   CONTROL_HELP[key], [({"node": node}, io[f"control_{key}"])])
    if "metrics_slow_clients_dropped" in io:
        family("podnet_metrics_slow_clients_dropped_total", "counter",
               "Metrics scrapers disconnected for making no progress.",
               [({"node": node}, io["metrics_slow_clients_dropped"])])
    for key in ("rx_errors", "rx_truncated", "tx_errors", "tx_no_fd"):
        family(f"podnet_io_{key}_total", "counter", f"Per-port I/O {key.replace('_', ' ')}.",
               [({"node": node, "port": p}, c[key]) for p, c in sorted(io.get("ports", {}).items(),
                                                                      key=lambda kv: int(kv[0]))])
    return "\n".join(out) + "\n"


class MetricsServer:
    """fds() to watch, ready(fd) when one is readable or writable; render()
    gives the body. Like the control socket, it never blocks the agent's loop:
    a response is written with non-blocking sends, the rest kept and sent as
    the fd turns writable (interest(fd, read, write) is told, IOLoop.interest),
    and tick() drops clients that make no progress for STALL_TIMEOUT seconds
    on the agent's clock (a request never finished, a response never read),
    counted in slow_clients_dropped."""

    def __init__(self, render, unix_path=None, tcp_sock=None, clock=time.monotonic, interest=None):
        self.render = render
        self.clock = clock
        self.interest = interest
        self.listeners = {}
        self.clients = {}                     # fd -> [socket, request bytes so far, output left, last progress]
        self.slow_clients_dropped = 0
        self.path = unix_path
        if unix_path:
            if os.path.exists(unix_path):
                os.unlink(unix_path)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            old = os.umask(0o177)
            try:
                s.bind(unix_path)
            finally:
                os.umask(old)
            s.listen(8)
            self.listeners[s.fileno()] = s
        if tcp_sock is not None:              # bound by the caller (in the root namespace)
            tcp_sock.listen(8)
            self.listeners[tcp_sock.fileno()] = tcp_sock
        for s in self.listeners.values():
            s.setblocking(False)

    def fds(self):
        return list(self.listeners)

    def ready(self, fd):
        """Returns (fds added, fds removed)."""
        if fd in self.listeners:
            try:
                c, _ = self.listeners[fd].accept()
            except (BlockingIOError, OSError):   # EAGAIN, or out of fds: the listener stays
                return [], []
            c.setblocking(False)
            self.clients[c.fileno()] = [c, b"", None, self.clock()]
            return [c.fileno()], []
        cl = self.clients.get(fd)
        if cl is None:
            return [], []
        if cl[2] is not None:                 # writable: more of the response
            return [], self._send(fd, cl)
        c = cl[0]
        try:
            data = c.recv(4096)
        except BlockingIOError:
            return [], []
        except OSError:
            data = b""
        if not data:
            return [], [self._drop(fd)]
        cl[1] += data
        cl[3] = self.clock()
        buf = cl[1]
        if b"\r\n\r\n" not in buf and b"\n\n" not in buf and len(buf) < MAX_HEADER:
            return [], []
        cl[2] = memoryview(self._answer(buf))
        return [], self._send(fd, cl)

    def _send(self, fd, cl):
        c, _, out, _ = cl
        try:
            n = c.send(out)
        except BlockingIOError:
            n = 0
        except OSError:                       # the client went away
            return [self._drop(fd)]
        if n:
            cl[3] = self.clock()
        cl[2] = out = out[n:]
        if not out:                           # HTTP/1.0: one response, then close
            return [self._drop(fd)]
        if self.interest:
            self.interest(fd, False, True)    # wake when it drains, not before
        return []

    def tick(self):
        """Drop clients that made no progress for STALL_TIMEOUT (agent's clock)."""
        now = self.clock()
        for fd, cl in list(self.clients.items()):
            if now - cl[3] > STALL_TIMEOUT:
                self._drop(fd)
                self.slow_clients_dropped += 1

    def _answer(self, buf):
        line = buf.split(b"\r\n", 1)[0].split(b"\n", 1)[0].split()
        if len(line) >= 2 and line[0] == b"GET" and line[1].split(b"?")[0] in (b"/metrics", b"/"):
            body = self.render().encode()
            head = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
        else:
            body = b"podnet serves GET /metrics\n"
            head = b"HTTP/1.0 404 Not Found\r\nContent-Type: text/plain\r\n"
        return head + b"Content-Length: %d\r\n\r\n" % len(body) + body

    def _drop(self, fd):
        cl = self.clients.pop(fd)
        cl[0].close()                         # a closed fd leaves epoll by itself
        return fd

    def close(self):
        for cl in self.clients.values():
            cl[0].close()
        for s in self.listeners.values():
            s.close()
        if self.path:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
