"""Dataplane: slots, the nogil burst loop (parse -> learn -> forward/flood),
per-port TX queues, and the one Python entry point every test and tool uses:
``Dataplane.process(frames, in_port) -> [(out_port, frame_bytes), ...]``."""
import time

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memset
from posix.stdlib cimport posix_memalign

from fastpath.defs cimport *
from fastpath.parse cimport parse_frame
from fastpath.fdb cimport fdb_key, fdb_learn, fdb_lookup
from fastpath.gateway cimport *
from fastpath.gateway cimport Gateway
from fastpath.packets cimport *
from fastpath.overlay cimport *
from fastpath.overlay cimport Overlay
from fastpath.tunnel cimport *
from fastpath.services cimport *
from fastpath.services cimport Services
from fastpath.conntrack cimport *
from fastpath.conntrack cimport Conntrack
from fastpath.nat cimport *
from fastpath.vnet cimport VNET_F_NEEDS_CSUM
from fastpath.counters cimport port_stats_t, stats_t
from fastpath.counters import DROP_NAMES
from fastpath.trace cimport *
from fastpath.trace import EVENT_NAMES
from fastpath.guard cimport guard_check, PortGuard
from fastpath.sync cimport *


# ---- the burst loop ---------------------------------------------------
# A stage graph, as VPP's nodes hand a frame on: each stage looks at the
# frame, does its one job and returns a verdict, the next stage (ST_*), to
# one dispatcher; terminal verdicts (ST_TX to pk.out, ST_REPLY, ST_LOCAL,
# ST_FLOOD, ST_DROP with pk.reason) are acted on by the dispatcher alone.
#
#   ST_INPUT -> ST_L2 ---------------------------> ST_BRIDGE -> ST_TX | ST_FLOOD
#      |          |-> ST_SERVICE --+
#      |          |                v
#      |          +-------------> ST_GATEWAY -> ST_FORWARD -> ST_TX | ST_FLOOD
#      |                           ^    |-----> ST_ENCAP ---> ST_TX (uplink)
#      +-> ST_UPLINK -> ST_INNER --+    +-----> ST_REPLY | ST_LOCAL
#
# Module functions rather than methods: they are fused over mode_t, so each
# is compiled twice, without trace hooks (what traffic runs) and with them
# (trace()); fused methods would be called through the vtable, these are
# called directly and inlined.

cdef enum:
    ST_DONE = 0        # the verdict is complete (a stage acted and counted already)
    ST_INPUT           # port up, counters, parse, source checks, port guard
    ST_L2              # bridge domain, learning; to the gateway or bridged
    ST_GATEWAY         # an IPv4 frame to the gateway: route it (gw_ip4)
    ST_SERVICE         # to a ClusterIP: conntrack, backend, DNAT
    ST_FORWARD         # routed: to the port the FDB has for the new destination MAC
    ST_BRIDGE          # bridged: the same, but never back out of the ingress port
    ST_ENCAP           # for another node's pods: the tunnel, out of the uplink
    ST_UPLINK          # from the fabric: the underlay's own traffic, or decap
    ST_INNER           # decapsulated: parsed, checked, then routed
    ST_TX              # terminal: out of port pk.out
    ST_REPLY           # terminal: rewritten in place, back out of the ingress port
    ST_LOCAL           # terminal: consumed
    ST_FLOOD           # terminal: every other port of the domain
    ST_DROP            # terminal: dropped for pk.reason

cdef inline int fail(pkt_t *pk, uint16_t reason) noexcept nogil:
    pk.reason = reason
    return ST_DROP

cdef inline void drop(Dataplane self, mode_t *md, pkt_t *pk, uint16_t reason) noexcept nogil:
    pk.out = OUT_DROP
    pk.reason = reason
    inc(&self.stats.drops[reason])
    if mode_t is traced_t:
        tr_note(self.tr, EV_DROP, reason, 0, 0)
    if pk.in_port < MAX_PORTS:
        inc(&self.stats.port[pk.in_port].rx_dropped)

cdef inline void enqueue(Dataplane self, mode_t *md, uint16_t port, uint32_t i, uint32_t length) noexcept nogil:
    if self.txq_len[port] == 0:
        self.tx_active[self.n_active] = port
        self.n_active += 1
    self.txq[<size_t>port * self.qcap + self.txq_len[port]] = <uint16_t>i
    self.txq_len[port] += 1
    inc(&self.stats.port[port].tx_packets)
    add(&self.stats.port[port].tx_bytes, length)
    if mode_t is traced_t:
        tr_note(self.tr, EV_TX, port, length, 0)

cdef inline void reply(Dataplane self, mode_t *md, uint32_t i, pkt_t *pk) noexcept nogil:
    # A frame the gateway or the node wrote: complete checksums, so no
    # offload metadata. (pk.reason is read only when pk.out is OUT_DROP.)
    cdef uint32_t n = self.pvnet[pk.in_port]
    if n:
        memset(pk.data - n, 0, n)
    pk.out = pk.in_port
    if mode_t is traced_t:
        tr_note(self.tr, EV_REPLY, pk.in_port, 0, 0)
    enqueue(self, md, pk.in_port, i, pk.len)

cdef inline void local(Dataplane self, mode_t *md, pkt_t *pk) noexcept nogil:
    # consumed by the gateway or the node (an ARP reply to learn from)
    pk.out = OUT_LOCAL
    if mode_t is traced_t:
        tr_note(self.tr, EV_LOCAL, 0, 0, 0)

cdef void flood(Dataplane self, mode_t *md, uint32_t i, pkt_t *pk) noexcept nogil:
    """Broadcast, multicast or unknown unicast: every other port of the domain.
    Out of line: keeps the known-unicast path small."""
    cdef ports_t *pt = self.pt
    cdef uint16_t port = pk.in_port, d = pk.domain, s, k, c
    s = pt.dom_start[d]
    c = pt.dom_count[d]
    if c <= 1:
        drop(self, md, pk, DROP_NO_PORTS)
        return
    pk.out = OUT_FLOOD
    inc(&self.stats.flooded)
    if mode_t is traced_t:
        tr_note(self.tr, EV_FLOOD, d, c - 1, 0)
    for k in range(s, s + c):
        if pt.flood[k] != port:
            enqueue(self, md, pt.flood[k], i, pk.len)

cdef inline int gateway_ip4(Dataplane self, mode_t *md, pkt_t *pk) noexcept nogil:
    # gw_ip4 as the loop sees it: a TTL expiry answered with ICMP time
    # exceeded is a reply that also counts a ttl_exceeded drop (as encap
    # counts an answered too_big).
    cdef int a = gw_ip4(self.gw, pk)
    if mode_t is traced_t:
        tr_note(self.tr, EV_GW, <uint32_t>a, get32(pk.data + pk.m.l3_off + IP4_DST), 0)
    if a == GW_ROUTE or a == GW_REMOTE:
        inc(&self.stats.routed)
    elif a == GW_TIME_EXCEEDED:
        inc(&self.stats.drops[DROP_TTL])
        return GW_REPLY
    return a

