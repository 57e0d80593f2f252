# Address and port rewrites for service NAT, with checksums kept right
# (RFC 1624) for both complete checksums and offloaded partial ones (a
# NEEDS_CSUM frame carries only the pseudo-header sum in its L4 field: then
# addresses are updated without the complement and ports not at all, as
# Linux's inet_proto_csum_replace* do). UDP checksum 0 means "none".
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy
from fastpath.defs cimport *
from fastpath.checksum cimport *
from fastpath.packets cimport *

cdef inline uint8_t *l4_csum(pkt_t *pk) noexcept nogil:
    if pk.m.l4_proto == 6:
        return pk.data + pk.m.l4_off + 16
    if pk.m.l4_proto == 17:
        return pk.data + pk.m.l4_off + 6
    return NULL

cdef inline void csum_partial_update32(uint8_t *field, uint32_t old, uint32_t new) noexcept nogil:
    cdef uint64_t s = get16(field)
    s += (~(old >> 16) & 0xffff) + (~old & 0xffff) + (new >> 16) + (new & 0xffff)
    put16(field, csum_fold(s))

cdef inline void nat_ip(pkt_t *pk, uint32_t off, uint32_t new, bint partial) noexcept nogil:
    """Rewrite the IPv4 address at l3_off+off (12 source, 16 destination)."""
    cdef uint8_t *ip = pk.data + pk.m.l3_off
    cdef uint32_t old = get32(ip + off)
    cdef uint8_t *c = l4_csum(pk)
    if old == new:
        return
    put32(ip + off, new)
    csum_update32(ip + IP4_CSUM, old, new)
    if c == NULL or (pk.m.l4_proto == 17 and get16(c) == 0 and not partial):
        return
    if partial:
        csum_partial_update32(c, old, new)
    else:
        csum_update32(c, old, new)
        if pk.m.l4_proto == 17 and get16(c) == 0:
            put16(c, 0xffff)

cdef inline void nat_port(pkt_t *pk, uint32_t off, uint16_t new, bint partial) noexcept nogil:
    """Rewrite the L4 port at l4_off+off (0 source, 2 destination)."""
    cdef uint8_t *p = pk.data + pk.m.l4_off + off
    cdef uint16_t old = get16(p)
    cdef uint8_t *c = l4_csum(pk)
    if old == new:
        return
    put16(p, new)
    if partial or c == NULL or (pk.m.l4_proto == 17 and get16(c) == 0):
        return
    csum_update16(c, old, new)
    if pk.m.l4_proto == 17 and get16(c) == 0:
        put16(c, 0xffff)

cdef inline int tcp_reset(pkt_t *pk, const uint8_t *gw_mac) noexcept nogil:
    """Turn a TCP segment into the RST that answers it (RFC 793, "reset
    generation"), from the address it was sent to. Returns 0, or -1 for a RST."""
    cdef uint8_t *ip = pk.data + pk.m.l3_off
    cdef uint8_t *t = pk.data + pk.m.l4_off
    cdef uint8_t flags = t[TCP_FLAGS]
    cdef uint32_t seq = get32(t + 4), ack = get32(t + 8), paylen, src, dst
    cdef uint16_t sport = get16(t), dport = get16(t + 2)
    cdef uint64_t s
    if flags & 0x04:
        return -1                                   # never answer a RST
    paylen = pk.m.l4_len - (t[12] >> 4) * 4u
    memcpy(pk.data, pk.data + ETH_SRC, 6)
    memcpy(pk.data + ETH_SRC, gw_mac, 6)
    src = get32(ip + IP4_SRC)
    dst = get32(ip + IP4_DST)
    ip[0] = 0x45
    ip[1] = 0
    put16(ip + 2, 40)
    put16(ip + 4, 0)
    put16(ip + IP4_FRAG, 0x4000)
    ip[IP4_TTL] = 64
    ip[IP4_PROTO] = 6
    put16(ip + IP4_CSUM, 0)
    put32(ip + IP4_SRC, dst)
    put32(ip + IP4_DST, src)
    put16(ip + IP4_CSUM, csum(ip, IP4_HLEN))
    t = ip + 20
    put16(t, dport)
    put16(t + 2, sport)
    if flags & 0x10:                                # ACK set: RST with seq = their ack
        put32(t + 4, ack)
        put32(t + 8, 0)
        t[TCP_FLAGS] = 0x04
    else:
        put32(t + 4, 0)
        put32(t + 8, seq + paylen + (1 if flags & 0x02 else 0) + (1 if flags & 0x01 else 0))
        t[TCP_FLAGS] = 0x14
    t[12] = 0x50
    put16(t + 14, 0)
    put16(t + 16, 0)
    put16(t + 18, 0)
    s = csum_partial(ip + IP4_SRC, 8, 0) + 6 + 20      # pseudo-header
    put16(t + 16, <uint16_t>(~csum_fold(csum_partial(t, 20, s)) & 0xffff))
    pk.len = pk.m.l3_off + 40
    pk.m.l3_len = 40
    pk.m.l4_off = pk.m.l3_off + 20
    pk.m.l4_len = 20
    return 0
