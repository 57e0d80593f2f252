"""IOLoop: TAP fds -> burst -> fast path -> TX queues -> TAP fds, all in C.

    io = IOLoop(dp, workers=0)   # 0: forward inside poll(); N: on N worker threads
    io.attach(port, fd)          # non-blocking TAP fd for a fast-path port
                                 # (with workers: one queue fd per worker, a list)
    io.start() / io.stop()       # the worker threads (nogil for their whole life)
    io.watch(ctl_fd)             # a Python-managed fd (control socket), readable
    io.interest(ctl_fd, read, write)  # what to wait for on a watched fd from now on
    ready = io.poll(timeout_ms)  # waits (forwarding too, with no workers) until a
                                 # watched fd is ready or time is up

With workers, each owns one queue of every multi-queue TAP (the kernel's flow
hash keeps a flow on one queue, so on one worker), its own dataplane (slots,
TX queues, counters: Dataplane.worker()) and an epoll of its own; the Python
thread that calls poll() never forwards and never waits for a worker longer
than one table change (fastpath/sync.pxd).
"""
import os
import threading

from libc.errno cimport errno, EAGAIN, EINTR
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memset, memmove
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC, CLOCK_REALTIME
from posix.unistd cimport read, write, close

from fastpath.defs cimport *
from fastpath.sync cimport *

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

cdef extern from "<sys/eventfd.h>" nogil:
    int eventfd(unsigned int initval, int flags)
    enum:
        EFD_CLOEXEC
        EFD_NONBLOCK
    enum:
        EPOLLIN
        EPOLLOUT
        EPOLL_CTL_ADD
        EPOLL_CTL_MOD
        EPOLL_CTL_DEL
        EPOLL_CLOEXEC

cdef enum:
    WATCH_TAG = 0x10000       # event data >= this: a Python fd (data - WATCH_TAG)
    STOP_TAG = 0xFFFFFFFF     # a worker's eventfd: stop
    MAX_EVENTS = 64
    MAX_WORKERS = 16


cdef inline uint64_t mono_ms() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <uint64_t>ts.tv_sec * 1000 + <uint64_t>ts.tv_nsec // 1000000



cdef class Worker:
    def __cinit__(self, IOLoop io, Dataplane dp, int epfd):
        cdef epoll_event ev
        self.io = io
        self.dp = dp
        self.epfd = epfd
        self.evfd = -1
        for i in range(MAX_PORTS):
            self.fd[i] = -1
        memset(self.st, 0, sizeof(self.st))

    def _thread_main(self):
        with nogil:
            self.loop()

    cdef void loop(self) noexcept nogil:
        """A worker thread's whole life, without the GIL: wait, read a burst
        holding the table read side, run it, write it out, let go."""
        cdef epoll_event ev[MAX_EVENTS]
        cdef int ready[MAX_EVENTS]
        cdef int nev, i
        cdef uint32_t nready
        cdef pn_sync_t *sy = self.dp.sy
        cdef uint32_t wid = self.dp.wid
        while not ld32(&self.stopping):
            nev = epoll_wait(self.epfd, ev, MAX_EVENTS, 1000)
            if nev <= 0:
                continue                          # timeout, or EINTR
            inc(&self.wakeups)
            nready = 0
            for i in range(nev):
                if ev[i].data.u32 != STOP_TAG:
                    ready[nready] = <int>ev[i].data.u32
                    nready += 1
            if nready == 0:
                continue
            pn_read_lock(sy, wid)
            self.burst(ready, nready)
            pn_read_unlock(sy, wid)

    cdef void burst(self, int *ready, uint32_t nready) noexcept nogil:
        """One burst from the ready ports: read, run through the fast path,
        write out, count (a worker's loop and the inline poll() share it)."""
        cdef uint32_t n = self.round_burst(ready, nready)
        if n:
            self.dp.run(0, n, mono_ms())
            self.flush()
            inc(&self.bursts)
            add(&self.frames, n)

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
                        inc(&self.st[port].rx_errors)
                    break
                # A read that yields no frame still counts against the share:
                # an fd at end of file (read() returns 0 forever, less than a
                # vnet header) would otherwise keep this loop spinning, nogil,
                # and poll() would never return.
                if <uint32_t>r < hl:
                    inc(&self.st[port].rx_errors)
                    got += 1
                    continue
                if <uint32_t>r == cap:
                    inc(&self.st[port].rx_truncated)    # may have been cut: drop it
                    got += 1
                    continue
                pk.len = <uint32_t>r - hl
                pk.in_port = <uint16_t>port
                if ld8(&self.io.cap_on[port]):
                    self.io.capture(<uint16_t>port, 0, pk.data, pk.len)
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
                add(&self.st[port].tx_no_fd, self.dp.txq_len[port])
                continue
            hl = self.dp.pvnet[port]
            for q in range(self.dp.txq_len[port]):
                idx = self.dp.txq[<size_t>port * self.dp.qcap + q]
                pk = &self.dp.pkts[idx]
                if ld8(&self.io.cap_on[port]):
                    self.io.capture(<uint16_t>port, 1, pk.data, pk.len)
                if write(fd, pk.data - hl, pk.len + hl) < 0:
                    inc(&self.st[port].tx_errors)