cdef inline int gw_next(Dataplane self, pkt_t *pk, int a) noexcept nogil:
    """The gateway's action (gw_arp, gw_ip4) as the next stage: the one
    place it is read."""
    if a == GW_ROUTE:
        return ST_FORWARD
    if a == GW_REMOTE:
        return ST_ENCAP
    if a == GW_REPLY:
        if pk.in_port == self.ov.uplink and self.ov.enabled:
            # An answer to a decapsulated frame goes back through the tunnel;
            # the gateway wrote it with complete checksums, so the offload
            # metadata decap left in front is not its own.
            if pk.vnet:
                memset(pk.data - pk.vnet, 0, pk.vnet)
            return ST_ENCAP
        return ST_REPLY
    if a == GW_LOCAL:
        return ST_LOCAL
    if a < 0:
        return fail(pk, <uint16_t>(-a))
    return fail(pk, DROP_NO_ROUTE)

cdef inline int st_input(Dataplane self, mode_t *md, pkt_t *pk) noexcept nogil:
    # Locals, not self->..., so stores through the frame's uint8_t* (which
    # may alias anything) do not force the compiler to reload the tables.
    cdef ports_t *pt = self.pt
    cdef uint16_t port = pk.in_port, r
    cdef uint32_t length = pk.len
    cdef const uint8_t *data = pk.data
    cdef port_stats_t *ps
    if port >= MAX_PORTS or not pt.up[port]:
        return fail(pk, DROP_BAD_PORT)
    pk.vnet = self.pvnet[port]
    ps = &self.stats.port[port]
    inc(&ps.rx_packets)
    add(&ps.rx_bytes, length)
    if mode_t is traced_t:
        tr_note(self.tr, EV_RX, port, length, (data - pk.vnet)[0] | ((data - pk.vnet)[1] << 8)
                if pk.vnet else 0)
    r = parse_frame(data, length, &pk.m)
    if r != DROP_NONE:
        return fail(pk, r)
    if mode_t is traced_t:
        tr_note(self.tr, EV_PARSE, pk.m.ethertype, pk.m.l4_proto, pk.m.flags)
    if data[ETH_SRC] & 1:
        return fail(pk, DROP_SRC_MCAST)
    if self.pg.on[port]:
        r = guard_check(self.pg, port, data, &pk.m)
        if r != DROP_NONE:
            return fail(pk, r)
    if port == self.ov.uplink and self.ov.enabled:
        return ST_UPLINK
    return ST_L2

cdef inline int st_l2(Dataplane self, mode_t *md, pkt_t *pk) noexcept nogil:
    cdef gw_t *gw = self.gw
    cdef uint16_t port = pk.in_port
    cdef uint16_t d = self.pt.domain[port]
    cdef const uint8_t *data = pk.data
    cdef int a
    pk.domain = d
    fdb_learn(self.ft, fdb_key(data + ETH_SRC, d), port, self.now)
    if mode_t is traced_t:
        tr_note(self.tr, EV_LEARN, d, port, 0)
    if gw.enabled and d == gw.domain:
        if pk.m.flags & F_ARP:
            a = gw_arp(gw, pk, self.sy, self.wid)
            if mode_t is traced_t:
                tr_note(self.tr, EV_ARP, <uint32_t>a, 0, 0)
            if a != GW_PASS:
                return gw_next(self, pk, a)
        elif gw_is_dst(gw, data):
            if not (pk.m.flags & F_IP4):
                return fail(pk, DROP_GW_UNSUPPORTED)
            if svc_is_vip(self.sm, get32(data + pk.m.l3_off + IP4_DST)):
                return ST_SERVICE
            if ld32(&self.ct.any):
                unnat(self, md, pk)                  # e.g. a hairpin reply to the gateway
            return ST_GATEWAY
    if ld32(&self.ct.any) and (pk.m.flags & F_IP4):
        unnat(self, md, pk)                          # a local backend answering a local client
    return ST_BRIDGE

cdef inline int st_forward(Dataplane self, mode_t *md, pkt_t *pk, uint16_t d, bint routed) noexcept nogil:
    # d: the bridge domain (a routed frame is in the gateway's)
    cdef int out
    if routed:
        pk.domain = d                    # flood() reads it
    if not (pk.m.flags & F_BCAST):
        out = fdb_lookup(self.ft, fdb_key(pk.data, d), self.now)
        if mode_t is traced_t:
            tr_note(self.tr, EV_FDB, <uint32_t>out, d, 0)
        # A routed frame may leave by the port it came in on (two pods
        # behind one port); a bridged one may not.
        if out == pk.in_port and not routed:
            return fail(pk, DROP_SAME_PORT)
        if out >= 0 and self.pt.up[out]:
            pk.out = out
            inc(&self.stats.forwarded)
            return ST_TX
    return ST_FLOOD

cdef int st_reject(Dataplane self, mode_t *md, uint32_t i, pkt_t *pk) noexcept nogil:
    """What kube-proxy does for a service without endpoints: TCP RST,
    UDP ICMP port unreachable, from the service address. Counted here as
    a service_rejected drop, answered or not."""
    inc(&self.stats.drops[DROP_SVC_REJECTED])
    if mode_t is traced_t:
        tr_note(self.tr, EV_REJECT, pk.m.l4_proto, 0, 0)
    if pk.in_port < MAX_PORTS:
        inc(&self.stats.port[pk.in_port].rx_dropped)
    pk.reason = DROP_SVC_REJECTED
    if pk.m.l4_proto == IPPROTO_TCP:
        if tcp_reset(pk, self.gw.mac) == 0:
            return ST_REPLY
    elif gw_icmp_error(self.gw, pk, 3, 3, 0, DROP_SVC_REJECTED) == GW_REPLY:
        # the error must come from the ClusterIP the client used
        put32(pk.data + pk.m.l3_off + IP4_SRC, get32(pk.data + pk.m.l3_off + IP4_HLEN + 8 + IP4_DST))
        put16(pk.data + pk.m.l3_off + IP4_CSUM, 0)
        put16(pk.data + pk.m.l3_off + IP4_CSUM, csum(pk.data + pk.m.l3_off, IP4_HLEN))
        return ST_REPLY
    pk.out = OUT_DROP
    return ST_DONE

