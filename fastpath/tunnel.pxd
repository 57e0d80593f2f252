# The one tunnel interface the burst loop sees: encapsulate a routed frame
# toward the node that owns its destination, take a frame from the fabric
# apart, and the bytes each backend adds. Behind it: vxlan.pxd, ipip.pxd,
# direct.pxd (encap into headroom, decap checks, header template each) and
# underlay.pxd (ARP, ICMP, peer resolution, shared by all three). The
# backend is one byte of overlay_t, switched on per frame: the three encaps
# are inlined side by side and the branch always goes the same way.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from fastpath.defs cimport *
from fastpath.packets cimport *
from fastpath.checksum cimport get32
from fastpath.overlay cimport *
from fastpath.underlay cimport *
from fastpath.vxlan cimport vx_encap, vx_decap, VXLAN_OVERHEAD
from fastpath.ipip cimport ipip_encap, ipip_decap, ipip_segment, IPIP_OVERHEAD
from fastpath.direct cimport direct_encap, direct_rx, DIRECT_OVERHEAD
from fastpath.sync cimport pn_sync_t

cdef enum:
    TUN_SENT = 0                 # encapsulated, to the uplink
    TUN_ARP = 1                  # the frame became an ARP request for the peer (a drop, counted)
    TUN_SENT_GSO = 2             # encapsulated whole as a GSO super-frame
    TUN_SEGMENT = 3              # a TCP super-frame the caller segments (tun_segment): ipip, tunnel_gso

cdef inline uint32_t tun_overhead(uint8_t mode) noexcept nogil:
    if mode == TUN_VXLAN:
        return VXLAN_OVERHEAD
    if mode == TUN_IPIP:
        return IPIP_OVERHEAD
    return DIRECT_OVERHEAD

cdef inline int tun_encap(overlay_t *ov, pkt_t *pk, const uint8_t *gw_mac, uint32_t out_vnet, uint64_t now,
                          uint16_t *ip_id, pn_sync_t *sy, uint32_t wid) noexcept nogil:
    """A routed IPv4 frame for another node's pod CIDR: TUN_SENT,
    TUN_SENT_GSO, TUN_ARP or -DROP_*. ip_id: the worker's outer IP id
    counter (workers start theirs apart)."""
    cdef route_t *r = ov_route(ov, get32(pk.data + pk.m.l3_off + IP4_DST))
    cdef vtep_t *v
    cdef int a
    if r == NULL:
        return -DROP_NO_ROUTE
    v = &ov.vteps[r.vtep]
    a = ul_resolve(ov, v, pk, now, sy, wid)
    if a != 0:
        return a
    if ov.mode == TUN_VXLAN:
        return vx_encap(ov, pk, r, v, gw_mac, out_vnet, ip_id)
    if ov.mode == TUN_IPIP:
        if ov.tunnel_gso and (pk.data - pk.vnet)[1] != 0 and pk.vnet >= 10:    # a GSO super-frame
            return TUN_SEGMENT
        return ipip_encap(ov, pk, v, out_vnet, ip_id)
    return direct_encap(ov, pk, v, out_vnet)

cdef inline int tun_segment(overlay_t *ov, pkt_t *pk, pkt_t *segs, uint32_t nfree, uint32_t out_vnet,
                            uint16_t *ip_id) noexcept nogil:
    """After TUN_SEGMENT (the peer resolved): the super-frame as n
    encapsulated segments in segs[0:n]; n or -DROP_*."""
    cdef route_t *r = ov_route(ov, get32(pk.data + pk.m.l3_off + IP4_DST))
    if r == NULL:
        return -DROP_NO_ROUTE
    return ipip_segment(ov, pk, &ov.vteps[r.vtep], segs, nfree, out_vnet, ip_id)

cdef inline int tun_rx(overlay_t *ov, pkt_t *pk, const uint8_t *gw_mac, uint32_t pod_vnet,
                       pn_sync_t *sy, uint32_t wid) noexcept nogil:
    """A parsed frame from the fabric: OV_REPLY, OV_LOCAL, OV_INNER (pk is
    now the inner frame, unparsed, with a pod_vnet-byte header) or -DROP_*."""
    cdef int a = ul_rx(ov, pk, sy, wid)
    if a == OV_TUNNEL:
        if ov.mode == TUN_VXLAN:
            return vx_decap(ov, pk, pod_vnet)
        if ov.mode == TUN_IPIP:
            return ipip_decap(ov, pk, gw_mac, pod_vnet)
        return -DROP_UPLINK_UNSUPPORTED        # direct: nothing is tunnelled to the node IP
    if a == OV_TRANSIT:
        if ov.mode == TUN_DIRECT:
            return direct_rx(ov, pk, gw_mac, pod_vnet)
        return -DROP_UPLINK_NOT_OURS
    return a
