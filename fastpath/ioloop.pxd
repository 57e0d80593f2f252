# The agent's I/O loop in C: epoll over the ports' TAP fds, read each ready
# port until EAGAIN (a burst), run the fast path, flush the TX queues with
# write(). Python only sees control-socket events and timeouts.
from libc.stdint cimport uint16_t, uint32_t, uint64_t, int32_t
from fastpath.defs cimport MAX_PORTS
from fastpath.burst cimport Dataplane

ctypedef struct io_stats_t:
    uint64_t rx_errors        # read() failed (other than EAGAIN)
    uint64_t rx_truncated     # frame larger than a slot (cut by read())
    uint64_t tx_errors        # write() failed
    uint64_t tx_no_fd         # queued for a port with no fd attached

cdef class IOLoop:
    cdef Dataplane dp
    cdef int epfd
    cdef int fd[MAX_PORTS]
    cdef io_stats_t st[MAX_PORTS]
    cdef uint64_t wakeups
    cdef uint64_t bursts
    cdef uint64_t frames
    cdef uint32_t round_burst(self, int *ready, uint32_t nready) noexcept nogil
    cdef void flush(self) noexcept nogil