cdef int st_service(Dataplane self, mode_t *md, uint32_t i, pkt_t *pk) noexcept nogil:
    """A frame to a ClusterIP: conntrack, or a new flow (pick a backend),
    then DNAT (and SNAT for hairpin); the gateway routes it to the backend."""
    cdef ct_t *ct
    cdef uint8_t *ip = pk.data + pk.m.l3_off
    cdef uint8_t *l4 = pk.data + pk.m.l4_off
    cdef uint8_t proto = pk.m.l4_proto, flags = 0
    cdef uint32_t cip = get32(ip + IP4_SRC), vip = get32(ip + IP4_DST), bip, sip
    cdef uint16_t cport, vport, bport
    cdef uint8_t snat
    cdef tuple_t *t
    cdef conn_t *k = NULL
    cdef conn_t nc
    cdef svc_t *s
    cdef int c
    cdef uint64_t hits
    cdef bint partial = pk.vnet > 0 and ((pk.data - pk.vnet)[0] & VNET_F_NEEDS_CSUM)
    if mode_t is traced_t:
        tr_note(self.tr, EV_SERVICE, vip, get16(l4 + L4_DPORT) if pk.m.flags & F_L4 else 0, proto)
    if unlikely((proto != 6 and proto != 17) or not (pk.m.flags & F_L4) or (pk.m.flags & F_FRAG)):
        return fail(pk, DROP_SVC_UNSUPPORTED)
    cport = get16(l4)
    vport = get16(l4 + L4_DPORT)
    if proto == 6:
        flags = l4[TCP_FLAGS]
    # One hold of the shard's lock from lookup to the NAT fields copied
    # out (nat below works on locals): other workers insert, and forward
    # this connection's replies, meanwhile.
    ct = ct_shard(self.ct, cport)
    pn_spin_lock(&ct.lock)
    t = ct_find(ct, tuple_a(cip, vip), tuple_b(cport, vport, proto))
    if t != NULL and t.dir == CT_ORIG:
        k = &ct.conns[t.conn]
        if unlikely(k.expires <= self.now):
            if mode_t is traced_t:
                tr_note(self.tr, EV_CT, CT_EV_EXPIRED, t.conn, k.state)
            ct_delete(ct, t.conn)
            ct.expired += 1
            k = NULL
        elif unlikely(proto == 6 and (flags & 0x17) == 0x02 and (k.state >= CT_FIN or (k.flags & CT_DEAD))):
            # A new SYN on the tuple of a closing or dead connection (the
            # client reused its port): a new connection, as netfilter does.
            if mode_t is traced_t:
                tr_note(self.tr, EV_CT, CT_EV_REUSED, t.conn, k.state)
            ct_delete(ct, t.conn)
            ct.deleted += 1
            k = NULL
    if unlikely(k != NULL and (k.flags & CT_DEAD)):
        if mode_t is traced_t:
            tr_note(self.tr, EV_CT, CT_EV_DEAD, t.conn, k.state)
        # its backend is gone: end the connection (kube-proxy's stale-flow RST)
        ct_delete(ct, <uint32_t>(k - ct.conns))
        pn_spin_unlock(&ct.lock)
        return st_reject(self, md, i, pk)
    if k == NULL:
        s = svc_find(self.sm, svc_key(vip, vport, proto))
        if unlikely(s == NULL):
            pn_spin_unlock(&ct.lock)
            ainc(&self.sm.no_service)
            return st_reject(self, md, i, pk)
        if unlikely(proto == 6 and (flags & 0x17) != 0x02):     # not a bare SYN
            ct.invalid += 1
            pn_spin_unlock(&ct.lock)
            return fail(pk, DROP_CT_INVALID)
        hits = ld(&self.sm.affinity_hits)
        if unlikely(svc_pick(self.sm, s, cip, mix64(tuple_a(cip, vip) ^ (<uint64_t>cport << 16) ^ proto),
                             self.now, &bip, &bport, self.rngp) < 0):
            pn_spin_unlock(&ct.lock)
            ainc(&self.sm.no_endpoints)
            return st_reject(self, md, i, pk)
        if mode_t is traced_t:
            tr_note(self.tr, EV_PICK, bip, bport,
                    s.nb | (<uint32_t>s.lb << 16) | (<uint32_t>(hits != ld(&self.sm.affinity_hits)) << 24))
        nc.cip = cip
        nc.vip = vip
        nc.bip = bip
        nc.sip = self.gw.ip if bip == cip else cip     # hairpin: SNAT to the gateway
        nc.cport = cport
        nc.vport = vport
        nc.bport = bport
        nc.proto = proto
        nc.state = CT_NEW
        nc.flags = CT_SNAT if bip == cip else 0
        nc.packets = 0
        nc.expires = self.now + (ct.timeout_ms[0] if proto == 6 else ct.timeout_ms[4])
        # The reply tuple may belong to another connection already: the client
        # reused its port towards another ClusterIP with the same backend. To
        # the backend both are one 4-tuple, so the two cannot coexist (replies
        # would be reverse-NATed for the old one). An old one that is over
        # (expired, or TCP closing and not owed a RST) makes way; a live one
        # keeps its tuple and the new flow is refused, counted. (netfilter
        # remaps the client's port here; podnet does not.)
        t = ct_find(ct, tuple_a(bip, nc.sip), tuple_b(bport, cport, proto))
        if unlikely(t != NULL):
            k = &ct.conns[t.conn]
            if k.expires <= self.now or (proto == 6 and k.state >= CT_FIN and not (k.flags & CT_DEAD)):
                if mode_t is traced_t:
                    tr_note(self.tr, EV_CT, CT_EV_REUSED, t.conn, k.state)
                ct_delete(ct, t.conn)
                ct.deleted += 1
                k = NULL
            else:
                pn_spin_unlock(&ct.lock)
                return fail(pk, DROP_CT_CLASH)
        c = ct_insert(ct, &nc, self.now)
        if unlikely(c < 0):
            pn_spin_unlock(&ct.lock)
            return fail(pk, DROP_CT_FULL)
        k = &ct.conns[c]
        if unlikely(not ld32(&self.ct.any)):
            st32(&self.ct.any, 1)                       # under a shard lock: see conntrack.pxd
        if mode_t is traced_t:
            tr_note(self.tr, EV_CT, CT_EV_NEW, c, k.state)
    else:
        if mode_t is traced_t:
            tr_note(self.tr, EV_CT, CT_EV_HIT, <uint32_t>(k - ct.conns), k.state)
        ct_orig_update(ct, k, proto, flags, self.now)
    k.packets += 1
    bip = k.bip
    bport = k.bport
    sip = k.sip
    snat = k.flags & CT_SNAT
    pn_spin_unlock(&ct.lock)
    if mode_t is traced_t:
        tr_note(self.tr, EV_DNAT, bip, bport, 0)
        if snat:
            tr_note(self.tr, EV_SNAT, sip, 0, 0)
    nat_ip(pk, 16, bip, partial)
    nat_port(pk, 2, bport, partial)
    if snat:
        nat_ip(pk, 12, sip, partial)
    return ST_GATEWAY

