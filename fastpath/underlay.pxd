# The node on the fabric, whatever the backend: ARP for and from the node's
# underlay IP (answering who-has, learning peers' MACs), ICMP echo to it,
# and resolving a peer's MAC before a frame can go to it. A learned MAC
# rebuilds the peer's header template for the backend in force.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset, memcmp
from fastpath.defs cimport *
from fastpath.packets cimport *
from fastpath.checksum cimport *
from fastpath.overlay cimport *
from fastpath.vxlan cimport vx_template
from fastpath.ipip cimport ipip_template
from fastpath.direct cimport direct_template
from fastpath.gateway cimport icmp_echo_reply
from fastpath.sync cimport pn_sync_t, pn_upgrade, pn_downgrade, ainc

cdef inline void ul_template(const overlay_t *ov, vtep_t *v) noexcept nogil:
    """v's outer header template, for the backend in force."""
    if ov.mode == TUN_VXLAN:
        vx_template(ov, v)
    elif ov.mode == TUN_IPIP:
        ipip_template(ov, v)
    else:
        direct_template(ov, v)

cdef inline void ul_arp_request(overlay_t *ov, pkt_t *pk, uint32_t target) noexcept nogil:
    """Rewrite the frame in place into an ARP who-has for target, from our underlay."""
    cdef uint8_t *p = pk.data
    cdef uint8_t *a = p + ETH_HLEN
    memset(p + ETH_DST, 0xff, 6)
    memcpy(p + ETH_SRC, ov.mac, 6)
    put16(p + ETH_TYPE, ETHERTYPE_ARP)
    put16(a, 1)
    put16(a + 2, ETHERTYPE_IP4)
    a[4] = 6
    a[5] = 4
    put16(a + ARP_OP, 1)
    memcpy(a + ARP_SHA, ov.mac, 6)
    put32(a + ARP_SPA, ov.ip)
    memset(a + ARP_THA, 0, 6)
    put32(a + ARP_TPA, target)
    memset(a + ARP_LEN, 0, 60 - ETH_HLEN - ARP_LEN)     # pad to the 60-byte minimum
    pk.len = 60
    ainc(&ov.arp_requests)

cdef inline int ul_resolve(overlay_t *ov, vtep_t *v, pkt_t *pk, uint64_t now,
                           pn_sync_t *sy, uint32_t wid) noexcept nogil:
    """0 if v's MAC is known. Otherwise -DROP_VTEP_UNRESOLVED, or 1 when the
    frame became an ARP request for it (at most one per ARP_RETRY_MS)."""
    if v.state >= VTEP_REACHABLE:
        return 0
    if v.state == VTEP_FREE or now - v.asked >= ARP_RETRY_MS or v.asked == 0:
        pn_upgrade(sy, wid)          # a rare write: as a writer, looked at again
        if v.state < VTEP_REACHABLE and (v.state == VTEP_FREE or now - v.asked >= ARP_RETRY_MS
                                          or v.asked == 0):
            v.state = VTEP_INCOMPLETE
            v.asked = now if now else 1
            pn_downgrade(sy, wid)
            ul_arp_request(ov, pk, v.ip)
            return 1                  # caller sends the ARP request, counts the drop
        pn_downgrade(sy, wid)
    return -DROP_VTEP_UNRESOLVED      # (if learned meanwhile, this frame is still lost)

cdef inline void ul_learn(overlay_t *ov, uint32_t ip, const uint8_t *mac, pn_sync_t *sy, uint32_t wid) noexcept nogil:
    # As gw_learn: only a change is written, as a writer (the header template
    # other workers copy must never be seen half rebuilt).
    cdef uint32_t k
    for k in range(ov.nvteps):
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
                ul_template(ov, &ov.vteps[k])
            pn_downgrade(sy, wid)
            return

cdef inline int ul_rx(overlay_t *ov, pkt_t *pk, pn_sync_t *sy, uint32_t wid) noexcept nogil:
    """A frame from the fabric, parsed: ARP (answered for the node IP, peers
    learned), ICMP echo to the node IP (answered), or what the backend
    decides: OV_TUNNEL (IPv4 to the node IP) or OV_TRANSIT (IPv4 to the
    node MAC for another address). Others are -DROP_*."""
    cdef uint8_t *p = pk.data
    cdef uint8_t *a
    cdef uint8_t *ip
    cdef uint8_t *icmp
    if pk.m.flags & F_ARP:
        a = p + pk.m.l3_off
        if get16(a) != 1 or get16(a + 2) != ETHERTYPE_IP4 or a[4] != 6 or a[5] != 4:
            return -DROP_UPLINK_UNSUPPORTED
        ul_learn(ov, get32(a + ARP_SPA), a + ARP_SHA, sy, wid)
        if get16(a + ARP_OP) == 1 and get32(a + ARP_TPA) == ov.ip:
            memcpy(p + ETH_DST, a + ARP_SHA, 6)
            memcpy(p + ETH_SRC, ov.mac, 6)
            put16(a + ARP_OP, 2)
            memcpy(a + ARP_THA, a + ARP_SHA, 10)
            memcpy(a + ARP_SHA, ov.mac, 6)
            put32(a + ARP_SPA, ov.ip)
            ainc(&ov.arp_replies)
            return OV_REPLY
        return OV_LOCAL
    if mac_key(p + ETH_DST) != ov.mac_key:
        return -DROP_UPLINK_NOT_OURS
    if not (pk.m.flags & F_IP4):
        return -DROP_UPLINK_UNSUPPORTED
    ip = p + pk.m.l3_off
    if get32(ip + IP4_DST) != ov.ip:
        return OV_TRANSIT
    if ip[IP4_PROTO] == IPPROTO_ICMP:
        if not (pk.m.flags & F_L4) or (pk.m.flags & F_FRAG):
            return -DROP_UPLINK_UNSUPPORTED
        icmp = p + pk.m.l4_off
        if icmp[0] != 8 or icmp[1] != 0:
            return -DROP_UPLINK_UNSUPPORTED
        icmp_echo_reply(pk, ov.mac, ov.ip)
        ainc(&ov.icmp_replies)
        return OV_REPLY
    return OV_TUNNEL
