# IP-in-IP (RFC 2003), Calico's default encapsulation: the inner IPv4 packet
# (its Ethernet header dropped) behind an outer IPv4 header, protocol 4. The
# outer header is what Linux's ipip device writes with its defaults (ttl
# inherit, tos 0, pmtudisc): TTL copied from the inner packet, DSCP 0, DF
# always set; ECN as RFC 6040 says (normal mode: the inner ECN field copied
# out; on decap, CE carried in). There is no virtio-net GSO type for IPIP,
# so a TCP super-frame cannot leave whole: with tunnel_gso (segmentation on)
# the fast path cuts it into segments itself (ipip_segment, into the
# burst's segment slots); without, pods get no TSO and send MTU-sized frames.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset
from fastpath.defs cimport *
from fastpath.packets cimport *
from fastpath.checksum cimport *
from fastpath.vnet cimport *
from fastpath.overlay cimport *

cdef enum:
    IPIP_OVERHEAD = 20           # the outer IPv4 header
    IPIP_HDR = 34                # outer Ethernet 14 + IPv4 20, as written

cdef inline void ipip_template(const overlay_t *ov, vtep_t *v) noexcept nogil:
    """Outer Ethernet/IPv4 toward v; encap patches TOS (ECN), length, id,
    TTL and the checksum (from hsum, which has them zero)."""
    cdef uint8_t *o = v.hdr
    memset(o, 0, MAX_TUNNEL_HDR)
    eth_write(o, v.mac, ov.mac, ETHERTYPE_IP4)
    o[ETH_HLEN + IP4_VHL] = 0x45
    put16(o + ETH_HLEN + IP4_FRAG, IP4_DF)
    o[ETH_HLEN + IP4_PROTO] = IPPROTO_IPIP
    put32(o + ETH_HLEN + IP4_SRC, ov.ip)
    put32(o + ETH_HLEN + IP4_DST, v.ip)
    v.hsum = csum_partial(o + ETH_HLEN, IP4_HLEN, 0)

cdef inline int ipip_encap(const overlay_t *ov, pkt_t *pk, const vtep_t *v, uint32_t out_vnet,
                           uint16_t *ip_id) noexcept nogil:
    """Encapsulate a routed IPv4 frame (TTL already decremented) toward v:
    the outer headers end where the inner IP header starts. 0 or -DROP_*."""
    cdef uint8_t *ip = pk.data + pk.m.l3_off
    cdef uint8_t *o = ip - IPIP_HDR
    cdef uint32_t tot = pk.m.l3_len + IPIP_OVERHEAD
    cdef uint8_t ttl = ip[IP4_TTL], ecn = ip[IP4_TOS] & ECN_MASK
    cdef vnet_t h
    vnet_read(pk.data - pk.vnet, pk.vnet, &h)
    if h.gso_type != VNET_GSO_NONE or tot > ov.mtu:
        return -DROP_TOO_BIG
    memcpy(o, v.hdr, IPIP_HDR)
    ip_id[0] += 1
    o[ETH_HLEN + IP4_TOS] = ecn
    o[ETH_HLEN + IP4_TTL] = ttl
    put16(o + ETH_HLEN + IP4_LEN, <uint16_t>tot)
    put16(o + ETH_HLEN + IP4_ID, ip_id[0])
    put16(o + ETH_HLEN + IP4_CSUM,
          <uint16_t>(~csum_fold(v.hsum + tot + ip_id[0] + (<uint32_t>ttl << 8) + ecn) & 0xffff))
    if h.flags & VNET_F_NEEDS_CSUM:
        h.csum_start = <uint16_t>(h.csum_start + (pk.data - o))
    h.hdr_len = 0
    h.outer_th_offset = 0
    h.inner_nh_offset = 0
    h.flags &= ~VNET_F_UDP_TUNNEL_CSUM
    vnet_write(o - out_vnet, out_vnet, &h)
    pk.data = o
    pk.len = tot + ETH_HLEN
    return 0

