# The VXLAN overlay (RFC 7348), flannel-style: routes pod CIDR -> (VTEP IP,
# inner dst MAC, VNI); the node's underlay IP lives here (ARP, ICMP echo);
# peer VTEP MACs are resolved by ARP on the uplink. Encap writes the outer
# headers into the headroom in front of the frame: the inner frame is never
# copied. Decap moves the frame start past the outer headers.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset, memcmp
from fastpath.defs cimport *
from fastpath.checksum cimport *
from fastpath.vnet cimport *
from fastpath.fdb cimport load_be64
from fastpath.gateway cimport icmp_echo_reply
from fastpath.sync cimport pn_sync_t, pn_upgrade, pn_downgrade, ainc

cdef enum:
    MAX_ROUTES = 256
    MAX_VTEPS = 256
    VXLAN_OVERHEAD = 50          # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
    ARP_RETRY_MS = 1000          # at most one ARP request per VTEP per second
    VTEP_FREE = 0
    VTEP_INCOMPLETE = 1          # asked, no answer yet
    VTEP_REACHABLE = 2           # learned by ARP
    VTEP_STATIC = 3              # from the control plane
    OV_REPLY = 1                 # answered in place: back out of the uplink
    OV_LOCAL = 2                 # consumed (ARP)
    OV_INNER = 3                 # decapsulated: pk now describes the inner frame

ctypedef struct vtep_t:
    uint32_t ip
    uint8_t mac[6]
    uint8_t state
    uint64_t asked               # clock (ms) of the last ARP request
    uint32_t refs                # routes using it
    uint8_t hdr[50]              # the outer headers toward it, built once its MAC is known
    uint64_t hsum                # sum of that IPv4 header with length, id and checksum zero

ctypedef struct route_t:
    uint32_t net
    uint32_t mask
    uint8_t plen
    uint8_t inner_mac[6]         # inner dst MAC: the remote gateway / flannel.1 MAC
    uint32_t vni
    uint16_t vtep                # index into vteps

ctypedef struct overlay_t:
    uint8_t enabled
    uint16_t uplink              # port id of the uplink
    uint32_t ip                  # this node's underlay IP
    uint8_t mac[6]               # this node's underlay MAC
    uint64_t mac_key
    uint32_t vni                 # the VNI served
    uint16_t port                # UDP destination port (4789, or flannel's 8472)
    uint16_t mtu                 # fabric MTU
    uint8_t tunnel_gso           # the uplink TAP takes UDP-tunnel GSO super-frames
    uint32_t nroutes             # routes[] sorted by prefix length, longest first
    route_t routes[MAX_ROUTES]
    vtep_t vteps[MAX_VTEPS]
    # counters (encapsulated, decapsulated, gso_encapsulated: per worker, in stats_t)
    uint64_t arp_requests
    uint64_t arp_replies
    uint64_t arp_learned
    uint64_t icmp_replies


cdef inline void ov_vtep_template(overlay_t *ov, vtep_t *v) noexcept nogil:
    """Outer Ethernet/IPv4/UDP/VXLAN toward v: encap copies it and patches
    the lengths, id, source port and checksum (from hsum, incrementally)."""
    cdef uint8_t *o = v.hdr
    memset(o, 0, 50)
    memcpy(o, v.mac, 6)
    memcpy(o + 6, ov.mac, 6)
    put16(o + 12, 0x0800)
    o[14] = 0x45                     # IPv4, no options
    put16(o + 20, 0x4000)            # DF
    o[22] = 64
    o[23] = 17
    put32(o + 26, ov.ip)
    put32(o + 30, v.ip)
    put16(o + 36, ov.port)           # UDP checksum stays 0 (allowed for IPv4, RFC 7348 sec. 5)
    put32(o + 42, 0x08000000)        # VXLAN I flag
    put32(o + 46, ov.vni << 8)
    v.hsum = csum_partial(o + 14, 20, 0)

cdef inline route_t *ov_route(overlay_t *ov, uint32_t dst) noexcept nogil:
    cdef uint32_t k
    for k in range(ov.nroutes):
        if (dst & ov.routes[k].mask) == ov.routes[k].net:
            return &ov.routes[k]
    return NULL

cdef inline uint16_t ov_src_port(const pkt_t *pk) noexcept nogil:
    """UDP source port from the inner flow (RFC 7348 sec. 5), in 49152-65535,
    so the underlay's ECMP spreads flows but keeps each in order."""
    cdef const uint8_t *ip = pk.data + pk.m.l3_off
    cdef uint64_t h = (<uint64_t>get32(ip + 12) << 32) | get32(ip + 16)
    h ^= ip[9]
    if pk.m.flags & F_L4 and (ip[9] == 6 or ip[9] == 17):
        h ^= <uint64_t>get32(pk.data + pk.m.l4_off) << 8
    h *= 0x9E3779B97F4A7C15ULL
    return <uint16_t>(49152 | ((h >> 50) & 0x3fff))

