# The pod gateway (what cni0's IP address and the node's routing do in the
# kernel): answers ARP and ICMP echo for the gateway IP, routes IPv4 frames
# sent to the gateway MAC between local pods, answers TTL expiry with ICMP
# time exceeded. Works in place on the frame; the burst loop decides ports.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memcmp
from fastpath.defs cimport *
from fastpath.checksum cimport *
from fastpath.packets cimport *
from fastpath.sync cimport pn_sync_t, pn_upgrade, pn_downgrade, ainc

# Actions returned to the burst loop (negative: -DROP_*).
cdef enum:
    GW_PASS = 0        # not for the gateway: bridge it
    GW_REPLY = 1       # rewritten into a reply: send back out of the ingress port
    GW_ROUTE = 2       # MACs rewritten, TTL decremented: forward to the new dst MAC
    GW_LOCAL = 3       # consumed
    GW_REMOTE = 4      # TTL decremented, destination outside the node: the overlay's
    GW_TIME_EXCEEDED = 5   # TTL expired, rewritten into ICMP time exceeded: a reply that also counts a ttl_exceeded drop

cdef enum:
    NEIGH_NONE = 0
    NEIGH_STATIC = 1   # from IPAM
    NEIGH_LEARNED = 2  # from ARP

ctypedef struct neigh_t:
    uint8_t mac[6]
    uint8_t state

ctypedef struct gw_t:
    uint8_t enabled
    uint16_t domain
    uint8_t mac[6]
    uint64_t mac_key       # gateway MAC in the top 48 bits, as fdb_key builds it
    uint32_t ip
    uint32_t net
    uint32_t mask
    neigh_t *neigh         # one per address of the subnet, indexed by host part
    # counters
    uint64_t arp_replies
    uint64_t arp_learned
    uint64_t neigh_conflicts   # ARP claiming an IPAM address with another MAC
    uint64_t icmp_replies
    uint64_t icmp_errors_sent   # time exceeded, fragmentation needed

cdef inline void icmp_echo_reply(pkt_t *pk, const uint8_t *mac, uint32_t addr) noexcept nogil:
    """Turn an ICMP echo request into its reply in place, from (mac, addr).
    Swapping the addresses leaves the IP sum as is; TTL and type are patched
    incrementally (RFC 1624)."""
    cdef uint8_t *ip = pk.data + pk.m.l3_off
    cdef uint8_t *icmp = pk.data + pk.m.l4_off
    cdef uint16_t old
    cdef uint32_t c
    memcpy(pk.data, pk.data + ETH_SRC, 6)
    memcpy(pk.data + ETH_SRC, mac, 6)
    put32(ip + IP4_DST, get32(ip + IP4_SRC))
    put32(ip + IP4_SRC, addr)
    old = get16(ip + IP4_TTL)
    ip[IP4_TTL] = 64
    csum_update16(ip + IP4_CSUM, old, get16(ip + IP4_TTL))
    icmp[0] = 0
    # Type 8 -> 0 adds 0x0800 to the checksum, with end-around carry. Not
    # RFC 1624 eqn. 3: that gives 0x0000 when the reply is all zeros (id 0,
    # seq 0, no data), where only 0xffff verifies.
    c = get16(icmp + 2) + 0x0800u
    put16(icmp + 2, <uint16_t>(c + (c >> 16)))

cdef inline bint gw_is_dst(const gw_t *g, const uint8_t *frame) noexcept nogil:
    return mac_key(frame + ETH_DST) == g.mac_key

cdef inline bint gw_in_subnet(const gw_t *g, uint32_t ip) noexcept nogil:
    return (ip & g.mask) == g.net

cdef inline void gw_learn(gw_t *g, uint32_t ip, const uint8_t *mac, pn_sync_t *sy, uint32_t wid) noexcept nogil:
    # Reads under the worker's read side; only a change is written, as a
    # writer (pn_upgrade: the table lock, for this one entry), so ARP from
    # known neighbours, the steady state, writes nothing shared.
    cdef neigh_t *n
    if not gw_in_subnet(g, ip) or ip == g.ip or (mac[0] & 1):
        return
    n = &g.neigh[ip & ~g.mask]
    if n.state == NEIGH_STATIC:
        if memcmp(n.mac, mac, 6) != 0:
            ainc(&g.neigh_conflicts)
        return
    if n.state == NEIGH_LEARNED and memcmp(n.mac, mac, 6) == 0:
        return
    pn_upgrade(sy, wid)
    if n.state != NEIGH_STATIC:          # looked at again: it may have changed meanwhile
        if n.state == NEIGH_NONE:
            ainc(&g.arp_learned)
        memcpy(n.mac, mac, 6)
        n.state = NEIGH_LEARNED
    pn_downgrade(sy, wid)

