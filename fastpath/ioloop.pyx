"""IOLoop: TAP fds -> burst -> fast path -> TX queues -> TAP fds, all in C.

    io = IOLoop(dp)
    io.attach(port, fd)          # non-blocking TAP fd for a fast-path port
    io.watch(ctl_fd)             # a Python-managed fd (control socket), readable
    io.interest(ctl_fd, read, write)  # what to wait for on a watched fd from now on
    ready = io.poll(timeout_ms)  # runs bursts until a watched fd is ready or time is up
"""
import os

from libc.errno cimport errno, EAGAIN, EINTR
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memset
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC, CLOCK_REALTIME
from posix.unistd cimport read, write, close

from fastpath.defs cimport *

cdef extern from "<sys/epoll.h>" nogil:
    ctypedef union epoll_data_t:
        void *ptr
        int fd
        uint32_t u32
        uint64_t u64
    cdef struct epoll_event:
        uint32_t events
        epoll_data_t data
    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event *event)
    int epoll_wait(int epfd, epoll_event *events, int maxevents, int timeout)
    enum:
        EPOLLIN
        EPOLLOUT
        EPOLL_CTL_ADD
        EPOLL_CTL_MOD
        EPOLL_CTL_DEL
        EPOLL_CLOEXEC

cdef enum:
    WATCH_TAG = 0x10000       # event data >= this: a Python fd (data - WATCH_TAG)
    MAX_EVENTS = 64


cdef inline uint64_t mono_ms() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <uint64_t>ts.tv_sec * 1000 + <uint64_t>ts.tv_nsec // 1000000


