# Direct routing: no encapsulation. A frame for another node's pod CIDR
# leaves the uplink as routed, to the next hop's MAC on the fabric (the node
# that owns the CIDR: flannel's host-gw, Calico in BGP mode), and a frame
# from the fabric to this node's MAC for one of its pods is routed in. The
# fabric must carry pod addresses: next hops are on the fabric subnet (the
# control side refuses others). TCP super-frames leave whole with their
# virtio-net header when the uplink takes TSO: no outer header moves them.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memmove, memset
from fastpath.defs cimport *
from fastpath.packets cimport *
from fastpath.checksum cimport *
from fastpath.vnet cimport *
from fastpath.overlay cimport *

cdef enum:
    DIRECT_OVERHEAD = 0

cdef inline void direct_template(const overlay_t *ov, vtep_t *v) noexcept nogil:
    """The Ethernet header toward the next hop; nothing else changes."""
    memset(v.hdr, 0, MAX_TUNNEL_HDR)
    eth_write(v.hdr, v.mac, ov.mac, ETHERTYPE_IP4)
    v.hsum = 0

cdef inline int direct_encap(const overlay_t *ov, pkt_t *pk, const vtep_t *v, uint32_t out_vnet) noexcept nogil:
    """A routed IPv4 frame (TTL already decremented) to the next hop v:
    a new Ethernet header (any VLAN tags gone), the offload metadata moved
    to the uplink's header size. 0 (2: a GSO super-frame, sent whole) or -DROP_*."""
    cdef uint8_t *o = pk.data + pk.m.l3_off - ETH_HLEN
    cdef uint32_t shift = pk.m.l3_off - ETH_HLEN, l4hdr
    cdef vnet_t h
    vnet_read(pk.data - pk.vnet, pk.vnet, &h)
    if h.gso_type != VNET_GSO_NONE:
        if not ov.tunnel_gso or out_vnet < 10:
            return -DROP_TOO_BIG
        l4hdr = gso_l4_hdr(pk)
        if l4hdr == 0 or pk.m.l4_off - pk.m.l3_off + l4hdr + h.gso_size > ov.mtu:
            return -DROP_TOO_BIG
    elif pk.m.l3_len > ov.mtu:
        return -DROP_TOO_BIG
    memcpy(o, v.hdr, ETH_HLEN)
    if shift:
        if h.flags & VNET_F_NEEDS_CSUM:
            h.csum_start -= shift
        if h.hdr_len > shift:
            h.hdr_len -= shift
    h.flags &= ~VNET_F_UDP_TUNNEL_CSUM
    h.outer_th_offset = 0
    h.inner_nh_offset = 0
    vnet_write(o - out_vnet, out_vnet, &h)
    pk.data = o
    pk.len = pk.m.l3_len + ETH_HLEN
    return 2 if h.gso_type != VNET_GSO_NONE else 0

cdef inline int direct_rx(const overlay_t *ov, pkt_t *pk, const uint8_t *gw_mac, uint32_t pod_vnet) noexcept nogil:
    """IPv4 on the uplink to this node's MAC but not its IP: a packet routed
    here by a node some route leads to (its source inside one of the routes'
    pod CIDRs), readdressed to the gateway MAC as a decapsulated frame is.
    On OV_INNER pk describes it (unparsed), with a pod_vnet-byte header in front."""
    cdef uint8_t *p = pk.data
    cdef uint32_t start = pk.m.l3_off - ETH_HLEN
    cdef vnet_t h
    if ov_route(ov, get32(p + pk.m.l3_off + IP4_SRC)) == NULL:
        return -DROP_TUN_UNKNOWN_SRC
    vnet_read(p - pk.vnet, pk.vnet, &h)
    h.flags &= ~VNET_F_UDP_TUNNEL_CSUM
    h.gso_type &= ~(VNET_GSO_UDP_TUNNEL_IPV4 | VNET_GSO_UDP_TUNNEL_IPV6)
    vnet_strip(&h, start)
    if start:                                   # VLAN tags on the fabric: cut them off
        memmove(p + start + ETH_SRC, p + ETH_SRC, 6)
        put16(p + start + ETH_TYPE, ETHERTYPE_IP4)
    memcpy(p + start + ETH_DST, gw_mac, 6)
    pk.data = p + start
    pk.len = pk.m.l3_len + ETH_HLEN
    pk.vnet = <uint8_t>pod_vnet
    vnet_write(pk.data - pod_vnet, pod_vnet, &h)
    return OV_INNER
