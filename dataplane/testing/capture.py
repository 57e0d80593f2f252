"""Captures: what arrives at an endpoint from the moment one opens, on a
packet socket in a namespace (live) or a port's output queue (in memory)."""
import contextlib
import select
import socket
import time

from .frames import (DEFAULT_TIMEOUT, ETH_P_ALL, PACKET_IGNORE_OUTGOING, RCVBUF, RECV_MAX, SOL_PACKET,
                     PodnetTestError, _ether)


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