cdef void unnat(Dataplane self, mode_t *md, pkt_t *pk) noexcept nogil:
    """A reply of a NATed connection: back to ClusterIP:port as the source
    (and to the client as destination, after hairpin SNAT). Callers test
    ct.any first: with no NATed connection there is nothing to find."""
    cdef ct_t *ct
    cdef uint8_t *ip
    cdef uint8_t *l4
    cdef tuple_t *t
    cdef conn_t *k
    cdef uint8_t proto = pk.m.l4_proto, snat
    cdef uint32_t vip, cip
    cdef uint16_t vport
    cdef bint partial
    if (proto != 6 and proto != 17) or not (pk.m.flags & F_L4) or (pk.m.flags & F_FRAG):
        return
    ip = pk.data + pk.m.l3_off
    l4 = pk.data + pk.m.l4_off
    ct = ct_shard(self.ct, get16(l4 + L4_DPORT))          # a reply is to the client's port
    if not ld(&ct.count):
        return                                     # nothing tracked in its shard: no lock taken
    pn_spin_lock(&ct.lock)
    t = ct_find(ct, tuple_a(get32(ip + IP4_SRC), get32(ip + IP4_DST)), tuple_b(get16(l4), get16(l4 + L4_DPORT), proto))
    if t == NULL or t.dir != CT_REPLY:
        pn_spin_unlock(&ct.lock)
        return
    k = &ct.conns[t.conn]
    if k.expires <= self.now:
        ct_delete(ct, t.conn)
        ct.expired += 1
        pn_spin_unlock(&ct.lock)
        return
    partial = pk.vnet > 0 and ((pk.data - pk.vnet)[0] & VNET_F_NEEDS_CSUM)
    if proto == 6:
        if l4[TCP_FLAGS] & 0x04:
            k.state = CT_CLOSED
        elif l4[TCP_FLAGS] & 0x01:
            k.state = CT_FIN
        elif k.state == CT_NEW:
            k.state = CT_ESTABLISHED
        k.expires = self.now + ct.timeout_ms[k.state]
    else:
        k.state = CT_ESTABLISHED
        k.expires = self.now + ct.udp_stream_ms
    k.packets += 1
    vip = k.vip
    vport = k.vport
    cip = k.cip
    snat = k.flags & CT_SNAT
    pn_spin_unlock(&ct.lock)
    if mode_t is traced_t:
        tr_note(self.tr, EV_UNNAT, vip, vport, cip if snat else 0)
    nat_ip(pk, 12, vip, partial)
    nat_port(pk, 0, vport, partial)
    if snat:
        nat_ip(pk, 16, cip, partial)

cdef int st_encap(Dataplane self, mode_t *md, pkt_t *pk) noexcept nogil:
    """A routed frame for another node: the tunnel (tunnel.pxd), out of the uplink."""
    cdef overlay_t *ov = self.ov
    cdef int r
    cdef uint8_t df
    cdef uint32_t up_vnet
    if not ov.enabled:
        return fail(pk, DROP_NO_ROUTE)
    up_vnet = self.pvnet[ov.uplink]
    df = pk.data[pk.m.l3_off + IP4_FRAG] & 0x40
    r = tun_encap(ov, pk, self.gw.mac, up_vnet, self.now, &self.ip_id, self.sy, self.wid)
    if r == TUN_SEGMENT:
        r = segment(self, md, pk, up_vnet)
        if r >= 0:
            return ST_DONE
    if r == TUN_SENT or r == TUN_SENT_GSO:
        inc(&self.stats.encapsulated)
        if r == TUN_SENT_GSO:
            inc(&self.stats.gso_encapsulated)
        pk.out = ov.uplink
        if mode_t is traced_t:
            tr_note(self.tr, EV_ENCAP, ov.uplink, 0, 0)
        return ST_TX
    if r == TUN_ARP:                     # the frame became an ARP request for the peer
        inc(&self.stats.drops[DROP_VTEP_UNRESOLVED])
        if mode_t is traced_t:
            tr_note(self.tr, EV_VTEP_ARP, 0, 0, 0)
        if up_vnet:
            memset(pk.data - up_vnet, 0, up_vnet)
        pk.out = ov.uplink
        pk.reason = DROP_VTEP_UNRESOLVED
        return ST_TX
    if r == -DROP_TOO_BIG and df and pk.vnet == self.pvnet[pk.in_port] and pk.in_port != ov.uplink:
        # Path MTU discovery (RFC 1191): tell the pod the inner MTU.
        # (Counted here only if answered: an ICMP error gets no answer
        # and is counted as a drop, once.)
        if gw_icmp_error(self.gw, pk, 3, 4, <uint16_t>(ov.mtu - ov.overhead), DROP_TOO_BIG) == GW_REPLY:
            inc(&self.stats.drops[DROP_TOO_BIG])
            return ST_REPLY
    return fail(pk, <uint16_t>(-r))

cdef int segment(Dataplane self, mode_t *md, pkt_t *pk, uint32_t up_vnet) noexcept nogil:
    """An ipip TCP super-frame: cut into segments in this burst's segment
    slots (ipip.pxd, ipip_segment), each queued on the uplink; the
    super-frame's own slot is not sent. 0, or -DROP_* (the frame untouched)."""
    cdef overlay_t *ov = self.ov
    cdef uint32_t base = self.nslots + self.seg_used, k
    cdef int n = tun_segment(ov, pk, &self.pkts[base], self.nseg - self.seg_used, up_vnet, &self.ip_id)
    if n < 0:
        return n
    self.seg_used += <uint32_t>n
    inc(&self.stats.encapsulated)
    inc(&self.stats.segmented)
    add(&self.stats.segments, <uint64_t>n)
    pk.out = ov.uplink
    if mode_t is traced_t:
        tr_note(self.tr, EV_ENCAP, ov.uplink, <uint32_t>n, 0)
    for k in range(<uint32_t>n):
        self.pkts[base + k].in_port = pk.in_port
        self.pkts[base + k].out = ov.uplink
        enqueue(self, md, ov.uplink, base + k, self.pkts[base + k].len)
    return 0

cdef int st_uplink(Dataplane self, mode_t *md, pkt_t *pk) noexcept nogil:
    """From the fabric: the node's own ARP/ICMP, or a tunnel's frame for a local pod."""
    cdef int a
    cdef uint32_t vni = 0
    if mode_t is traced_t:
        if self.ov.mode == TUN_VXLAN and pk.m.l4_proto == IPPROTO_UDP and (pk.m.flags & F_L4) \
                and pk.m.l4_len >= 16:
            vni = get32(pk.data + pk.m.l4_off + 12) >> 8  # the decap reuses these bytes
    a = tun_rx(self.ov, pk, self.gw.mac, self.vnet_len, self.sy, self.wid)
    if a == OV_INNER:
        inc(&self.stats.decapsulated)
        if mode_t is traced_t:
            tr_note(self.tr, EV_DECAP, vni, self.ov.mode, 0)
        return ST_INNER
    if a == OV_REPLY:
        return ST_REPLY
    if a == OV_LOCAL:
        return ST_LOCAL
    return fail(pk, <uint16_t>(-a))

