# Packet trace: when Dataplane.tr points at a trace_t, the burst loop notes
# each decision it takes for the frame (one frame per traced burst). The
# traced frame runs the same source as real traffic, compiled a second time
# with the hooks in (mode_t below); the events are plain C.
from libc.stdint cimport uint16_t, uint32_t

cdef enum:
    TRACE_MAX = 64

# Event codes: EV_* and N_EV, generated from the one list in reasons.py.
include "events.pxi"

cdef enum:                   # EV_CT kinds
    CT_EV_HIT = 0            # an existing connection, original direction
    CT_EV_NEW = 1            # inserted
    CT_EV_EXPIRED = 2        # found but expired: deleted
    CT_EV_REUSED = 3         # a SYN on a closing connection's tuple: deleted, starts anew
    CT_EV_DEAD = 4           # its backend is gone: deleted and rejected

# The burst loop is compiled twice over this fused type: untraced (what
# traffic runs: no hooks at all) and traced (trace()); `mode_t is traced_t`
# is decided by the compiler.
ctypedef struct untraced_t:
    char unused
ctypedef struct traced_t:
    char unused
ctypedef fused mode_t:
    untraced_t
    traced_t

ctypedef struct trace_ev_t:
    uint16_t ev
    uint32_t a
    uint32_t b
    uint32_t c

ctypedef struct trace_t:
    uint32_t n               # events noted (may exceed TRACE_MAX: the rest were lost)
    trace_ev_t ev[TRACE_MAX]

cdef inline void tr_note(trace_t *tr, uint16_t ev, uint32_t a, uint32_t b, uint32_t c) noexcept nogil:
    if tr.n < TRACE_MAX:
        tr.ev[tr.n].ev = ev
        tr.ev[tr.n].a = a
        tr.ev[tr.n].b = b
        tr.ev[tr.n].c = c
    tr.n += 1