cdef inline int ipip_segment(const overlay_t *ov, const pkt_t *pk, const vtep_t *v, pkt_t *segs,
                             uint32_t nfree, uint32_t out_vnet, uint16_t *ip_id) noexcept nogil:
    """TSO in the fast path: a TCP/IPv4 super-frame (virtio-net GSO
    TCPV4) cut into MSS-sized segments, each its own IP-in-IP frame in
    segs[0:n] (the burst's segment slots; the super-frame itself is not
    sent). Per segment, as Linux's tcp_gso_segment does: the headers
    copied, inner total length, an inner IP id one more than the last,
    the inner header checksum, the sequence number advanced by the bytes
    before it, FIN and PSH on the last segment only, CWR on the first
    only; the TCP checksum is left partial (pseudo-header sum,
    NEEDS_CSUM in the segment's header, for the receiver or the kernel
    to complete) where the uplink has virtio-net headers, else made
    whole. Returns n or -DROP_*."""
    cdef const uint8_t *ip = pk.data + pk.m.l3_off
    cdef uint32_t ihl = (ip[IP4_VHL] & 0x0f) * 4u, thl, hl, mss, plen, nseg, k, chunk, tot, tl
    cdef uint32_t src = get32(ip + IP4_SRC), dst = get32(ip + IP4_DST), seq0
    cdef uint64_t pseudo
    cdef uint16_t id0 = get16(ip + IP4_ID)
    cdef uint8_t flags, ttl = ip[IP4_TTL], ecn = ip[IP4_TOS] & ECN_MASK
    cdef uint8_t *d
    cdef uint8_t *ii
    cdef uint8_t *t
    cdef uint8_t *o
    cdef vnet_t h
    if pk.m.l4_proto != IPPROTO_TCP or not (pk.m.flags & F_L4) or (pk.m.flags & F_FRAG):
        return -DROP_TOO_BIG
    vnet_read(pk.data - pk.vnet, pk.vnet, &h)
    if (h.gso_type & ~VNET_GSO_ECN) != VNET_GSO_TCPV4:
        return -DROP_TOO_BIG
    thl = (ip[ihl + 12] >> 4) * 4u
    hl = ihl + thl
    mss = h.gso_size
    if mss == 0 or hl > pk.m.l3_len or IPIP_OVERHEAD + hl + mss > ov.mtu or \
            IPIP_HDR + hl + mss > MAX_SEGMENT - HEADROOM:
        return -DROP_TOO_BIG
    plen = pk.m.l3_len - hl
    nseg = (plen + mss - 1) // mss if plen else 1
    if nseg > nfree:
        return -DROP_SEG_FULL
    seq0 = get32(ip + ihl + 4)
    flags = ip[ihl + TCP_FLAGS]
    pseudo = (src >> 16) + (src & 0xffff) + (dst >> 16) + (dst & 0xffff) + IPPROTO_TCP
    for k in range(nseg):
        chunk = plen - k * mss if plen - k * mss < mss else mss
        d = segs[k].data
        memcpy(d, v.hdr, IPIP_HDR)
        memcpy(d + IPIP_HDR, ip, hl)
        memcpy(d + IPIP_HDR + hl, ip + hl + k * mss, chunk)
        ii = d + IPIP_HDR
        tot = hl + chunk
        put16(ii + IP4_LEN, <uint16_t>tot)
        put16(ii + IP4_ID, <uint16_t>(id0 + k))
        put16(ii + IP4_CSUM, 0)
        put16(ii + IP4_CSUM, csum(ii, ihl))
        t = ii + ihl
        put32(t + 4, <uint32_t>(seq0 + k * mss))
        t[TCP_FLAGS] = flags & ~(0x80 if k > 0 else 0) & ~(0x09 if k + 1 < nseg else 0)   # CWR; FIN, PSH
        tl = thl + chunk
        if out_vnet >= 10:
            put16(t + 16, csum_fold(pseudo + tl))
        else:
            put16(t + 16, 0)
            put16(t + 16, <uint16_t>(~csum_fold(csum_partial(t, tl, pseudo + tl)) & 0xffff))
        o = d + ETH_HLEN
        ip_id[0] += 1
        o[IP4_TOS] = ecn
        o[IP4_TTL] = ttl
        put16(o + IP4_LEN, <uint16_t>(tot + IPIP_OVERHEAD))
        put16(o + IP4_ID, ip_id[0])
        put16(o + IP4_CSUM, <uint16_t>(~csum_fold(v.hsum + tot + IPIP_OVERHEAD + ip_id[0]
                                                  + (<uint32_t>ttl << 8) + ecn) & 0xffff))
        segs[k].len = IPIP_HDR + tot
        segs[k].vnet = <uint8_t>out_vnet
        if out_vnet:
            memset(d - out_vnet, 0, out_vnet)
            if out_vnet >= 10:
                (d - out_vnet)[0] = VNET_F_NEEDS_CSUM
                put_le16(d - out_vnet + 6, <uint16_t>(IPIP_HDR + ihl))
                put_le16(d - out_vnet + 8, 16)
    return nseg