cdef int st_inner(Dataplane self, mode_t *md, pkt_t *pk) noexcept nogil:
    """A decapsulated frame: parsed, then routed if it is IPv4 to this
    node's gateway for one of its pods (flannel is L3, as are the others)."""
    cdef uint16_t r = parse_frame(pk.data, pk.len, &pk.m)
    cdef uint32_t dst
    if r != DROP_NONE:
        return fail(pk, DROP_IPIP_INNER if self.ov.mode == TUN_IPIP else DROP_VXLAN_INNER)
    if mode_t is traced_t:
        tr_note(self.tr, EV_PARSE, pk.m.ethertype, pk.m.l4_proto, pk.m.flags)
    if not self.gw.enabled or not gw_is_dst(self.gw, pk.data) or not (pk.m.flags & F_IP4):
        return fail(pk, DROP_VXLAN_NOT_ROUTED)
    if ld32(&self.ct.any):
        unnat(self, md, pk)                  # a remote backend's reply to a local client
    dst = get32(pk.data + pk.m.l3_off + IP4_DST)
    if not gw_in_subnet(self.gw, dst) and dst != self.gw.ip:
        return fail(pk, DROP_NO_ROUTE)       # no transit between remote nodes
    return ST_GATEWAY

cdef inline void dispatch(Dataplane self, mode_t *md, uint32_t i, pkt_t *pk) noexcept nogil:
    """Run one frame through the graph: each stage's verdict picks the next,
    until a terminal one, which is acted on here. The graph has no cycles,
    so the stages are tried in an order where every edge points down the
    page: one pass, and the compiler, seeing which constant each inlined
    stage returns, jumps straight from one stage to the next."""
    cdef int n = st_input(self, md, pk)
    if n == ST_UPLINK:
        n = st_uplink(self, md, pk)
    if n == ST_INNER:
        n = st_inner(self, md, pk)
    if n == ST_L2:
        n = st_l2(self, md, pk)
    if n == ST_SERVICE:
        n = st_service(self, md, i, pk)
    if n == ST_GATEWAY:
        n = gw_next(self, pk, gateway_ip4(self, md, pk))
    if n == ST_BRIDGE:
        n = st_forward(self, md, pk, pk.domain, False)
    elif n == ST_FORWARD:
        n = st_forward(self, md, pk, self.gw.domain, True)
    elif n == ST_ENCAP:
        n = st_encap(self, md, pk)
    if n == ST_TX:
        enqueue(self, md, <uint16_t>pk.out, i, pk.len)
    elif n == ST_DROP:
        drop(self, md, pk, pk.reason)
    elif n == ST_FLOOD:
        flood(self, md, i, pk)
    elif n == ST_REPLY:
        reply(self, md, i, pk)
    elif n == ST_LOCAL:
        local(self, md, pk)

cdef void run_mode(Dataplane self, mode_t *md, uint32_t start, uint32_t n, uint64_t now) noexcept nogil:
    cdef uint32_t i, k
    cdef pkt_t *pkts = self.pkts
    for k in range(self.n_active):
        self.txq_len[self.tx_active[k]] = 0
    self.n_active = 0
    self.now = now
    self.seg_used = 0
    for i in range(start, start + n):
        dispatch(self, md, i, &pkts[i])


