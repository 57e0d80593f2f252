# VXLAN (RFC 7348), flannel's vxlan backend: the inner Ethernet frame behind
# outer Ethernet/IPv4/UDP/VXLAN headers, written into the headroom in front
# of the frame (the inner frame is never copied). One of the three modules
# behind tunnel.pxd: a header template per peer, encap, decap checks.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset
from fastpath.defs cimport *
from fastpath.packets cimport *
from fastpath.checksum cimport *
from fastpath.vnet cimport *
from fastpath.overlay cimport *

cdef enum:
    VXLAN_OVERHEAD = 50          # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
    VX_IP = 14                   # offsets in the outer header
    VX_UDP = 34
    VX_HDR = 42

cdef inline void vx_template(const overlay_t *ov, vtep_t *v) noexcept nogil:
    """Outer Ethernet/IPv4/UDP/VXLAN toward v: encap copies it and patches
    the lengths, id, source port and checksum (from hsum, incrementally)."""
    cdef uint8_t *o = v.hdr
    memset(o, 0, VXLAN_OVERHEAD)
    eth_write(o, v.mac, ov.mac, ETHERTYPE_IP4)
    o[VX_IP + IP4_VHL] = 0x45                     # IPv4, no options
    put16(o + VX_IP + IP4_FRAG, IP4_DF)
    o[VX_IP + IP4_TTL] = 64
    o[VX_IP + IP4_PROTO] = IPPROTO_UDP
    put32(o + VX_IP + IP4_SRC, ov.ip)
    put32(o + VX_IP + IP4_DST, v.ip)
    put16(o + VX_UDP + UDP_DPORT, ov.port)        # UDP checksum stays 0 (allowed for IPv4, RFC 7348 sec. 5)
    put32(o + VX_HDR, 0x08000000)                 # VXLAN I flag
    put32(o + VX_HDR + 4, ov.vni << 8)
    v.hsum = csum_partial(o + VX_IP, IP4_HLEN, 0)

cdef inline uint16_t vx_src_port(const pkt_t *pk) noexcept nogil:
    """UDP source port from the inner flow (RFC 7348 sec. 5), in 49152-65535,
    so the underlay's ECMP spreads flows but keeps each in order."""
    cdef const uint8_t *ip = pk.data + pk.m.l3_off
    cdef uint64_t h = (<uint64_t>get32(ip + IP4_SRC) << 32) | get32(ip + IP4_DST)
    h ^= ip[IP4_PROTO]
    if pk.m.flags & F_L4 and (ip[IP4_PROTO] == IPPROTO_TCP or ip[IP4_PROTO] == IPPROTO_UDP):
        h ^= <uint64_t>get32(pk.data + pk.m.l4_off) << 8
    h *= 0x9E3779B97F4A7C15ULL
    return <uint16_t>(49152 | ((h >> 50) & 0x3fff))

