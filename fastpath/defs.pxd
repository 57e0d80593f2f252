# Shared C declarations of the fast path: frame descriptors, parse results,
# drop reasons. Every stage cimports this; nothing here allocates.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t

# A branch hint for the rare cases of the per-frame path: without them GCC
# guesses the DNAT/route calls after a chain of early returns are unlikely
# and leaves them out of line.
cdef extern from *:
    """
    #define PN_UNLIKELY(x) __builtin_expect(!!(x), 0)
    """
    bint unlikely "PN_UNLIKELY"(bint) noexcept nogil

cdef enum:
    MAX_PORTS = 256        # port ids are 0..255; tables are sized once
    MAX_DOMAINS = 4096     # bridge domain ids fit the 12 low bits of an FDB key
    HEADROOM = 128         # bytes kept free before each frame (vnet header, outer headers)
    MAX_SEGMENT = 9472     # bytes of a segment slot, headroom included: one frame at the largest fabric MTU (9216)

# Where a frame goes after the burst loop.
cdef enum:
    OUT_DROP = -1
    OUT_FLOOD = -2
    OUT_LOCAL = -3         # consumed by the gateway (an ARP reply it learned from)

# Parse flags (meta_t.flags).
cdef enum:
    F_ARP = 1
    F_IP4 = 2
    F_IP6 = 4
    F_FRAG = 8        # IPv4 fragment other than the first: no L4 header
    F_L4 = 16         # l4_off/l4_len describe a complete TCP/UDP/ICMP header
    F_BCAST = 32      # destination MAC is broadcast or multicast

# Drop reasons: DROP_* and N_DROP, generated from the one list in reasons.py.
include "drops.pxi"

ctypedef struct meta_t:
    uint16_t ethertype   # after any VLAN tags
    uint16_t l3_off
    uint16_t l4_off
    uint16_t vlan[2]     # VLAN ids, outer first
    uint8_t n_vlan
    uint8_t l4_proto     # IPv4 protocol / IPv6 next header
    uint8_t flags
    uint32_t l3_len      # IP total length (IPv6: 40 + payload length)
    uint32_t l4_len      # bytes from l4_off to the end of the IP datagram

ctypedef struct pkt_t:
    uint8_t *data        # frame start (slot base + HEADROOM on receive)
    uint32_t len
    uint16_t in_port
    uint16_t domain
    int32_t out          # egress port, OUT_FLOOD or OUT_DROP
    uint16_t reason      # DROP_* when out == OUT_DROP
    uint8_t vnet         # bytes of virtio-net header in front of data (its port's; a pod's once decapsulated)
    meta_t m
