# Packet trace: when Dataplane.tr points at a trace_t, the burst loop notes
# each decision it takes for the frame (one frame per traced burst). The
# traced frame runs the same source as real traffic, compiled a second time
# with the hooks in (mode_t below); the events are plain C.
from libc.stdint cimport uint16_t, uint32_t

cdef enum:
    TRACE_MAX = 64

# Event codes; EVENT_NAMES in trace.pyx follows this order.
cdef enum:
    EV_RX = 0        # a=port b=len c=vnet flags | gso_type << 8
    EV_PARSE         # a=ethertype b=l4 proto c=parse flags
    EV_DROP          # a=reason
    EV_LEARN         # a=domain b=port
    EV_ARP           # a=gateway action on an ARP frame (GW_*)
    EV_GW            # a=gateway action on an IPv4 frame (GW_* or -drop) b=destination IP
    EV_SERVICE       # a=ClusterIP b=port c=proto
    EV_CT            # a=CT_EV_* b=connection index c=TCP state
    EV_PICK          # a=backend IP b=backend port c=backends | lb << 16 | affinity hit << 24
    EV_DNAT          # a=new destination IP b=new destination port
    EV_SNAT          # a=new source IP (hairpin)
    EV_UNNAT         # a=ClusterIP b=port c=client IP restored after hairpin SNAT (0: none)
    EV_REJECT        # a=proto (RST or ICMP port unreachable)
    EV_FDB           # a=egress port (0xffffffff: miss) b=domain
    EV_FLOOD         # a=domain b=ports
    EV_ENCAP         # a=uplink port
    EV_VTEP_ARP      # the VTEP's MAC is unknown: the frame became an ARP request
    EV_DECAP         # a=VNI
    EV_REPLY         # a=port: the gateway or node answered in place
    EV_LOCAL         # consumed by the gateway/node
    EV_TX            # a=port b=len
    N_EV

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
