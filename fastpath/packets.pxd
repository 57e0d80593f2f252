# Header layouts and MAC keys: the one home of the offsets the fast path
# reads and writes (in the spirit of OVS's lib/packets.h), so a stage says
# IP4_DST rather than `ip + 16`. Offsets are from the start of their header.
# Nothing here allocates or checks bounds: callers have parsed the frame.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy
from fastpath.checksum cimport put16

cdef enum:
    ETH_DST = 0
    ETH_SRC = 6
    ETH_TYPE = 12
    ETH_HLEN = 14
    ETHERTYPE_IP4 = 0x0800
    ETHERTYPE_ARP = 0x0806

    IP4_VHL = 0            # version << 4 | IHL
    IP4_TOS = 1            # DSCP << 2 | ECN
    IP4_LEN = 2
    IP4_ID = 4
    IP4_FRAG = 6           # flags << 13 | fragment offset
    IP4_TTL = 8
    IP4_PROTO = 9
    IP4_CSUM = 10
    IP4_SRC = 12
    IP4_DST = 16
    IP4_HLEN = 20          # without options
    IP4_DF = 0x4000
    IP4_MF = 0x2000
    IP4_OFFMASK = 0x1fff

    IPPROTO_ICMP = 1
    IPPROTO_IPIP = 4
    IPPROTO_TCP = 6
    IPPROTO_UDP = 17

    ECN_MASK = 3           # RFC 3168: the two low bits of the TOS byte
    ECN_NOT_ECT = 0
    ECN_ECT1 = 1
    ECN_ECT0 = 2
    ECN_CE = 3

    UDP_SPORT = 0
    UDP_DPORT = 2
    UDP_LEN = 4
    UDP_CSUM = 6
    UDP_HLEN = 8

    L4_SPORT = 0           # TCP and UDP alike
    L4_DPORT = 2
    TCP_FLAGS = 13

    ARP_OP = 6             # Ethernet/IPv4 ARP: offsets from the ARP header
    ARP_SHA = 8
    ARP_SPA = 14
    ARP_THA = 18
    ARP_TPA = 24
    ARP_LEN = 28

# A MAC as a key: the 6 bytes in the top 48 bits of a uint64 (one 8-byte
# load, the two bytes after the MAC masked off). FDB keys, the gateway's and
# the underlay's MAC, and the port guard all compare MACs this way.
cdef extern from *:
    """
    #include <string.h>
    /* 8 bytes from a possibly unaligned address, most significant first. */
    static inline uint64_t podnet_load_be64(const uint8_t *p) {
        uint64_t v; memcpy(&v, p, 8); return __builtin_bswap64(v);
    }
    """
    uint64_t load_be64 "podnet_load_be64"(const uint8_t *p) noexcept nogil

cdef inline uint64_t mac_key(const uint8_t *mac) noexcept nogil:
    """The MAC at mac as a key. Callers guarantee 8 readable bytes (a MAC
    inside an Ethernet header or an ARP body always has them)."""
    return load_be64(mac) & 0xFFFFFFFFFFFF0000ULL

cdef inline void eth_write(uint8_t *p, const uint8_t *dst, const uint8_t *src, uint16_t ethertype) noexcept nogil:
    memcpy(p + ETH_DST, dst, 6)
    memcpy(p + ETH_SRC, src, 6)
    put16(p + ETH_TYPE, ethertype)