cdef inline void ov_arp_request(overlay_t *ov, pkt_t *pk, uint32_t target) noexcept nogil:
    """Rewrite the frame in place into an ARP who-has for target, from our underlay."""
    cdef uint8_t *p = pk.data
    memset(p, 0xff, 6)
    memcpy(p + 6, ov.mac, 6)
    put16(p + 12, 0x0806)
    put16(p + 14, 1)
    put16(p + 16, 0x0800)
    p[18] = 6
    p[19] = 4
    put16(p + 20, 1)
    memcpy(p + 22, ov.mac, 6)
    put32(p + 28, ov.ip)
    memset(p + 32, 0, 6)
    put32(p + 38, target)
    memset(p + 42, 0, 18)            # pad to the 60-byte minimum
    pk.len = 60
    ainc(&ov.arp_requests)

cdef inline int ov_encap(overlay_t *ov, pkt_t *pk, const uint8_t *gw_mac, uint32_t in_vnet,
                         uint32_t out_vnet, uint64_t now, uint16_t *ip_id,
                         pn_sync_t *sy, uint32_t wid) noexcept nogil:
    """Encapsulate a routed IPv4 frame (TTL already decremented) toward the
    VTEP that owns its destination. Returns 0 (2: sent whole as a GSO
    super-frame), or -DROP_* (1: the frame became an ARP request for the
    VTEP: pk.out is then set by the caller). ip_id: the worker's outer IP id
    counter (workers start theirs apart)."""
    cdef uint8_t *ip = pk.data + pk.m.l3_off
    cdef route_t *r = ov_route(ov, get32(ip + 16))
    cdef vtep_t *v
    cdef vnet_t h
    cdef uint32_t inner_len, l4hdr
    cdef uint8_t *o
    if r == NULL:
        return -DROP_NO_ROUTE
    v = &ov.vteps[r.vtep]
    if v.state < VTEP_REACHABLE:
        if v.state == VTEP_FREE or now - v.asked >= ARP_RETRY_MS or v.asked == 0:
            pn_upgrade(sy, wid)          # a rare write: as a writer, looked at again
            if v.state < VTEP_REACHABLE and (v.state == VTEP_FREE or now - v.asked >= ARP_RETRY_MS
                                              or v.asked == 0):
                v.state = VTEP_INCOMPLETE
                v.asked = now if now else 1
                pn_downgrade(sy, wid)
                ov_arp_request(ov, pk, v.ip)
                return 1                  # caller sends the ARP request, counts the drop
            pn_downgrade(sy, wid)
            if v.state >= VTEP_REACHABLE:
                return -DROP_VTEP_UNRESOLVED   # learned meanwhile: this frame is still lost
        return -DROP_VTEP_UNRESOLVED
    vnet_read(pk.data - in_vnet, in_vnet, &h)
    inner_len = pk.m.l3_off + pk.m.l3_len     # drops Ethernet padding
    if h.gso_type != VNET_GSO_NONE:
        if not ov.tunnel_gso or out_vnet < 24:
            return -DROP_TOO_BIG
        if pk.m.l4_proto == 6 and not (pk.m.flags & F_L4):
            return -DROP_TOO_BIG          # a TCP fragment: no header here to segment by
        l4hdr = ((pk.data[pk.m.l4_off + 12] >> 4) * 4u) if pk.m.l4_proto == 6 else 8u
        if pk.m.l4_off + l4hdr + h.gso_size + 36 > ov.mtu:
            return -DROP_TOO_BIG
    elif inner_len + 36 > ov.mtu:
        return -DROP_TOO_BIG
    memcpy(pk.data, r.inner_mac, 6)
    memcpy(pk.data + 6, gw_mac, 6)
    o = pk.data - VXLAN_OVERHEAD
    memcpy(o, v.hdr, VXLAN_OVERHEAD)
    # The kernel rewrites length, id and checksum per segment when it splits
    # a GSO super-frame; for a plain frame these are final.
    ip_id[0] += 1
    put16(o + 16, <uint16_t>(inner_len + 36))
    put16(o + 18, ip_id[0])
    put16(o + 24, <uint16_t>(~csum_fold(v.hsum + ((inner_len + 36) & 0xffff) + ip_id[0]) & 0xffff))
    put16(o + 34, ov_src_port(pk))
    put16(o + 38, <uint16_t>(inner_len + 16))
    # offload metadata, moved by the outer header length
    if h.flags & VNET_F_NEEDS_CSUM:
        h.csum_start += VXLAN_OVERHEAD
    if h.gso_type != VNET_GSO_NONE:
        h.gso_type = (h.gso_type & ~VNET_GSO_ECN) | VNET_GSO_UDP_TUNNEL_IPV4
        h.hdr_len = VXLAN_OVERHEAD + pk.m.l4_off + l4hdr
        h.outer_th_offset = 34
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

