# The agent's I/O loop in C: epoll over the ports' TAP fds, read each ready
# port until EAGAIN (a burst), run the fast path, flush the TX queues with
# write(). Python only sees control-socket events and timeouts.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t
from fastpath.defs cimport MAX_PORTS
from fastpath.burst cimport Dataplane

ctypedef struct io_stats_t:
    uint64_t rx_errors        # read() failed (other than EAGAIN)
    uint64_t rx_truncated     # frame larger than a slot (cut by read())
    uint64_t tx_errors        # write() failed
    uint64_t tx_no_fd         # queued for a port with no fd attached

ctypedef struct cap_rec_t:      # one captured frame in the capture buffer, data follows
    uint64_t ts_ns            # CLOCK_REALTIME, for pcap
    uint32_t len              # the frame's length on the wire
    uint32_t caplen           # bytes kept (<= snaplen)
    uint16_t port
    uint16_t dir              # 0 received from the port, 1 sent to it

cdef class Worker:
    # One forwarding thread (or, with no workers, the control thread's
    # poll()): an epoll over its queue fd of every port, read into its own
    # dataplane's slots, the fast path run as a reader of the tables, its TX
    # queues written back to the same queue fds.
    cdef IOLoop io
    cdef Dataplane dp
    cdef int epfd
    cdef int evfd                 # eventfd: wakes the thread to stop
    cdef int fd[MAX_PORTS]
    cdef io_stats_t st[MAX_PORTS]
    cdef uint64_t wakeups
    cdef uint64_t bursts
    cdef uint64_t frames
    cdef uint32_t stopping
    cdef object thread
    cdef void burst(self, int *ready, uint32_t nready) noexcept nogil
    cdef uint32_t round_burst(self, int *ready, uint32_t nready) noexcept nogil
    cdef void flush(self) noexcept nogil
    cdef void loop(self) noexcept nogil

cdef class IOLoop:
    cdef Dataplane dp
    cdef int epfd                 # the control thread's: watched fds (and ports, with no workers)
    cdef Worker inline            # forwarding inside poll() when there are no workers
    cdef list wk                  # the worker threads' Workers
    cdef readonly uint32_t nworkers
    cdef bint running
    # capture: frames crossing the chosen ports are copied into one bounded
    # buffer that the agent drains between polls (podnet capture); workers
    # append under cap_lock
    cdef uint32_t cap_lock
    cdef uint8_t cap_on[MAX_PORTS]
    cdef uint8_t *cap_buf
    cdef size_t cap_size
    cdef size_t cap_used
    cdef uint32_t snaplen
    cdef uint64_t cap_frames
    cdef uint64_t cap_lost     # did not fit: the reader was too slow
    cdef bint capturing
    cdef void capture(self, uint16_t port, uint16_t dir, const uint8_t *data, uint32_t length) noexcept nogil
    cdef bint _attached(self, int port)
    cdef void _detach_one(self, Worker w, int port)