cdef class Dataplane:
    def __cinit__(self, uint32_t nslots=256, uint32_t slot_size=2048,
                  uint64_t fdb_capacity=65536, double aging=300.0, clock=None,
                  uint64_t service_capacity=131072, uint32_t conntrack_capacity=262144,
                  service_cidr="10.96.0.0/12", uint32_t segments=0, Dataplane primary=None):
        cdef void *mem = NULL
        if not 1 <= nslots <= 65536:
            raise ValueError(f"nslots must be 1..65536, got {nslots}")
        # 128: the gateway writes its ICMP errors in place, up to 118 bytes
        # (two VLAN tags, IP and ICMP headers, a quoted 60-byte header + 8).
        if not 128 <= slot_size <= 65536 + 1024:
            raise ValueError(f"slot_size must be 128..66560 bytes, got {slot_size}")
        if segments > 4096 or nslots + segments > 65536:
            raise ValueError(f"segments must be 0..4096 and nslots + segments at most 65536, got {segments}")
        self.nslots = nslots
        self.nseg = segments
        self.qcap = nslots + segments
        self.slot_size = slot_size
        # Round to cache lines, and avoid strides that are a multiple of 4 KB:
        # those map every frame header to the same cache set.
        self.stride = (HEADROOM + slot_size + 63) & ~63u
        if self.stride % 4096 == 0:
            self.stride += 64
        if posix_memalign(&mem, 64, <size_t>nslots * self.stride) != 0:
            raise MemoryError("frame slots")
        self.mem = <uint8_t *>mem
        self.pkts = <pkt_t *>calloc(self.qcap, sizeof(pkt_t))
        self.txq = <uint16_t *>calloc(<size_t>MAX_PORTS * self.qcap, sizeof(uint16_t))
        if self.pkts == NULL or self.txq == NULL:
            raise MemoryError("burst descriptors")
        # Segment slots (ipip's TSO in the fast path): descriptors after the
        # frame slots, over memory of their own, sized for one frame each.
        self.segmem = NULL
        if segments:
            if posix_memalign(&mem, 64, <size_t>segments * MAX_SEGMENT) != 0:
                raise MemoryError("segment slots")
            self.segmem = <uint8_t *>mem
            for i in range(segments):
                self.pkts[nslots + i].data = self.segmem + <size_t>i * MAX_SEGMENT + HEADROOM
        memset(&self.stats, 0, sizeof(self.stats))
        memset(self.txq_len, 0, sizeof(self.txq_len))
        self.n_active = 0
        for i in range(nslots):
            self.pkts[i].data = self.mem + <size_t>i * self.stride + HEADROOM
        self.tr = NULL
        self.workers_ = []
        if primary is not None:
            self._share(primary)
            return
        self.wid = PN_NO_READER
        if posix_memalign(&mem, 64, sizeof(pn_sync_t)) != 0:
            raise MemoryError("table lock")
        memset(mem, 0, sizeof(pn_sync_t))
        self.sy = <pn_sync_t *>mem
        self.fdb = Fdb(fdb_capacity, aging)
        self.ports = Ports()
        self.gateway = Gateway()
        self.gw = &self.gateway.g
        self.overlay = Overlay()
        self.ov = &self.overlay.ov
        self.services = Services(service_capacity, service_cidr)
        self.sm = &self.services.m
        self.conntrack = Conntrack(conntrack_capacity)
        self.ct = &self.conntrack.tab
        self.guard = PortGuard()
        self.pg = &self.guard.g
        self.vnet_len = 0
        memset(self.pvnet, 0, sizeof(self.pvnet))
        self.ft = &self.fdb.t
        self.pt = &self.ports.p
        self.clock = clock if clock is not None else time.monotonic
        self.fdb.sy = self.ports.sy = self.gateway.sy = self.overlay.sy = self.sy
        self.services.sy = self.guard.sy = self.sy
        self.rngp = &self.sm.rng

    cdef void _share(self, Dataplane p):
        # A worker: the primary's tables, its own everything else.
        if p.primary is not None:
            raise ValueError("a worker is made from the primary dataplane, not from another worker")
        if p.sy.nreaders >= PN_MAX_WORKERS:
            raise ValueError(f"at most {PN_MAX_WORKERS} workers")
        self.primary = p
        self.sy = p.sy
        self.fdb, self.ports, self.gateway, self.overlay = p.fdb, p.ports, p.gateway, p.overlay
        self.services, self.conntrack, self.guard = p.services, p.conntrack, p.guard
        self.ft, self.pt, self.gw, self.ov, self.sm, self.ct, self.pg = p.ft, p.pt, p.gw, p.ov, p.sm, p.ct, p.pg
        self.clock = p.clock
        self.vnet_len = p.vnet_len
        memcpy(self.pvnet, p.pvnet, sizeof(self.pvnet))
        self.wid = p.sy.nreaders
        self.rng = mix64(p.sm.rng + self.wid + 1) | 1
        self.rngp = &self.rng
        # Outer IP ids: each worker counts from its own place in the 16-bit
        # space, so two workers' frames to one VTEP do not share ids soon.
        self.ip_id = <uint16_t>((self.wid + 1) * 16411)
        p.workers_.append(self)
        st32(&p.sy.nreaders, p.sy.nreaders + 1)

    def __dealloc__(self):
        free(self.mem)
        free(self.segmem)
        free(self.pkts)
        free(self.txq)
        if self.primary is None and self.sy != NULL:
            free(self.sy)

    def worker(self):
        """A new worker over this dataplane's tables: its own slots, TX
        queues and counters (summed into this one's counters()). Bursts it
        runs while other threads run theirs go through run_locked()."""
        return Dataplane(self.nslots, self.slot_size, segments=self.nseg, primary=self)

    @property
    def workers(self):
        return list(self.workers_)

    def lock_stats(self):
        """How often the table lock was taken as a writer, and of those by a
        worker learning a neighbour or VTEP (fastpath/sync.pxd)."""
        return {"write_locks": self.sy.write_locks, "upgrades": self.sy.upgrades,
                "readers": self.sy.nreaders}

    cdef uint64_t now_ms(self) except? 0:
        return <uint64_t>(self.clock() * 1000.0)

    cdef void run(self, uint32_t start, uint32_t n, uint64_t now) noexcept nogil:
        cdef untraced_t plain
        cdef traced_t traced
        if self.tr == NULL:
            run_mode(self, &plain, start, n, now)
        else:
            run_mode(self, &traced, start, n, now)

    # ---- control side: slots, bursts, queues ----------------------------

    def _slot_check(self, uint32_t i):
        if i >= self.nslots:
            raise IndexError(f"slot {i} out of range 0..{self.nslots - 1}")

    def load(self, uint32_t i, const unsigned char[:] frame, uint16_t in_port, vnet=None):
        """Copy a frame into slot i, received on in_port, with its virtio-net
        header (vnet_len bytes, zeros if None). Returns False (and counts a
        too_long drop) if it does not fit."""
        self._slot_check(i)
        cdef uint32_t hl = self.pvnet[in_port] if in_port < MAX_PORTS else 0
        if vnet is not None and len(vnet) != hl:
            raise ValueError(f"vnet header for port {in_port} must be {hl} bytes, got {len(vnet)}")
        cdef pkt_t *pk = &self.pkts[i]
        cdef uint32_t n = frame.shape[0]
        cdef untraced_t plain
        pk.data = self.mem + <size_t>i * self.stride + HEADROOM
        pk.in_port = in_port
        pk.vnet = <uint8_t>hl
        if hl:
            memset(pk.data - hl, 0, hl)
            if vnet is not None:
                hdr = bytes(vnet)
                memcpy(pk.data - hl, <const char *>hdr, hl)
        if n > self.slot_size:
            pk.len = 0
            drop(self, &plain, pk, DROP_TOO_LONG)
            if in_port < MAX_PORTS:
                inc(&self.stats.port[in_port].rx_packets)
                add(&self.stats.port[in_port].rx_bytes, n)
            return False
        if n:
            memcpy(pk.data, &frame[0], n)
        pk.len = n
        return True

    def run_burst(self, uint32_t start, uint32_t n):
        """Process slots start..start+n-1 (already loaded) in one nogil pass."""
        if start + n > self.nslots:
            raise IndexError(f"burst {start}+{n} exceeds {self.nslots} slots")
        cdef uint64_t now = self.now_ms()
        # A worker runs it as a reader of the tables; the primary, when it
        # has workers (process, trace on a live agent), as the writer, so
        # its bursts see and change the tables while no worker is mid-burst.
        with nogil:
            self.run_locked(start, n, now)

    cdef void run_locked(self, uint32_t start, uint32_t n, uint64_t now) noexcept nogil:
        if self.wid == PN_NO_READER:
            pn_write_lock(self.sy)
            self.run(start, n, now)
            pn_write_unlock(self.sy)
        else:
            pn_read_lock(self.sy, self.wid)
            self.run(start, n, now)
            pn_read_unlock(self.sy, self.wid)

    def tx_ports(self):
        """Ports with frames queued by the last burst."""
        return [self.tx_active[k] for k in range(self.n_active)]

    def tx_queue(self, uint16_t port):
        """Slot indices queued for port by the last burst, in arrival order."""
        if port >= MAX_PORTS:
            raise ValueError(f"port must be 0..{MAX_PORTS - 1}, got {port}")
        base = <size_t>port * self.qcap
        return [self.txq[base + k] for k in range(self.txq_len[port])]

    def _queued_check(self, uint32_t i):
        # a frame slot, or a segment slot (ipip TSO) a TX queue may name
        if i >= self.qcap:
            raise IndexError(f"slot {i} out of range 0..{self.qcap - 1}")

    def frame(self, uint32_t i):
        """Bytes of the frame now in slot i (a segment slot, i >= nslots,
        holds one segment of a super-frame cut by the last burst)."""
        self._queued_check(i)
        return (<char *>self.pkts[i].data)[:self.pkts[i].len]

    def vnet_hdr(self, uint32_t i):
        """The virtio-net header in front of slot i's frame, in the format of
        the port it leaves by (or came in on, if it does not leave by one)."""
        self._queued_check(i)
        cdef pkt_t *pk = &self.pkts[i]
        # A frame that leaves by a port has that port's header; one that does
        # not (flooded, dropped, consumed) its own: a decapsulated frame's is
        # a pod's, whatever the uplink's size.
        cdef uint32_t n = self.pvnet[pk.out] if 0 <= pk.out < MAX_PORTS else pk.vnet
        return (<char *>(pk.data - n))[:n]

    def verdict(self, uint32_t i):
        """(egress, reason) of slot i after the last burst: egress is a port,
        'flood' or 'drop'; reason names the drop."""
        self._slot_check(i)
        cdef pkt_t *pk = &self.pkts[i]
        if pk.out == OUT_DROP:
            return "drop", DROP_NAMES[pk.reason]
        if pk.out == OUT_FLOOD:
            return "flood", None
        if pk.out == OUT_LOCAL:
            return "local", None
        return pk.out, None

    def trace(self, frame, int in_port, vnet=None, bint commit=False):
        """Run one frame through the fast path noting every decision, and
        return {"events": [(name, a, b, c), ...], "verdict", "outputs":
        [(port, frame, vnet_hdr), ...]}. Nothing is transmitted. Unless
        commit, it runs in a forked copy of this process, so FDB learning,
        conntrack, affinity and counters of the live tables stay untouched
        while the code that runs is exactly the live code."""
        import os
        import pickle
        if not 0 <= in_port < MAX_PORTS:
            raise ValueError(f"port must be 0..{MAX_PORTS - 1}, got {in_port}")
        frame = bytes(frame)
        if commit:
            return self._trace_one(frame, in_port, vnet)
        rfd, wfd = os.pipe()
        # Forked with the table lock held: no worker is mid-burst, so the copy
        # inherits no half-made change and no spinlock held by a thread that
        # does not exist there (only the forking thread is copied).
        pid = -1
        pn_write_lock(self.sy)
        try:
            pid = os.fork()
        finally:
            if pid != 0:
                pn_write_unlock(self.sy)
        if pid == 0:                                  # the copy: run, report, vanish
            code = 0
            try:
                os.close(rfd)
                try:
                    out = pickle.dumps(("ok", self._trace_one(frame, in_port, vnet)))
                except Exception as e:                # bad arguments: report them
                    out = pickle.dumps(("error", f"{type(e).__name__}: {e}"))
                view = memoryview(out)
                while view:
                    view = view[os.write(wfd, view):]
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        os.close(wfd)
        chunks = []
        try:
            while True:
                b = os.read(rfd, 1 << 16)
                if not b:
                    break
                chunks.append(b)
        finally:
            os.close(rfd)
            os.waitpid(pid, 0)
        if not chunks:
            raise RuntimeError("trace: the traced copy of the fast path died")
        kind, result = pickle.loads(b"".join(chunks))
        if kind == "error":
            raise ValueError(result)
        return result

    def _trace_one(self, bytes frame, int in_port, vnet):
        cdef trace_t tr
        cdef uint32_t k, n
        tr.n = 0
        if not self.load(0, frame, <uint16_t>in_port, vnet):
            return {"events": [("drop", DROP_TOO_LONG, 0, 0)], "verdict": ("drop", "too_long"),
                    "outputs": [], "lost_events": 0}
        self.tr = &tr
        try:
            self.run_burst(0, 1)
        finally:
            self.tr = NULL
        events = [(EVENT_NAMES[tr.ev[k].ev], tr.ev[k].a, tr.ev[k].b, tr.ev[k].c)
                  for k in range(min(tr.n, TRACE_MAX))]
        outputs = []
        for port in self.tx_ports():
            n = self.pvnet[port]
            for j in self.tx_queue(port):
                if j == 0 or j >= self.nslots:         # the frame, or the segments it was cut into
                    outputs.append((port, self.frame(j), (<char *>(self.pkts[j].data - n))[:n]))
        return {"events": events, "verdict": self.verdict(0), "outputs": outputs,
                "lost_events": max(0, <int>tr.n - TRACE_MAX)}

    def process(self, frames, int in_port):
        """Run frames received on in_port through the fast path, in bursts of
        at most nslots. Returns [(out_port, frame_bytes), ...] ordered by input
        frame, then port; dropped frames are absent (see counters())."""
        if isinstance(frames, (bytes, bytearray, memoryview)):
            frames = [frames]
        frames = [bytes(f) for f in frames]
        if not 0 <= in_port < MAX_PORTS:
            raise ValueError(f"port must be 0..{MAX_PORTS - 1}, got {in_port}")
        out = []
        cdef uint32_t pos = 0, n, j, k, q, p
        while pos < len(frames):
            n = min(<uint32_t>len(frames) - pos, self.nslots)
            for j in range(n):
                self.load(j, frames[pos + j], in_port)
            # Frames too long for a slot were dropped at load; run the rest.
            live = [j for j in range(n) if self.pkts[j].len or len(frames[pos + j]) == 0]
            self.run_burst(0, n) if len(live) == n else self._run_live(live)
            pairs = []
            for k in range(self.n_active):
                p = self.tx_active[k]
                for q in range(self.txq_len[p]):
                    pairs.append((self.txq[<size_t>p * self.qcap + q], p))
            pairs.sort()
            out.extend((p, self.frame(j)) for j, p in pairs)
            pos += n
        return out

    def _run_live(self, live):
        # Compact the loaded frames so the burst is contiguous.
        cdef uint32_t dst = 0
        for j in live:
            if j != dst:
                self.pkts[dst], self.pkts[j] = self.pkts[j], self.pkts[dst]
            dst += 1
        self.run_burst(0, dst)

    def bench_stage(self, uint32_t n, uint32_t iters, uint32_t snap=64, bint run=True, uint32_t sport_off=0,
                    uint32_t sport_base=0):
        """For bench/: run slots 0..n-1 `iters` times in one nogil loop. Stages
        that rewrite headers in place (routing, encap, decap) would not see the
        same frames twice, so after each burst the descriptors and the first
        `snap` bytes of each frame are restored from a snapshot (run=False
        times the restore alone, to subtract). With sport_off, the 16-bit
        source port at that offset changes every burst so each burst brings
        new flows (UDP frames with checksum 0), from sport_base on (workers
        benchmarked side by side take bases apart). Returns seconds."""
        if n > self.nslots or n == 0:
            raise ValueError(f"n must be 1..{self.nslots}")
        cdef uint8_t *snapbuf = <uint8_t *>calloc(<size_t>n * snap + 1, 1)
        cdef uint8_t **data = <uint8_t **>calloc(n, sizeof(uint8_t *))
        cdef uint32_t *lens = <uint32_t *>calloc(n, sizeof(uint32_t))
        cdef uint32_t i, it
        cdef uint64_t now = self.now_ms()
        if snapbuf == NULL or data == NULL or lens == NULL:
            free(snapbuf); free(data); free(lens)
            raise MemoryError()
        for i in range(n):
            data[i] = self.pkts[i].data
            lens[i] = self.pkts[i].len
            memcpy(snapbuf + <size_t>i * snap, data[i], min(snap, lens[i]))
        t0 = time.perf_counter()
        with nogil:
            for it in range(iters):
                if run:
                    pn_read_lock(self.sy, self.wid)      # as a worker's burst (nothing for the primary)
                    self.run(0, n, now)
                    pn_read_unlock(self.sy, self.wid)
                for i in range(n):
                    self.pkts[i].data = data[i]
                    self.pkts[i].len = lens[i]
                    memcpy(data[i], snapbuf + <size_t>i * snap, snap if snap < lens[i] else lens[i])
                    if sport_off:
                        put16(data[i] + sport_off, <uint16_t>(1024 + (sport_base + it * n + i) % 64000))
        t1 = time.perf_counter()
        free(snapbuf); free(data); free(lens)
        return t1 - t0

    # ---- ports, counters ------------------------------------------------

    cdef void _set_pvnet(self, int port, uint32_t n):
        # one port's header size in this dataplane and its workers' copies
        # (the caller holds the table lock)
        cdef Dataplane w
        self.pvnet[port] = n
        for w in self.workers_:
            w.pvnet[port] = n

    def add_port(self, int port, int domain=0):
        self.ports.add(port, domain)
        pn_write_lock(self.sy)
        self._set_pvnet(port, self.vnet_len)
        pn_write_unlock(self.sy)

    def remove_port(self, int port):
        """Remove a port and every FDB entry pointing at it, static included."""
        self.ports.remove(port)
        self.fdb.flush(port=port, include_static=True)
        self.guard.clear(port)

    def set_port_guard(self, int port, mac, ip):
        """Anti-spoofing: frames from port must come from mac and, for IPv4
        and ARP, from ip; others are dropped as spoof_mac / spoof_ip."""
        self.guard.set(port, mac, ip)

    def clear_port_guard(self, int port):
        self.guard.clear(port)

    def set_vnet_len(self, uint32_t n):
        """Bytes of virtio-net header in front of pods' frames (0, 10 or 12):
        for every port, and ports added later (the uplink may differ)."""
        if n not in (0, 10, 12):
            raise ValueError(f"pod vnet header length must be 0, 10 or 12, got {n}")
        cdef Dataplane w
        cdef int p
        pn_write_lock(self.sy)
        self.vnet_len = n
        for w in self.workers_:
            w.vnet_len = n
        for p in range(MAX_PORTS):
            if self.pvnet[p] == 0 or p != self.ov.uplink or not self.ov.enabled:
                self._set_pvnet(p, n)
        pn_write_unlock(self.sy)

    def set_port_vnet(self, int port, uint32_t n):
        """One port's header size (the uplink's is 24 with UDP-tunnel GSO)."""
        if not 0 <= port < MAX_PORTS:
            raise ValueError(f"port must be 0..{MAX_PORTS - 1}, got {port}")
        if n not in (0, 10, 12, 24):
            raise ValueError(f"vnet header length must be 0, 10, 12 or 24, got {n}")
        pn_write_lock(self.sy)
        self._set_pvnet(port, n)
        pn_write_unlock(self.sy)

    def port_vnet(self, int port):
        return self.pvnet[port]

    def age(self):
        """Sweep aged FDB entries now (the agent calls this periodically)."""
        return self.fdb.age(self.now_ms())

    def conntrack_gc(self):
        """Sweep expired connections now (the agent calls this periodically)."""
        return self.conntrack.gc(self.now_ms())

    def conntrack_dump(self):
        return self.conntrack.dump(self.now_ms())

    def fdb_dump(self):
        return self.fdb.dump(self.now_ms())

    def port_counters(self, int port):
        if not 0 <= port < MAX_PORTS:
            raise ValueError(f"port must be 0..{MAX_PORTS - 1}, got {port}")
        cdef stats_t t
        self._sum_stats(&t)
        return self._port_dict(&t.port[port])

    cdef dict _port_dict(self, port_stats_t *ps):
        return {"rx_packets": ps.rx_packets, "rx_bytes": ps.rx_bytes,
                "tx_packets": ps.tx_packets, "tx_bytes": ps.tx_bytes,
                "rx_dropped": ps.rx_dropped}

    cdef void _sum_stats(self, stats_t *out):
        # This dataplane's counters and its workers', read while they run:
        # each is a uint64 with one writer, loaded atomically (no worker stops).
        cdef Dataplane w
        cdef size_t k, n = sizeof(stats_t) // sizeof(uint64_t)
        cdef uint64_t *o = <uint64_t *>out
        cdef uint64_t *src
        for k in range(n):
            o[k] = ld(&(<uint64_t *>&self.stats)[k])
        for w in self.workers_:
            src = <uint64_t *>&w.stats
            for k in range(n):
                o[k] += ld(&src[k])

    def counters(self):
        """All counters: drops by reason, bridge totals, FDB, and per port,
        summed over this dataplane and its workers."""
        cdef stats_t t
        self._sum_stats(&t)
        gw = self.gateway.counters()
        gw["routed"] = t.routed
        ov = self.overlay.counters()
        ov.update(encapsulated=t.encapsulated, decapsulated=t.decapsulated, gso_encapsulated=t.gso_encapsulated,
                  segmented=t.segmented, segments=t.segments)
        return {
            "drops": {DROP_NAMES[r]: t.drops[r] for r in range(1, N_DROP)},
            "bridge": {"forwarded": t.forwarded, "flooded": t.flooded},
            "fdb": self.fdb.counters(),
            "gateway": gw,
            "overlay": ov,
            "services": self.services.counters(),
            "conntrack": self.conntrack.counters(),
            "ports": {p: self._port_dict(&t.port[p]) for p, _ in self.ports.list()},
        }

    def reset_counters(self):
        cdef Dataplane w
        cdef size_t k, n = sizeof(stats_t) // sizeof(uint64_t)
        pn_write_lock(self.sy)           # no worker mid-burst: its next add starts from 0
        for w in [self] + self.workers_:
            for k in range(n):
                st(&(<uint64_t *>&w.stats)[k], 0)
        pn_write_unlock(self.sy)