cdef inline int ipip_decap(const overlay_t *ov, pkt_t *pk, const uint8_t *gw_mac, uint32_t pod_vnet) noexcept nogil:
    """IPv4 to the node IP (underlay.pxd checked MAC, address, ARP, ICMP):
    protocol 4 from a known node, decapsulated into an Ethernet frame to the
    gateway MAC written just in front of the inner IP header. On OV_INNER pk
    describes that frame (unparsed), with a pod_vnet-byte header in front."""
    cdef uint8_t *p = pk.data
    cdef uint8_t *outer = p + pk.m.l3_off
    cdef uint8_t *inner = p + pk.m.l4_off
    cdef uint32_t n = pk.m.l4_len, ihl, tot, start
    cdef uint8_t oecn, iecn
    cdef uint16_t w
    cdef vnet_t h
    if pk.m.l4_proto != IPPROTO_IPIP:
        return -DROP_UPLINK_UNSUPPORTED
    if not ov_is_node(ov, get32(outer + IP4_SRC)):
        return -DROP_TUN_UNKNOWN_SRC
    if pk.m.flags & F_FRAG:
        return -DROP_IPIP_FRAG
    if n < IP4_HLEN or (inner[IP4_VHL] >> 4) != 4:
        return -DROP_IPIP_INNER
    ihl = (inner[IP4_VHL] & 0x0f) * 4u
    tot = get16(inner + IP4_LEN)
    if ihl < IP4_HLEN or ihl > n or tot < ihl or tot > n:
        return -DROP_IPIP_INNER
    # RFC 6040 sec. 4.2: CE in the outer header is carried into the inner
    # one; a Not-ECT inner packet cannot carry it and is dropped; ECT(1)
    # outer over ECT(0) inner is kept; everything else leaves the inner as is.
    oecn = outer[IP4_TOS] & ECN_MASK
    iecn = inner[IP4_TOS] & ECN_MASK
    if oecn == ECN_CE or (oecn == ECN_ECT1 and iecn == ECN_ECT0):
        if iecn == ECN_NOT_ECT:
            return -DROP_ECN_CE_NOT_ECT
        if iecn != oecn:
            w = get16(inner)
            inner[IP4_TOS] = (inner[IP4_TOS] & ~ECN_MASK) | oecn
            csum_update16(inner + IP4_CSUM, w, get16(inner))
    start = pk.m.l4_off - ETH_HLEN              # >= 20: clear of the outer MACs read below
    vnet_read(p - pk.vnet, pk.vnet, &h)
    h.flags &= ~VNET_F_UDP_TUNNEL_CSUM
    h.gso_type = VNET_GSO_NONE                  # a TAP never hands over IPIP super-frames
    vnet_strip(&h, start)
    memcpy(p + start + ETH_SRC, p + ETH_SRC, 6)
    memcpy(p + start + ETH_DST, gw_mac, 6)
    put16(p + start + ETH_TYPE, ETHERTYPE_IP4)
    pk.data = p + start
    pk.len = tot + ETH_HLEN
    pk.vnet = <uint8_t>pod_vnet
    vnet_write(pk.data - pod_vnet, pod_vnet, &h)
    return OV_INNER