cdef inline void ov_learn(overlay_t *ov, uint32_t ip, const uint8_t *mac, pn_sync_t *sy, uint32_t wid) noexcept nogil:
    # As gw_learn: only a change is written, as a writer (the header template
    # other workers copy must never be seen half rebuilt).
    cdef uint32_t k
    for k in range(MAX_VTEPS):
        if ov.vteps[k].state != VTEP_FREE and ov.vteps[k].ip == ip:
            if ov.vteps[k].state == VTEP_STATIC or \
                    (ov.vteps[k].state == VTEP_REACHABLE and memcmp(ov.vteps[k].mac, mac, 6) == 0):
                return
            pn_upgrade(sy, wid)
            if ov.vteps[k].state != VTEP_STATIC and ov.vteps[k].ip == ip:
                if ov.vteps[k].state != VTEP_REACHABLE:
                    ainc(&ov.arp_learned)
                memcpy(ov.vteps[k].mac, mac, 6)
                ov.vteps[k].state = VTEP_REACHABLE
                ov_vtep_template(ov, &ov.vteps[k])
            pn_downgrade(sy, wid)
            return

cdef inline int ov_uplink(overlay_t *ov, pkt_t *pk, uint32_t up_vnet, uint32_t pod_vnet,
                          pn_sync_t *sy, uint32_t wid) noexcept nogil:
    """A frame from the fabric: ARP and ICMP echo for the node IP, or VXLAN to
    decapsulate. On OV_INNER, pk describes the inner frame (unparsed) and a
    pod_vnet-byte header in front of it carries the offload metadata."""
    cdef uint8_t *p = pk.data
    cdef uint8_t *a
    cdef uint8_t *ip
    cdef uint8_t *u
    cdef uint8_t *icmp
    cdef uint32_t spa, start, end
    cdef vnet_t h
    if pk.m.flags & F_ARP:
        a = p + pk.m.l3_off
        if get16(a) != 1 or get16(a + 2) != 0x0800 or a[4] != 6 or a[5] != 4:
            return -DROP_UPLINK_UNSUPPORTED
        spa = get32(a + 14)
        ov_learn(ov, spa, a + 8, sy, wid)
        if get16(a + 6) == 1 and get32(a + 24) == ov.ip:
            memcpy(p, a + 8, 6)
            memcpy(p + 6, ov.mac, 6)
            put16(a + 6, 2)
            memcpy(a + 18, a + 8, 10)
            memcpy(a + 8, ov.mac, 6)
            put32(a + 14, ov.ip)
            ainc(&ov.arp_replies)
            return OV_REPLY
        return OV_LOCAL
    if (load_be64(p) & 0xFFFFFFFFFFFF0000ULL) != ov.mac_key:
        return -DROP_UPLINK_NOT_OURS
    if not (pk.m.flags & F_IP4):
        return -DROP_UPLINK_UNSUPPORTED
    ip = p + pk.m.l3_off
    if get32(ip + 16) != ov.ip:
        return -DROP_UPLINK_NOT_OURS
    if ip[9] == 1 and (pk.m.flags & F_L4) and not (pk.m.flags & F_FRAG):
        icmp = p + pk.m.l4_off
        if icmp[0] != 8 or icmp[1] != 0:
            return -DROP_UPLINK_UNSUPPORTED
        icmp_echo_reply(pk, ov.mac, ov.ip)
        ainc(&ov.icmp_replies)
        return OV_REPLY
    if ip[9] != 17:
        return -DROP_UPLINK_UNSUPPORTED
    if pk.m.flags & F_FRAG:
        return -DROP_VXLAN_FRAG
    u = p + pk.m.l4_off
    if get16(u + 2) != ov.port:
        return -DROP_UPLINK_UNSUPPORTED
    if pk.m.l4_len < 8 + 8 + 14:
        return -DROP_VXLAN_INNER
    if not (u[8] & 0x08):
        return -DROP_VXLAN_FLAGS
    if (get32(u + 12) >> 8) != ov.vni:
        return -DROP_VXLAN_VNI
    start = pk.m.l4_off + 16
    end = pk.m.l3_off + pk.m.l3_len
    vnet_read(p - up_vnet, up_vnet, &h)
    # Offload metadata for the inner frame: drop the tunnel bits, move offsets.
    h.flags &= ~VNET_F_UDP_TUNNEL_CSUM
    h.gso_type &= ~(VNET_GSO_UDP_TUNNEL_IPV4 | VNET_GSO_UDP_TUNNEL_IPV6)
    if h.flags & VNET_F_NEEDS_CSUM:
        if h.csum_start >= start:
            h.csum_start -= start
        else:
            # The partial checksum was the outer UDP one (a kernel VTEP with
            # udpcsum): then the inner checksums are complete.
            h.flags = (h.flags & ~VNET_F_NEEDS_CSUM) | VNET_F_DATA_VALID
            h.csum_start = 0
            h.csum_offset = 0
    h.hdr_len = h.hdr_len - start if h.hdr_len > start else 0
    h.outer_th_offset = 0
    h.inner_nh_offset = 0
    pk.data = p + start
    pk.len = end - start
    vnet_write(pk.data - pod_vnet, pod_vnet, &h)
    return OV_INNER

cdef class Overlay:
    cdef overlay_t ov
    cdef pn_sync_t *sy               # the dataplane's table lock (NULL: alone)
    cdef dict names              # route CIDR -> node name, for display
    cdef readonly uint64_t generation   # bumped by every route change (snapshots)