cdef class IOLoop:
    def __cinit__(self, Dataplane dp):
        self.dp = dp
        self.epfd = epoll_create1(EPOLL_CLOEXEC)
        if self.epfd < 0:
            raise OSError(errno, os.strerror(errno))
        for i in range(MAX_PORTS):
            self.fd[i] = -1
        memset(self.st, 0, sizeof(self.st))

    def __dealloc__(self):
        if self.epfd >= 0:
            close(self.epfd)
        free(self.cap_buf)

    # ---- capture -----------------------------------------------------------

    cdef void capture(self, uint16_t port, uint16_t dir, const uint8_t *data, uint32_t length) noexcept nogil:
        cdef timespec ts
        cdef uint32_t keep = length if length < self.snaplen else self.snaplen
        cdef size_t need = (sizeof(cap_rec_t) + keep + 7) & ~(<size_t>7)
        cdef cap_rec_t *rec
        if self.cap_used + need > self.cap_size:
            self.cap_lost += 1
            return
        rec = <cap_rec_t *>(self.cap_buf + self.cap_used)
        clock_gettime(CLOCK_REALTIME, &ts)
        rec.ts_ns = <uint64_t>ts.tv_sec * 1000000000 + <uint64_t>ts.tv_nsec
        rec.len = length
        rec.caplen = keep
        rec.port = port
        rec.dir = dir
        memcpy(<uint8_t *>rec + sizeof(cap_rec_t), data, keep)
        self.cap_used += need
        self.cap_frames += 1

    def capture_start(self, ports, bufsize=4 << 20, snaplen=65535):
        """Copy frames received from and sent to these ports into a buffer of
        bufsize bytes (frames cut to snaplen), until capture_stop()."""
        for what, v in (("capture buffer", bufsize), ("snaplen", snaplen)):
            if not isinstance(v, int) or isinstance(v, bool):    # checked before C conversion
                raise ValueError(f"{what} must be an integer number of bytes, got {v!r}")
        if self.capturing:
            raise RuntimeError("a capture is already running")
        ports = list(ports)
        for p in ports:
            if not 0 <= p < MAX_PORTS or self.fd[p] < 0:
                raise ValueError(f"port {p} is not attached")
        if not 64 <= snaplen <= 262144:
            raise ValueError(f"snaplen must be 64..262144, got {snaplen}")
        if not 65536 <= bufsize <= 256 << 20:
            raise ValueError(f"capture buffer must be 64 KB..256 MB, got {bufsize}")
        self.cap_buf = <uint8_t *>malloc(bufsize)
        if self.cap_buf == NULL:
            raise MemoryError("capture buffer")
        self.cap_size = bufsize
        self.cap_used = 0
        self.snaplen = snaplen
        self.cap_frames = 0
        self.cap_lost = 0
        memset(self.cap_on, 0, sizeof(self.cap_on))
        for p in ports:
            self.cap_on[p] = 1
        self.capturing = True

    def capture_read(self):
        """Frames captured since the last read: [(ts_ns, port, dir, wire_len, bytes)]."""
        cdef size_t off = 0
        cdef cap_rec_t *rec
        out = []
        if not self.capturing:
            return out
        while off < self.cap_used:
            rec = <cap_rec_t *>(self.cap_buf + off)
            out.append((rec.ts_ns, rec.port, rec.dir, rec.len,
                        (<char *>rec + sizeof(cap_rec_t))[:rec.caplen]))
            off += (sizeof(cap_rec_t) + rec.caplen + 7) & ~(<size_t>7)
        self.cap_used = 0
        return out

    def capture_stop(self):
        memset(self.cap_on, 0, sizeof(self.cap_on))
        self.capturing = False
        free(self.cap_buf)
        self.cap_buf = NULL
        self.cap_size = self.cap_used = 0

    def capture_info(self):
        return {"running": bool(self.capturing), "ports": [p for p in range(MAX_PORTS) if self.cap_on[p]],
                "frames": self.cap_frames, "lost": self.cap_lost, "buffered_bytes": self.cap_used}

    def _ctl(self, int op, int fd, uint32_t tag, uint32_t events=EPOLLIN):
        cdef epoll_event ev
        ev.events = events
        ev.data.u64 = 0
        ev.data.u32 = tag
        if epoll_ctl(self.epfd, op, fd, &ev) != 0:
            raise OSError(errno, f"epoll_ctl fd {fd}: {os.strerror(errno)}")

    def attach(self, int port, int fd):
        """Serve port from fd (a non-blocking TAP). The port must exist in the dataplane."""
        if port not in self.dp.ports:
            raise KeyError(f"no port {port} in the dataplane")
        if self.fd[port] >= 0:
            raise ValueError(f"port {port} already has fd {self.fd[port]}")
        os.set_blocking(fd, False)
        self._ctl(EPOLL_CTL_ADD, fd, port)
        self.fd[port] = fd

    def detach(self, int port):
        if not 0 <= port < MAX_PORTS or self.fd[port] < 0:
            raise KeyError(f"port {port} has no fd")
        try:
            self._ctl(EPOLL_CTL_DEL, self.fd[port], port)
        except OSError:
            pass                        # fd already closed: epoll forgot it
        self.fd[port] = -1

    def watch(self, int fd, bint read=True, bint write=False):
        """poll() returns fd when it is readable (read) and/or writable
        (write); a hang-up or error always counts as ready."""
        self._ctl(EPOLL_CTL_ADD, fd, WATCH_TAG + fd, (EPOLLIN if read else 0) | (EPOLLOUT if write else 0))

    def interest(self, int fd, bint read=True, bint write=False):
        """Change what a watched fd waits for. The control socket asks for
        writability only while a reply is pending: a socket with room in its
        buffer is always writable, so watching it for ever would make every
        poll() return at once."""
        self._ctl(EPOLL_CTL_MOD, fd, WATCH_TAG + fd, (EPOLLIN if read else 0) | (EPOLLOUT if write else 0))

    def unwatch(self, int fd):
        self._ctl(EPOLL_CTL_DEL, fd, WATCH_TAG + fd)

    cdef uint32_t round_burst(self, int *ready, uint32_t nready) noexcept nogil:
        """Read the ready ports into slots, fairly: each gets an equal share of
        the burst, and reads until EAGAIN or its share is used."""
        cdef uint32_t n = 0, share, got, k, cap, hl
        cdef int port, fd
        cdef ssize_t r
        cdef pkt_t *pk
        share = self.dp.nslots // nready if nready else self.dp.nslots
        if share == 0:
            share = 1
        for k in range(nready):
            port = ready[k]
            fd = self.fd[port]
            if fd < 0:
                continue
            got = 0
            hl = self.dp.pvnet[port]
            cap = self.dp.slot_size + hl
            while got < share and n < self.dp.nslots:
                pk = &self.dp.pkts[n]
                pk.data = self.dp.mem + <size_t>n * self.dp.stride + HEADROOM
                r = read(fd, pk.data - hl, cap)
                if r < 0:
                    if errno != EAGAIN and errno != EINTR:
                        self.st[port].rx_errors += 1
                    break
                # A read that yields no frame still counts against the share:
                # an fd at end of file (read() returns 0 forever, less than a
                # vnet header) would otherwise keep this loop spinning, nogil,
                # and poll() would never return.
                if <uint32_t>r < hl:
                    self.st[port].rx_errors += 1
                    got += 1
                    continue
                if <uint32_t>r == cap:
                    self.st[port].rx_truncated += 1    # may have been cut: drop it
                    got += 1
                    continue
                pk.len = <uint32_t>r - hl
                pk.in_port = <uint16_t>port
                if self.cap_on[port]:
                    self.capture(<uint16_t>port, 0, pk.data, pk.len)
                n += 1
                got += 1
        return n

    cdef void flush(self) noexcept nogil:
        cdef uint32_t k, q, port, hl
        cdef uint16_t idx
        cdef int fd
        cdef pkt_t *pk
        for k in range(self.dp.n_active):
            port = self.dp.tx_active[k]
            fd = self.fd[port]
            if fd < 0:
                self.st[port].tx_no_fd += self.dp.txq_len[port]
                continue
            hl = self.dp.pvnet[port]
            for q in range(self.dp.txq_len[port]):
                idx = self.dp.txq[<size_t>port * self.dp.nslots + q]
                pk = &self.dp.pkts[idx]
                if self.cap_on[port]:
                    self.capture(<uint16_t>port, 1, pk.data, pk.len)
                if write(fd, pk.data - hl, pk.len + hl) < 0:
                    self.st[port].tx_errors += 1

    def poll(self, int timeout_ms=100):
        """Move frames until a watched fd is ready (as watch()/interest()
        asked) or timeout_ms passes. Returns the ready watched fds (maybe empty)."""
        cdef epoll_event ev[MAX_EVENTS]
        cdef int ready[MAX_EVENTS]
        cdef int nev, i, wait
        cdef uint32_t nready, nwatched = 0, n
        cdef int watched[MAX_EVENTS]
        cdef uint64_t deadline = mono_ms() + <uint64_t>max(timeout_ms, 0), now
        cdef bint interrupted = False
        with nogil:
            while True:
                now = mono_ms()
                wait = <int>(deadline - now) if deadline > now else 0
                nev = epoll_wait(self.epfd, ev, MAX_EVENTS, wait)
                if nev < 0:
                    interrupted = errno == EINTR     # a signal: let Python run its handler
                    break
                if nev == 0:
                    break
                self.wakeups += 1
                nready = 0
                for i in range(nev):
                    if ev[i].data.u32 >= WATCH_TAG:
                        watched[nwatched] = <int>(ev[i].data.u32 - WATCH_TAG)
                        nwatched += 1
                    else:
                        ready[nready] = <int>ev[i].data.u32
                        nready += 1
                if nready:
                    n = self.round_burst(ready, nready)
                    if n:
                        self.dp.run(0, n, mono_ms())
                        self.flush()
                        self.bursts += 1
                        self.frames += n
                if nwatched:
                    break
                # Ports that stay ready (sustained traffic, or a TAP whose
                # device is gone: EPOLLERR for ever) must not keep poll() from
                # returning: the agent's timers (aging, snapshots, an idle
                # capture) run between polls. Before, only an idle epoll_wait
                # ended the loop, so under load they never ran.
                if mono_ms() >= deadline:
                    break
        if nev < 0 and not interrupted:
            raise OSError(errno, os.strerror(errno))
        return [watched[i] for i in range(nwatched)]

    def counters(self):
        ports = {}
        for p in range(MAX_PORTS):
            if self.fd[p] >= 0 or self.st[p].tx_no_fd:
                ports[p] = {"fd": self.fd[p], "rx_errors": self.st[p].rx_errors,
                            "rx_truncated": self.st[p].rx_truncated,
                            "tx_errors": self.st[p].tx_errors, "tx_no_fd": self.st[p].tx_no_fd}
        return {"wakeups": self.wakeups, "bursts": self.bursts, "frames": self.frames,
                "frames_per_burst": (self.frames / self.bursts) if self.bursts else 0.0,
                "ports": ports}