cdef class IOLoop:
    def __cinit__(self, Dataplane dp, int workers=0):
        cdef epoll_event ev
        cdef Worker w
        cdef int k, efd
        self.epfd = -1
        if not 0 <= workers <= MAX_WORKERS:
            raise ValueError(f"workers must be 0..{MAX_WORKERS}, got {workers}")
        if dp.primary is not None:
            raise ValueError("an IOLoop runs on a primary dataplane (it makes the workers)")
        self.dp = dp
        self.wk = []
        self.epfd = epoll_create1(EPOLL_CLOEXEC)
        if self.epfd < 0:
            raise OSError(errno, os.strerror(errno))
        self.nworkers = workers
        if workers == 0:
            self.inline = Worker(self, dp, self.epfd)
        for k in range(workers):
            efd = epoll_create1(EPOLL_CLOEXEC)
            if efd < 0:
                raise OSError(errno, os.strerror(errno))
            w = Worker(self, dp.worker(), efd)
            self.wk.append(w)
            w.evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)
            if w.evfd < 0:
                raise OSError(errno, os.strerror(errno))
            ev.events = EPOLLIN
            ev.data.u64 = 0
            ev.data.u32 = STOP_TAG
            if epoll_ctl(efd, EPOLL_CTL_ADD, w.evfd, &ev) != 0:
                raise OSError(errno, os.strerror(errno))

    def __dealloc__(self):
        cdef Worker w
        if self.running:
            self.stop()
        if self.epfd >= 0:
            close(self.epfd)
        for w in self.wk or ():
            close(w.epfd)
            if w.evfd >= 0:
                close(w.evfd)
        free(self.cap_buf)

    @property
    def workers(self):
        """The workers' dataplanes (empty: forwarding runs inside poll())."""
        return [(<Worker>w).dp for w in self.wk]

    def start(self):
        """Start the worker threads (no-op without workers)."""
        cdef Worker w
        if self.running:
            return
        for k, w in enumerate(self.wk):
            st32(&w.stopping, 0)
            w.thread = threading.Thread(target=w._thread_main, name=f"podnet-worker-{k}", daemon=True)
            w.thread.start()
        self.running = True

    def stop(self):
        """Stop the worker threads and wait for them (each finishes its burst)."""
        cdef Worker w
        cdef uint64_t one = 1
        if not self.running:
            return
        for w in self.wk:
            st32(&w.stopping, 1)
            write(w.evfd, &one, 8)
        for w in self.wk:
            w.thread.join()
            w.thread = None
        self.running = False

    # ---- capture -----------------------------------------------------------

    cdef void capture(self, uint16_t port, uint16_t dir, const uint8_t *data, uint32_t length) noexcept nogil:
        cdef timespec ts
        cdef uint32_t keep
        cdef size_t need
        cdef cap_rec_t *rec
        pn_spin_lock(&self.cap_lock)
        if self.cap_buf == NULL:                  # stopped since the worker looked
            pn_spin_unlock(&self.cap_lock)
            return
        keep = length if length < self.snaplen else self.snaplen
        need = (sizeof(cap_rec_t) + keep + 7) & ~(<size_t>7)
        if self.cap_used + need > self.cap_size:
            self.cap_lost += 1
            pn_spin_unlock(&self.cap_lock)
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
        pn_spin_unlock(&self.cap_lock)

    cdef bint _attached(self, int port):
        if self.nworkers == 0:
            return self.inline.fd[port] >= 0
        return (<Worker>self.wk[0]).fd[port] >= 0

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
            if not 0 <= p < MAX_PORTS or not self._attached(p):
                raise ValueError(f"port {p} is not attached")
        if not 64 <= snaplen <= 262144:
            raise ValueError(f"snaplen must be 64..262144, got {snaplen}")
        if not 65536 <= bufsize <= 256 << 20:
            raise ValueError(f"capture buffer must be 64 KB..256 MB, got {bufsize}")
        cdef uint8_t *buf = <uint8_t *>malloc(bufsize)
        if buf == NULL:
            raise MemoryError("capture buffer")
        pn_spin_lock(&self.cap_lock)
        self.cap_buf = buf
        self.cap_size = bufsize
        self.cap_used = 0
        self.snaplen = snaplen
        self.cap_frames = 0
        self.cap_lost = 0
        pn_spin_unlock(&self.cap_lock)
        for p in range(MAX_PORTS):
            st8(&self.cap_on[p], 0)
        for p in ports:
            st8(&self.cap_on[p], 1)
        self.capturing = True

    def capture_read(self):
        """Frames captured since the last read: [(ts_ns, port, dir, wire_len, bytes)]."""
        cdef size_t off = 0, used
        cdef cap_rec_t *rec
        cdef bytes chunk
        out = []
        if not self.capturing:
            return out
        pn_spin_lock(&self.cap_lock)              # taken out whole, parsed without the lock
        used = self.cap_used
        pn_spin_unlock(&self.cap_lock)
        chunk = (<char *>self.cap_buf)[:used]     # records below `used` are complete and stay put
        pn_spin_lock(&self.cap_lock)
        if self.cap_used > used:                  # appended meanwhile: keep those for the next read
            memmove(self.cap_buf, self.cap_buf + used, self.cap_used - used)
        self.cap_used -= used
        pn_spin_unlock(&self.cap_lock)
        cdef const char *base = chunk
        while off < used:
            rec = <cap_rec_t *>(base + off)
            out.append((rec.ts_ns, rec.port, rec.dir, rec.len,
                        (<char *>rec + sizeof(cap_rec_t))[:rec.caplen]))
            off += (sizeof(cap_rec_t) + rec.caplen + 7) & ~(<size_t>7)
        return out

    def capture_stop(self):
        cdef uint8_t *buf
        for p in range(MAX_PORTS):
            st8(&self.cap_on[p], 0)
        self.capturing = False
        pn_spin_lock(&self.cap_lock)
        buf = self.cap_buf
        self.cap_buf = NULL
        self.cap_size = self.cap_used = 0
        pn_spin_unlock(&self.cap_lock)
        free(buf)

    def capture_info(self):
        pn_spin_lock(&self.cap_lock)
        frames, lost, used = self.cap_frames, self.cap_lost, self.cap_used
        pn_spin_unlock(&self.cap_lock)
        return {"running": bool(self.capturing), "ports": [p for p in range(MAX_PORTS) if self.cap_on[p]],
                "frames": frames, "lost": lost, "buffered_bytes": used}

    def _ctl(self, int epfd, int op, int fd, uint32_t tag, uint32_t events=EPOLLIN):
        cdef epoll_event ev
        ev.events = events
        ev.data.u64 = 0
        ev.data.u32 = tag
        if epoll_ctl(epfd, op, fd, &ev) != 0:
            raise OSError(errno, f"epoll_ctl fd {fd}: {os.strerror(errno)}")

    def _forwarders(self):
        return [self.inline] if self.nworkers == 0 else self.wk

    def attach(self, int port, fds):
        """Serve port from fds: one non-blocking TAP queue fd per worker (a
        list), or one fd (an int) with no workers or one. The port must
        exist in the dataplane."""
        cdef Worker w
        if port not in self.dp.ports:
            raise KeyError(f"no port {port} in the dataplane")
        fl = [fds] if isinstance(fds, int) else list(fds)
        fw = self._forwarders()
        if len(fl) != len(fw):
            raise ValueError(f"port {port}: {len(fl)} fds for {len(fw)} "
                             f"worker{'s' if len(fw) != 1 else ''} (one queue each)")
        if self._attached(port):
            raise ValueError(f"port {port} already has an fd")
        for fd in fl:
            os.set_blocking(fd, False)
        done = []
        try:
            for w, fd in zip(fw, fl):
                pn_write_lock(self.dp.sy)         # the worker reads fd[] mid-burst
                w.fd[port] = fd
                pn_write_unlock(self.dp.sy)
                done.append(w)
                self._ctl(w.epfd, EPOLL_CTL_ADD, fd, port)
        except OSError:
            for w in done:
                self._detach_one(w, port)
            raise

    cdef void _detach_one(self, Worker w, int port):
        cdef epoll_event ev
        if w.fd[port] >= 0:
            epoll_ctl(w.epfd, EPOLL_CTL_DEL, w.fd[port], &ev)   # fd already closed: epoll forgot it
        pn_write_lock(self.dp.sy)
        w.fd[port] = -1
        pn_write_unlock(self.dp.sy)

    def detach(self, int port):
        if not 0 <= port < MAX_PORTS or not self._attached(port):
            raise KeyError(f"port {port} has no fd")
        for w in self._forwarders():
            self._detach_one(w, port)

    def watch(self, int fd, bint read=True, bint write=False):
        """poll() returns fd when it is readable (read) and/or writable
        (write); a hang-up or error always counts as ready."""
        self._ctl(self.epfd, EPOLL_CTL_ADD, fd, WATCH_TAG + fd, (EPOLLIN if read else 0) | (EPOLLOUT if write else 0))

    def interest(self, int fd, bint read=True, bint write=False):
        """Change what a watched fd waits for. The control socket asks for
        writability only while a reply is pending: a socket with room in its
        buffer is always writable, so watching it for ever would make every
        poll() return at once."""
        self._ctl(self.epfd, EPOLL_CTL_MOD, fd, WATCH_TAG + fd, (EPOLLIN if read else 0) | (EPOLLOUT if write else 0))

    def unwatch(self, int fd):
        self._ctl(self.epfd, EPOLL_CTL_DEL, fd, WATCH_TAG + fd)

    def poll(self, int timeout_ms=100):
        """Wait until a watched fd is ready (as watch()/interest() asked) or
        timeout_ms passes, moving frames meanwhile if there are no workers.
        Returns the ready watched fds (maybe empty)."""
        cdef epoll_event ev[MAX_EVENTS]
        cdef int ready[MAX_EVENTS]
        cdef int nev, i, wait
        cdef uint32_t nready, nwatched = 0
        cdef int watched[MAX_EVENTS]
        cdef uint64_t deadline = mono_ms() + <uint64_t>max(timeout_ms, 0), now
        cdef bint interrupted = False
        cdef Worker w = self.inline
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
                nready = 0
                for i in range(nev):
                    if ev[i].data.u32 >= WATCH_TAG:
                        watched[nwatched] = <int>(ev[i].data.u32 - WATCH_TAG)
                        nwatched += 1
                    else:
                        ready[nready] = <int>ev[i].data.u32
                        nready += 1
                if nready and w is not None:
                    inc(&w.wakeups)
                    w.burst(ready, nready)
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
        """Wakeups, bursts and frames summed over the forwarders (and each
        worker's own under "workers"), I/O errors per port."""
        cdef Worker w
        cdef int p
        ports = {}
        fw = self._forwarders()
        for p in range(MAX_PORTS):
            fd = (<Worker>fw[0]).fd[p]
            tot = {"rx_errors": 0, "rx_truncated": 0, "tx_errors": 0, "tx_no_fd": 0}
            for w in fw:
                tot["rx_errors"] += ld(&w.st[p].rx_errors)
                tot["rx_truncated"] += ld(&w.st[p].rx_truncated)
                tot["tx_errors"] += ld(&w.st[p].tx_errors)
                tot["tx_no_fd"] += ld(&w.st[p].tx_no_fd)
            if fd >= 0 or tot["tx_no_fd"]:
                ports[p] = {"fd": fd, **tot}
        per = [{"wakeups": ld(&w.wakeups), "bursts": ld(&w.bursts), "frames": ld(&w.frames)} for w in fw]
        bursts = sum(x["bursts"] for x in per)
        frames = sum(x["frames"] for x in per)
        out = {"wakeups": sum(x["wakeups"] for x in per), "bursts": bursts, "frames": frames,
               "frames_per_burst": (frames / bursts) if bursts else 0.0, "ports": ports}
        if self.nworkers:
            out["workers"] = per
        return out
