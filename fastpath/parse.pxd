# Frame parsing without copies: Ethernet, up to two VLAN tags, ARP, IPv4
# (IHL, options, fragments), IPv6 fixed header, TCP, UDP, ICMP.
# Inline so the burst loop compiles it in place; returns a DROP_* reason.
from libc.stdint cimport uint8_t, uint16_t, uint32_t
from fastpath.defs cimport *

from fastpath.checksum cimport get16 as be16

cdef inline uint16_t parse_l4(const uint8_t *p, meta_t *m) noexcept nogil:
    # p is the frame; m.l4_off/l4_len are set. Non-first fragments never get here.
    cdef uint32_t n = m.l4_len
    cdef const uint8_t *h = p + m.l4_off
    cdef uint32_t doff, ulen
    if m.l4_proto == 6:
        if n < 20:
            return DROP_L4_TRUNC
        doff = (h[12] >> 4) * 4u
        if doff < 20 or doff > n:
            return DROP_TCP_DOFF
    elif m.l4_proto == 17:
        if n < 8:
            return DROP_L4_TRUNC
        ulen = be16(h + 4)
        # A first fragment carries only part of the datagram; its UDP length
        # legitimately exceeds what is here.
        if ulen < 8 or (ulen > n and not (m.flags & F_FRAG)):
            return DROP_UDP_LEN
    elif m.l4_proto == 1 or m.l4_proto == 58:
        if n < 4:
            return DROP_L4_TRUNC
    else:
        return DROP_NONE
    m.flags |= F_L4
    return DROP_NONE

cdef inline uint16_t parse_ip4(const uint8_t *p, uint32_t len, meta_t *m) noexcept nogil:
    cdef uint32_t o = m.l3_off
    cdef uint32_t ihl, tot, frag
    if len < o + 20:
        return DROP_IP4_TRUNC
    if (p[o] >> 4) != 4:
        return DROP_IP4_VERSION
    ihl = (p[o] & 0x0f) * 4u
    if ihl < 20 or o + ihl > len:
        return DROP_IP4_IHL
    tot = be16(p + o + 2)
    if tot < ihl or o + tot > len:
        return DROP_IP4_LEN
    m.flags |= F_IP4
    m.l3_len = tot
    m.l4_proto = p[o + 9]
    m.l4_off = <uint16_t>(o + ihl)
    m.l4_len = tot - ihl
    frag = be16(p + o + 6)
    if frag & 0x1fff:
        m.flags |= F_FRAG           # middle or last fragment: no L4 header here
        return DROP_NONE
    if frag & 0x2000:
        m.flags |= F_FRAG           # first fragment: header present, datagram partial
    return parse_l4(p, m)

cdef inline uint16_t parse_ip6(const uint8_t *p, uint32_t len, meta_t *m) noexcept nogil:
    cdef uint32_t o = m.l3_off
    cdef uint32_t plen
    if len < o + 40:
        return DROP_IP6_TRUNC
    if (p[o] >> 4) != 6:
        return DROP_IP6_TRUNC
    plen = be16(p + o + 4)
    if o + 40 + plen > len:
        return DROP_IP6_LEN
    m.flags |= F_IP6
    m.l3_len = 40 + plen
    m.l4_proto = p[o + 6]
    m.l4_off = <uint16_t>(o + 40)
    m.l4_len = plen
    # Extension headers are not walked: such frames are bridged and routed
    # as IP, without L4 fields (F_L4 stays clear).
    return parse_l4(p, m)

cdef inline uint16_t parse_frame(const uint8_t *p, uint32_t len, meta_t *m) noexcept nogil:
    cdef uint32_t o = 12
    cdef uint16_t et
    m.flags = 0
    m.n_vlan = 0
    m.l4_proto = 0
    m.l3_len = 0
    m.l4_len = 0
    if len < 14:
        return DROP_RUNT
    if p[0] & 1:
        m.flags = F_BCAST
    et = be16(p + 12)
    while et == 0x8100 or et == 0x88a8:
        if m.n_vlan == 2:
            return DROP_VLAN_DEPTH
        if len < o + 6:
            return DROP_VLAN_TRUNC
        m.vlan[m.n_vlan] = be16(p + o + 2) & 0x0fff
        m.n_vlan += 1
        o += 4
        et = be16(p + o)
    m.ethertype = et
    m.l3_off = <uint16_t>(o + 2)
    m.l4_off = m.l3_off
    if et == 0x0800:
        return parse_ip4(p, len, m)
    if et == 0x86dd:
        return parse_ip6(p, len, m)
    if et == 0x0806:
        if len < m.l3_off + 28u:
            return DROP_ARP_TRUNC
        m.flags |= F_ARP
    return DROP_NONE