cdef inline int gw_arp(gw_t *g, pkt_t *pk, pn_sync_t *sy, uint32_t wid) noexcept nogil:
    """ARP seen on the gateway's domain: learn the sender; answer requests
    for the gateway IP in place; consume replies addressed to the gateway."""
    cdef uint8_t *a = pk.data + pk.m.l3_off
    cdef uint16_t op
    cdef uint32_t spa, tpa
    if get16(a) != 1 or get16(a + 2) != 0x0800 or a[4] != 6 or a[5] != 4:
        return GW_PASS                   # not Ethernet/IPv4 ARP: plain L2
    op = get16(a + 6)
    spa = get32(a + 14)
    tpa = get32(a + 24)
    gw_learn(g, spa, a + 8, sy, wid)
    if op == 1 and tpa == g.ip:
        memcpy(pk.data, a + 8, 6)        # eth dst = requester
        memcpy(pk.data + ETH_SRC, g.mac, 6)
        put16(a + 6, 2)
        memcpy(a + 18, a + 8, 10)        # target = old sender (MAC + IP)
        memcpy(a + 8, g.mac, 6)
        put32(a + 14, g.ip)
        ainc(&g.arp_replies)
        return GW_REPLY
    if op == 2 and gw_is_dst(g, pk.data):
        return GW_LOCAL
    return GW_PASS

cdef inline int gw_icmp_error(gw_t *g, pkt_t *pk, uint8_t type, uint8_t code,
                              uint16_t mtu, uint16_t drop) noexcept nogil:
    """Turn the frame into an ICMP error (RFC 792: time exceeded; RFC 1191:
    fragmentation needed with the next-hop MTU) to its sender, quoting its IP
    header + 8 bytes. Never answers an ICMP error or a non-initial fragment:
    returns -drop instead."""
    cdef uint8_t quote[68]
    cdef uint8_t *ip = pk.data + pk.m.l3_off
    cdef uint8_t *icmp
    cdef uint32_t ihl = (ip[0] & 0x0f) * 4u, qlen
    cdef uint8_t t
    if get16(ip + IP4_FRAG) & 0x1fff:
        return -drop                     # a non-initial fragment: never an ICMP error (RFC 1812 4.3.2.7)
    if ip[IP4_PROTO] == 1 and (pk.m.flags & F_L4):
        t = ip[ihl]
        if t != 0 and t != 8 and t != 13 and t != 15 and t != 17:
            return -drop                 # an ICMP error: no error about an error
    qlen = ihl + 8 if ihl + 8 <= pk.m.l3_len else pk.m.l3_len
    memcpy(quote, ip, qlen)
    memcpy(pk.data, pk.data + ETH_SRC, 6)
    memcpy(pk.data + ETH_SRC, g.mac, 6)
    ip[0] = 0x45
    ip[1] = 0xc0
    put16(ip + 2, <uint16_t>(20 + 8 + qlen))
    put32(ip + 4, 0)                     # id 0, no fragment bits
    ip[IP4_TTL] = 64
    ip[IP4_PROTO] = 1
    put16(ip + IP4_CSUM, 0)
    put32(ip + IP4_DST, get32(quote + IP4_SRC))    # back to the sender
    put32(ip + IP4_SRC, g.ip)
    put16(ip + IP4_CSUM, csum(ip, IP4_HLEN))
    icmp = ip + 20
    icmp[0] = type
    icmp[1] = code
    put16(icmp + 2, 0)
    put16(icmp + 4, 0)
    put16(icmp + 6, mtu)
    memcpy(icmp + 8, quote, qlen)
    put16(icmp + 2, csum(icmp, 8 + qlen))
    pk.len = pk.m.l3_off + 28 + qlen
    pk.m.l3_len = 28 + qlen
    pk.m.l4_off = pk.m.l3_off + 20
    pk.m.l4_proto = 1
    pk.m.flags = (pk.m.flags & ~F_FRAG) | F_IP4 | F_L4
    ainc(&g.icmp_errors_sent)
    return GW_REPLY

cdef inline int gw_ip4(gw_t *g, pkt_t *pk) noexcept nogil:
    """An IPv4 frame sent to the gateway MAC."""
    cdef uint8_t *ip = pk.data + pk.m.l3_off
    cdef uint8_t *icmp
    cdef uint32_t dst = get32(ip + IP4_DST)
    cdef neigh_t *n
    cdef uint16_t old
    cdef int a
    if dst == g.ip:
        icmp = pk.data + pk.m.l4_off
        if (ip[IP4_PROTO] != 1 or not (pk.m.flags & F_L4) or (pk.m.flags & F_FRAG)
                or icmp[0] != 8 or icmp[1] != 0):
            return -DROP_GW_UNSUPPORTED
        icmp_echo_reply(pk, g.mac, g.ip)
        ainc(&g.icmp_replies)
        return GW_REPLY
    if ip[IP4_TTL] <= 1:
        a = gw_icmp_error(g, pk, 11, 0, 0, DROP_TTL)
        return GW_TIME_EXCEEDED if a == GW_REPLY else a
    if gw_in_subnet(g, dst):
        n = &g.neigh[dst & ~g.mask]
        if n.state == NEIGH_NONE or dst == (g.net | ~g.mask):
            return -DROP_NO_NEIGH
        memcpy(pk.data, n.mac, 6)
        memcpy(pk.data + ETH_SRC, g.mac, 6)
    # A frame for another node keeps its source MAC here: ov_encap writes both
    # inner MACs, and when the frame is too big for the overlay the ICMP
    # fragmentation-needed goes back to that source MAC (it went to the
    # gateway's own MAC, so the pod never heard it and path MTU discovery failed).
    old = get16(ip + IP4_TTL)
    ip[IP4_TTL] -= 1
    csum_update16(ip + IP4_CSUM, old, get16(ip + IP4_TTL))
    return GW_ROUTE if gw_in_subnet(g, dst) else GW_REMOTE

cdef class Gateway:
    cdef gw_t g
    cdef pn_sync_t *sy               # the dataplane's table lock (NULL: alone)