cdef inline int vx_encap(const overlay_t *ov, pkt_t *pk, const route_t *r, const vtep_t *v,
                         const uint8_t *gw_mac, uint32_t out_vnet, uint16_t *ip_id) noexcept nogil:
    """Encapsulate a routed IPv4 frame (TTL already decremented) toward v.
    Returns 0 (2: sent whole as a UDP-tunnel GSO super-frame) or -DROP_*."""
    cdef vnet_t h
    cdef uint32_t inner_len, l4hdr = 0
    cdef uint8_t *o
    vnet_read(pk.data - pk.vnet, pk.vnet, &h)
    inner_len = pk.m.l3_off + pk.m.l3_len     # drops Ethernet padding
    if h.gso_type != VNET_GSO_NONE:
        if not ov.tunnel_gso or out_vnet < 24:
            return -DROP_TOO_BIG
        l4hdr = gso_l4_hdr(pk)
        if l4hdr == 0:
            return -DROP_TOO_BIG          # a TCP fragment: no header here to segment by
        if pk.m.l4_off + l4hdr + h.gso_size + 36 > ov.mtu:
            return -DROP_TOO_BIG
    elif inner_len + 36 > ov.mtu:
        return -DROP_TOO_BIG
    memcpy(pk.data + ETH_DST, r.inner_mac, 6)
    memcpy(pk.data + ETH_SRC, gw_mac, 6)
    o = pk.data - VXLAN_OVERHEAD
    memcpy(o, v.hdr, VXLAN_OVERHEAD)
    # The kernel rewrites length, id and checksum per segment when it splits
    # a GSO super-frame; for a plain frame these are final.
    ip_id[0] += 1
    put16(o + VX_IP + IP4_LEN, <uint16_t>(inner_len + 36))
    put16(o + VX_IP + IP4_ID, ip_id[0])
    put16(o + VX_IP + IP4_CSUM, <uint16_t>(~csum_fold(v.hsum + ((inner_len + 36) & 0xffff) + ip_id[0]) & 0xffff))
    put16(o + VX_UDP + UDP_SPORT, vx_src_port(pk))
    put16(o + VX_UDP + UDP_LEN, <uint16_t>(inner_len + 16))
    # offload metadata, moved by the outer header length
    if h.flags & VNET_F_NEEDS_CSUM:
        h.csum_start += VXLAN_OVERHEAD
    if h.gso_type != VNET_GSO_NONE:
        h.gso_type = (h.gso_type & ~VNET_GSO_ECN) | VNET_GSO_UDP_TUNNEL_IPV4
        h.hdr_len = VXLAN_OVERHEAD + pk.m.l4_off + l4hdr
        h.outer_th_offset = VX_UDP
        h.inner_nh_offset = VXLAN_OVERHEAD + pk.m.l3_off
    else:
        h.hdr_len = 0
        h.outer_th_offset = 0
        h.inner_nh_offset = 0
    h.flags &= ~VNET_F_UDP_TUNNEL_CSUM
    vnet_write(o - out_vnet, out_vnet, &h)
    pk.data = o
    pk.len = inner_len + VXLAN_OVERHEAD
    return 2 if h.gso_type != VNET_GSO_NONE else 0

cdef inline int vx_decap(const overlay_t *ov, pkt_t *pk, uint32_t pod_vnet) noexcept nogil:
    """IPv4 to the node IP (underlay.pxd checked MAC, address, ARP, ICMP):
    VXLAN on our port and VNI, decapsulated. On OV_INNER, pk describes the
    inner frame (unparsed) and a pod_vnet-byte header in front of it carries
    the offload metadata."""
    cdef uint8_t *p = pk.data
    cdef uint8_t *u
    cdef uint32_t start, end
    cdef vnet_t h
    if pk.m.l4_proto != IPPROTO_UDP:
        return -DROP_UPLINK_UNSUPPORTED
    if pk.m.flags & F_FRAG:
        return -DROP_VXLAN_FRAG
    u = p + pk.m.l4_off
    if get16(u + UDP_DPORT) != ov.port:
        return -DROP_UPLINK_UNSUPPORTED
    if pk.m.l4_len < UDP_HLEN + 8 + ETH_HLEN:
        return -DROP_VXLAN_INNER
    if not (u[UDP_HLEN] & 0x08):
        return -DROP_VXLAN_FLAGS
    if (get32(u + UDP_HLEN + 4) >> 8) != ov.vni:
        return -DROP_VXLAN_VNI
    start = pk.m.l4_off + UDP_HLEN + 8
    end = pk.m.l3_off + pk.m.l3_len
    vnet_read(p - pk.vnet, pk.vnet, &h)
    # Offload metadata for the inner frame: drop the tunnel bits, move offsets.
    h.flags &= ~VNET_F_UDP_TUNNEL_CSUM
    h.gso_type &= ~(VNET_GSO_UDP_TUNNEL_IPV4 | VNET_GSO_UDP_TUNNEL_IPV6)
    vnet_strip(&h, start)
    pk.data = p + start
    pk.len = end - start
    pk.vnet = <uint8_t>pod_vnet
    vnet_write(pk.data - pod_vnet, pod_vnet, &h)
    return OV_INNER
