"""The three ways between nodes (issue 15): VXLAN, IP-in-IP (RFC 2003) and
direct routing, in memory, in the shape of test_vxlan.py: the expected
outer frame built with scapy and every field asserted, each decap drop with
its counter, fragmentation needed at each mode's MTU, configure() and route
errors, and what must be the same in every mode (ARP and ping of the node,
the unresolved peer, anti-spoofing, conntrack across the tunnel, vnet
offload headers).

Wire format (notes/contract15.md): ipip outer IPv4 is IHL 5, proto 4, DF,
TTL = inner TTL after the gateway's decrement (Linux `ttl inherit`), DSCP 0,
ECN = inner ECN (RFC 6040 normal mode), a fresh non-zero ID, inner packet
untouched but for TTL-1; decap applies RFC 6040 sec. 4.2. Direct: the routed
frame itself, to the next hop's MAC from the node's underlay MAC."""
import pytest
from scapy.layers.inet import ICMP, IP, IPerror, TCP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.layers.vxlan import VXLAN

from dataplane.testing import NodeInfo, expect_ipip, expect_routed, expect_vxlan
from fastpath import Dataplane

GW_IP, GW_MAC = "10.244.0.1", "0a:58:0a:f4:00:01"
SUBNET = "10.244.0.0/24"
POD = ("10.244.0.2", "0a:58:0a:f4:00:02", 0)
POD2 = ("10.244.0.3", "0a:58:0a:f4:00:03", 1)
REMOTE_GW_MAC = "0a:58:0a:f4:01:01"
REMOTE = "10.244.1.2"                                       # a pod on node-b
NODE_IP, NODE_MAC = "172.30.250.1", "0a:5a:ac:1e:fa:01"
PEER_IP, PEER_MAC = "172.30.250.2", "0a:5a:ac:1e:fa:02"     # node-b's underlay address
UPLINK, UPLINK_DOMAIN = 255, 4095
BCAST = "ff:ff:ff:ff:ff:ff"
VIP = "10.96.0.10"

BACKENDS = ["vxlan", "ipip", "direct"]
OVERHEAD = {"vxlan": 50, "ipip": 20, "direct": 0}
NOT_ECT, ECT1, ECT0, CE = 0, 1, 2, 3


def route(backend, static=True, **kw):
    """node-b's route as the agent gives it: inner_mac for VXLAN only."""
    r = {"cidr": "10.244.1.0/24", "vtep": PEER_IP, "name": "node-b"}
    if backend == "vxlan":
        r["inner_mac"] = REMOTE_GW_MAC
    if static:
        r["vtep_mac"] = PEER_MAC
    r.update(kw)
    return r


def make(clock, backend, static=True, uplink_vnet=0, tunnel_gso=False, mtu=1500):
    dp = Dataplane(nslots=16, slot_size=66000, clock=clock)
    for _, _, port in (POD, POD2):
        dp.add_port(port)
    dp.add_port(UPLINK, domain=UPLINK_DOMAIN)
    dp.gateway.configure(GW_IP, GW_MAC, SUBNET)
    for ip, mac, _ in (POD, POD2):
        dp.gateway.add_neighbor(ip, mac)
    dp.overlay.configure(UPLINK, NODE_IP, NODE_MAC, vni=1, port=4789, mtu=mtu, tunnel_gso=tunnel_gso,
                         backend=backend, prefixlen=24)
    if uplink_vnet:
        dp.set_vnet_len(12)
        dp.set_port_vnet(UPLINK, uplink_vnet)
    dp.overlay.set_routes([route(backend, static)], local=SUBNET)
    for ip, mac, port in (POD, POD2):           # the pods are known to the bridge
        dp.process(bytes(Ether(src=mac, dst=BCAST) / ARP(hwsrc=mac, psrc=ip, pdst="10.244.0.250")), port)
    dp.reset_counters()
    return dp


def from_pod(dst=REMOTE, l4=None, pod=POD, **ip):
    return (Ether(src=pod[1], dst=GW_MAC) / IP(src=pod[0], dst=dst, **ip)
            / (l4 or UDP(sport=1234, dport=53) / (b"q" * 32)))


def routed(pkt, ttl=None):
    """The IPv4 packet of pkt as the gateway leaves it: TTL one less (or
    ttl), header checksum fixed, everything else byte for byte."""
    q = IP(bytes(pkt[IP]))
    q.ttl = q.ttl - 1 if ttl is None else ttl
    del q.chksum
    return bytes(q)


def ip_checksum_ok(hdr):
    s = sum(int.from_bytes(hdr[k:k + 2], "big") for k in range(0, len(hdr), 2))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return s == 0xffff


def recomputed(pkt, layer):
    q = pkt.copy()
    del q[layer].chksum
    return q.__class__(bytes(q))[layer].chksum


def sums_ok(ip_bytes):
    """IP and L4 checksums of an IPv4 packet as scapy recomputes them."""
    p = IP(ip_bytes)
    assert p.chksum == recomputed(p, IP), "IP checksum"
    for layer in (TCP, UDP, ICMP):
        if p.haslayer(layer) and not (layer is UDP and p[UDP].chksum == 0):
            assert p[layer].chksum == recomputed(p, layer), f"{layer.__name__} checksum"
            break
    return p


def drops(dp):
    return {k: v for k, v in dp.counters()["drops"].items() if v}


# ---- what the wire carries, per backend ---------------------------------------

NODE = NodeInfo("node-a", 0, SUBNET, GW_IP, GW_MAC, NODE_IP, NODE_MAC)


def peer(mac=PEER_MAC):
    """node-b's addresses, its underlay MAC mac (the one frames to it carry)."""
    return NodeInfo("node-b", 1, "10.244.1.0/24", "10.244.1.1", REMOTE_GW_MAC, PEER_IP, mac)


def check_ipip(out, sent, dst_mac=PEER_MAC):
    """An RFC 2003 frame to node-b carrying sent's IPv4 packet, routed
    (TTL-1 and its checksum, nothing else): every outer field by
    expect_ipip (DSCP 0, ECN and TTL from the inner header, DF, length,
    checksum). Returns the outer IP id."""
    expect_ipip(out, NODE, peer(dst_mac), inner=routed(sent))
    o = Ether(out)[IP]
    assert o.tos == sent[IP].tos & 3, "outer DSCP 0, ECN copied from the inner header"
    assert o.ttl == sent[IP].ttl - 1, "outer TTL inherited from the routed inner packet"
    assert o.id != 0
    return o.id


def check_direct(out, sent, dst_mac=PEER_MAC):
    """The routed packet itself, unencapsulated, from this node's underlay
    MAC to dst_mac (expect_routed), byte for byte."""
    expect_routed(out, sent, src_mac=NODE_MAC, dst_mac=dst_mac)
    assert Ether(out).type == 0x0800
    assert out[14:] == routed(sent), "the routed packet itself, unencapsulated"


def check_vxlan(out, sent, dst_mac=PEER_MAC):
    """VXLAN to node-b (expect_vxlan: every outer field, VNI 1, port 4789),
    inside sent routed from this node's gateway MAC to node-b's."""
    expect_vxlan(out, NODE, peer(dst_mac), vni=1, dport=4789,
                 inner=Ether(src=GW_MAC, dst=REMOTE_GW_MAC) / IP(routed(sent)))


CHECK = {"vxlan": check_vxlan, "ipip": check_ipip, "direct": check_direct}


def inner_ip(backend, out):
    """The IPv4 packet a frame on the fabric carries (the frame's own in direct mode)."""
    return out[{"vxlan": 50 + 14, "ipip": 14 + 20, "direct": 14}[backend]:]


def ipip_in(inner, src=PEER_IP, dst_ip=NODE_IP, dst_mac=NODE_MAC, tos=0, flags="DF", frag=0, ttl=64):
    return bytes(Ether(src=PEER_MAC, dst=dst_mac)
                 / IP(src=src, dst=dst_ip, proto=4, tos=tos, flags=flags, frag=frag, ttl=ttl, id=777) / inner)


def vxlan_in(inner_ip_pkt, dst_ip=NODE_IP, dst_mac=NODE_MAC):
    return bytes(Ether(src=PEER_MAC, dst=dst_mac) / IP(src=PEER_IP, dst=dst_ip, flags="DF")
                 / UDP(sport=50000, dport=4789) / VXLAN(flags=0x08, vni=1)
                 / Ether(src=REMOTE_GW_MAC, dst=GW_MAC) / inner_ip_pkt)


def direct_in(inner_ip_pkt, dst_mac=NODE_MAC):
    return bytes(Ether(src=PEER_MAC, dst=dst_mac) / inner_ip_pkt)


def wire(backend, inner_ip_pkt):
    """What node-b puts on the fabric for one of its pods' packets (routed there already)."""
    return {"vxlan": vxlan_in, "ipip": ipip_in, "direct": direct_in}[backend](inner_ip_pkt)


REMOTE_PKT = IP(src=REMOTE, dst=POD[0], ttl=63) / TCP(sport=80, dport=4000, flags="SA") / b"hello"


def is_who_has(frame, target):
    e = Ether(frame)
    a = e[ARP]
    return (e.dst, e.src, e.type, a.op, a.hwsrc, a.psrc, a.hwdst, a.pdst) \
        == (BCAST, NODE_MAC, 0x0806, 1, NODE_MAC, NODE_IP, "00:00:00:00:00:00", target)


# ---- encap ------------------------------------------------------------------------

@pytest.mark.parametrize("tos", [0x00, ECT1, ECT0, CE, 0xb8, 0xb8 | ECT1, 0xb8 | ECT0, 0xb8 | CE])
def test_ipip_encap_every_outer_field(clock, tos):
    dp = make(clock, "ipip")
    f = from_pod(ttl=64, tos=tos)
    [(port, out)] = dp.process(bytes(f), 0)
    assert port == UPLINK
    check_ipip(out, f)
    c = dp.counters()
    assert c["overlay"]["encapsulated"] == 1 and c["ports"][UPLINK]["tx_packets"] == 1 and drops(dp) == {}


@pytest.mark.parametrize("ttl", [2, 64, 255])
def test_ipip_outer_ttl_follows_the_inner(clock, ttl):
    dp = make(clock, "ipip")
    f = from_pod(ttl=ttl, flags="DF", l4=TCP(sport=4000, dport=80, flags="S") / (b"s" * 40))
    [(port, out)] = dp.process(bytes(f), 0)
    assert port == UPLINK and Ether(out)[IP].ttl == ttl - 1
    check_ipip(out, f)


def test_ipip_outer_id_is_fresh_for_every_frame(clock):
    dp = make(clock, "ipip")
    frames = [from_pod(l4=UDP(sport=1000 + k, dport=53) / (b"q" * (30 + k))) for k in range(12)]
    outs = dp.process([bytes(f) for f in frames], 0)
    assert [p for p, _ in outs] == [UPLINK] * 12
    ids = [check_ipip(out, f) for (_, out), f in zip(outs, frames)]
    assert all((y - x) % 65536 == 1 for x, y in zip(ids, ids[1:])), ids
    more = dp.process([bytes(f) for f in frames[:3]], 0)     # and across bursts
    assert [check_ipip(out, f) for (_, out), f in zip(more, frames)] == [(ids[-1] + k) % 65536 for k in (1, 2, 3)]


@pytest.mark.parametrize("tos", [0x00, 0xb8 | CE])
def test_direct_leaves_as_routed(clock, tos):
    dp = make(clock, "direct")
    f = from_pod(ttl=64, tos=tos, flags="DF")
    [(port, out)] = dp.process(bytes(f), 0)
    assert port == UPLINK
    check_direct(out, f)
    assert Ether(out)[IP].tos == tos and Ether(out)[IP].ttl == 63 and Ether(out)[IP].id == f[IP].id
    c = dp.counters()
    assert c["overlay"]["encapsulated"] == 1 and c["ports"][UPLINK]["tx_packets"] == 1 and drops(dp) == {}


@pytest.mark.parametrize("backend", BACKENDS)
def test_encap_to_the_peer(clock, backend):
    dp = make(clock, backend)
    for pod, f in ((POD, from_pod()), (POD, from_pod(l4=TCP(sport=5000, dport=80, flags="S") / (b"x" * 30))),
                   (POD2, from_pod("10.244.1.200", l4=ICMP(id=3, seq=9) / (b"p" * 40), pod=POD2))):
        [(port, out)] = dp.process(bytes(f), pod[2])
        assert port == UPLINK
        CHECK[backend](out, f)
    assert dp.counters()["overlay"]["encapsulated"] == 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_unresolved_peer_is_asked_by_arp(clock, backend):
    dp = make(clock, backend, static=False)
    [(port, out)] = dp.process(bytes(from_pod()), 0)          # the frame becomes a who-has
    assert port == UPLINK and is_who_has(out, PEER_IP) and len(out) == 60
    assert dp.process(bytes(from_pod()), 0) == []              # asked already: dropped
    assert drops(dp) == {"vtep_unresolved": 2} and dp.counters()["overlay"]["encapsulated"] == 0
    assert dp.overlay.routes()[0]["vtep_state"] == "incomplete"
    rep = Ether(src=PEER_MAC, dst=NODE_MAC) / ARP(op=2, hwsrc=PEER_MAC, psrc=PEER_IP, hwdst=NODE_MAC, pdst=NODE_IP)
    assert dp.process(bytes(rep), UPLINK) == []
    assert dp.overlay.routes()[0]["vtep_mac"] == PEER_MAC
    [(port, out)] = dp.process(bytes(from_pod()), 0)
    assert port == UPLINK
    CHECK[backend](out, from_pod())
    assert dp.counters()["overlay"]["encapsulated"] == 1


# ---- decap --------------------------------------------------------------------------

def check_delivered(dp, res, sent_ip, pod=POD):
    [(port, out)] = res
    e = Ether(out)
    assert port == pod[2] and (e.src, e.dst, e.type) == (GW_MAC, pod[1], 0x0800)
    assert out[14:] == routed(sent_ip), "delivered with TTL-1, the rest untouched"
    assert e[IP].ttl == sent_ip[IP].ttl - 1
    return e


@pytest.mark.parametrize("backend", BACKENDS)
def test_decap_delivers_to_the_pod(clock, backend):
    dp = make(clock, backend)
    check_delivered(dp, dp.process(wire(backend, REMOTE_PKT), UPLINK), REMOTE_PKT)
    c = dp.counters()
    assert c["overlay"]["decapsulated"] == 1 and drops(dp) == {}
    # nothing from the fabric is learned by the pods' bridge
    assert sorted(d["mac"] for d in dp.fdb_dump()) == sorted([POD[1], POD2[1]])


def test_ipip_decap_from_a_kernel_sender(clock):
    """What a Linux ipip device sends: outer TTL inherited, DF, the id it
    likes, outer ECN ECT(0) over an ECT(0) inner: delivered whole."""
    dp = make(clock, "ipip")
    inner = IP(src="10.244.1.77", dst=POD2[0], ttl=63, tos=0x28 | ECT0, flags="DF") / UDP(sport=9, dport=7) / (b"k" * 9)
    frame = ipip_in(inner, tos=ECT0, ttl=63)
    check_delivered(dp, dp.process(frame, UPLINK), inner, POD2)
    assert dp.counters()["overlay"]["decapsulated"] == 1


BAD_INNER = bytes(REMOTE_PKT)


def with_byte(b, at, value):
    b = bytearray(b)
    b[at] = value
    return bytes(b)


def with_len(b, n):
    return b[:2] + n.to_bytes(2, "big") + b[4:]


IPIP_DROPS = [
    (ipip_in(REMOTE_PKT, src="172.30.250.9"), "tunnel_unknown_source"),
    (ipip_in(REMOTE_PKT, src="10.244.1.2"), "tunnel_unknown_source"),
    (ipip_in(REMOTE_PKT, flags="MF"), "ipip_fragment"),
    (ipip_in(REMOTE_PKT, flags=0, frag=100), "ipip_fragment"),
    (ipip_in(REMOTE_PKT, flags="MF", frag=1), "ipip_fragment"),
    (ipip_in(b""), "ipip_inner"),
    (ipip_in(BAD_INNER[:19]), "ipip_inner"),
    (ipip_in(BAD_INNER[:1]), "ipip_inner"),
    (ipip_in(with_byte(BAD_INNER, 0, 0x65)), "ipip_inner"),          # version 6
    (ipip_in(with_byte(BAD_INNER, 0, 0x05)), "ipip_inner"),          # version 0
    (ipip_in(with_byte(BAD_INNER, 0, 0x44)), "ipip_inner"),          # IHL 4
    (ipip_in(with_byte(BAD_INNER, 0, 0x4f)), "ipip_inner"),          # 60-byte header, 45 bytes there
    (ipip_in(with_len(BAD_INNER, len(BAD_INNER) + 1)), "ipip_inner"),  # total length past the outer packet
    (ipip_in(with_len(BAD_INNER, 19)), "ipip_inner"),                # total length under the header
    (ipip_in(IP(src=REMOTE, dst="10.244.3.3") / UDP()), "no_route"),
    (ipip_in(IP(src=REMOTE, dst="8.8.8.8") / UDP()), "no_route"),
    (ipip_in(IP(src=REMOTE, dst="10.244.1.5") / UDP()), "no_route"),   # node-b's own pods: no transit
    (ipip_in(REMOTE_PKT, dst_ip="172.30.250.9"), "uplink_not_ours"),
    (ipip_in(REMOTE_PKT, dst_mac="0a:5a:00:00:00:09"), "uplink_not_ours"),
    (vxlan_in(REMOTE_PKT), "uplink_unsupported"),                    # VXLAN in ipip mode
]


@pytest.mark.parametrize("frame,reason", IPIP_DROPS)
def test_ipip_decap_drops_are_counted(clock, frame, reason):
    dp = make(clock, "ipip")
    assert dp.process(frame, UPLINK) == []
    assert drops(dp) == {reason: 1}
    # no_route comes after decapsulation (counted then, as vxlan counts it); the rest before
    assert dp.counters()["overlay"]["decapsulated"] == (reason == "no_route")


@pytest.mark.parametrize("backend,frame", [
    ("vxlan", ipip_in(REMOTE_PKT)),                                  # protocol 4 in vxlan mode
    ("direct", ipip_in(REMOTE_PKT)),                                 # to the node's IP: nothing it serves
    ("direct", vxlan_in(REMOTE_PKT)),
])
def test_the_other_tunnels_are_unsupported(clock, backend, frame):
    dp = make(clock, backend)
    assert dp.process(frame, UPLINK) == []
    assert drops(dp) == {"uplink_unsupported": 1}


DIRECT_DROPS = [
    (direct_in(IP(src="10.244.9.2", dst=POD[0]) / UDP()), "tunnel_unknown_source"),
    (direct_in(IP(src=PEER_IP, dst=POD[0]) / UDP()), "tunnel_unknown_source"),   # node-b itself: not its pods
    (direct_in(IP(src="8.8.8.8", dst=POD[0]) / TCP(flags="S")), "tunnel_unknown_source"),
    (direct_in(IP(src=POD2[0], dst=POD[0]) / UDP()), "tunnel_unknown_source"),    # our own pod's address
    (direct_in(IP(src=REMOTE, dst="10.244.3.3") / UDP()), "no_route"),
    (direct_in(IP(src=REMOTE, dst="10.244.1.9") / UDP()), "no_route"),
    (direct_in(IP(src=REMOTE, dst="192.168.7.7") / UDP()), "no_route"),
    (direct_in(REMOTE_PKT, dst_mac="0a:5a:00:00:00:09"), "uplink_not_ours"),
]


@pytest.mark.parametrize("frame,reason", DIRECT_DROPS)
def test_direct_rx_drops_are_counted(clock, frame, reason):
    dp = make(clock, "direct")
    assert dp.process(frame, UPLINK) == []
    assert drops(dp) == {reason: 1}
    assert dp.counters()["overlay"]["decapsulated"] == (reason == "no_route")


# RFC 6040 sec. 4.2, Figure 4: (arriving inner, arriving outer) -> inner after decap (None: drop)
RFC6040 = {
    (NOT_ECT, NOT_ECT): NOT_ECT, (NOT_ECT, ECT0): NOT_ECT, (NOT_ECT, ECT1): NOT_ECT, (NOT_ECT, CE): None,
    (ECT0, NOT_ECT): ECT0, (ECT0, ECT0): ECT0, (ECT0, ECT1): ECT1, (ECT0, CE): CE,
    (ECT1, NOT_ECT): ECT1, (ECT1, ECT0): ECT1, (ECT1, ECT1): ECT1, (ECT1, CE): CE,
    (CE, NOT_ECT): CE, (CE, ECT0): CE, (CE, ECT1): CE, (CE, CE): CE,
}


@pytest.mark.parametrize("inner,outer", sorted(RFC6040))
def test_ipip_decap_combines_ecn_as_rfc6040_says(clock, inner, outer):
    dp = make(clock, "ipip")
    dscp = 0x28                                                     # AF11: kept whatever the ECN
    pkt = IP(src=REMOTE, dst=POD[0], ttl=63, tos=dscp | inner) / UDP(sport=7, dport=9) / (b"e" * 20)
    res = dp.process(ipip_in(pkt, tos=outer), UPLINK)
    want = RFC6040[(inner, outer)]
    if want is None:
        assert res == [] and drops(dp) == {"ecn_ce_not_ect": 1}
        return
    [(port, out)] = res
    e = Ether(out)
    assert port == POD[2] and e[IP].tos == dscp | want
    assert out[14:] == routed(_with_tos(pkt, dscp | want)), "only the ECN field, TTL and checksum change"
    sums_ok(out[14:])
    assert drops(dp) == {} and dp.counters()["overlay"]["decapsulated"] == 1


def _with_tos(pkt, tos):
    q = IP(bytes(pkt))
    q.tos = tos
    return q


# ---- the node's own address, in every mode ----------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_node_ip_answers_arp_and_ping(clock, backend):
    dp = make(clock, backend)
    req = Ether(src=PEER_MAC, dst=BCAST) / ARP(hwsrc=PEER_MAC, psrc=PEER_IP, pdst=NODE_IP)
    [(port, out)] = dp.process(bytes(req), UPLINK)
    a = Ether(out)[ARP]
    assert port == UPLINK and (a.op, a.hwsrc, a.psrc, a.hwdst, a.pdst) == (2, NODE_MAC, NODE_IP, PEER_MAC, PEER_IP)
    ping = Ether(src=PEER_MAC, dst=NODE_MAC) / IP(src=PEER_IP, dst=NODE_IP) / ICMP(id=5, seq=1) / b"x"
    [(port, out)] = dp.process(bytes(ping), UPLINK)
    e = Ether(out)
    assert port == UPLINK and (e.dst, e.src) == (PEER_MAC, NODE_MAC)
    assert (e[IP].src, e[IP].dst, e[ICMP].type, e[ICMP].id) == (NODE_IP, PEER_IP, 0, 5)
    assert e[ICMP].chksum == recomputed(e, ICMP) and e[IP].chksum == recomputed(e, IP)
    assert drops(dp) == {}


@pytest.mark.parametrize("backend", BACKENDS)
def test_ttl_expired_on_arrival_is_answered_back_across_the_fabric(clock, backend):
    """A remote pod's packet arriving with TTL 1: the time exceeded goes to
    it the way node-b's packets come (its tunnel, or routed directly)."""
    dp = make(clock, backend)
    pkt = IP(src=REMOTE, dst=POD[0], ttl=1, id=4242) / UDP(sport=33434, dport=33435) / b"trace"
    [(port, out)] = dp.process(wire(backend, pkt), UPLINK)
    assert port == UPLINK and (Ether(out).dst, Ether(out).src) == (PEER_MAC, NODE_MAC)
    ans = sums_ok(inner_ip(backend, out))
    assert (ans.src, ans.dst, ans[ICMP].type, ans[ICMP].code) == (GW_IP, REMOTE, 11, 0)
    assert ans[IPerror].id == 4242 and ans[IPerror].dst == POD[0]
    if backend == "ipip":
        o = Ether(out)[IP]
        assert (o.proto, o.src, o.dst, int(o.flags), o.ttl, o.len) == (4, NODE_IP, PEER_IP, 2, ans.ttl, len(out) - 14)
        assert ip_checksum_ok(out[14:34])
    assert drops(dp) == {"ttl_exceeded": 1}


# ---- fragmentation needed at each mode's MTU ---------------------------------------

@pytest.mark.parametrize("mtu", [1500, 9000])
@pytest.mark.parametrize("backend", BACKENDS)
def test_fragmentation_needed_at_each_modes_mtu(clock, backend, mtu):
    pmtu = mtu - OVERHEAD[backend]                            # 1450 / 1480 / 1500 at fabric 1500
    dp = make(clock, backend, mtu=mtu)
    big = from_pod(l4=UDP(sport=1, dport=2) / (b"x" * (pmtu + 1 - 28)), flags="DF", id=31)
    assert len(big[IP]) == pmtu + 1
    [(port, out)] = dp.process(bytes(big), 0)
    e = Ether(out)
    assert port == POD[2] and (e.src, e.dst) == (GW_MAC, POD[1])
    assert (e[IP].src, e[IP].dst) == (GW_IP, POD[0])
    assert (e[ICMP].type, e[ICMP].code, e[ICMP].nexthopmtu) == (3, 4, pmtu)
    assert e[ICMP].chksum == recomputed(e, ICMP) and e[IP].chksum == recomputed(e, IP)
    assert (e[IPerror].id, e[IPerror].dst, e[IPerror].len) == (31, REMOTE, pmtu + 1)
    nodf = from_pod(l4=UDP(sport=1, dport=2) / (b"x" * (pmtu + 1 - 28)))
    assert dp.process(bytes(nodf), 0) == []
    assert drops(dp) == {"too_big": 2}
    ok = from_pod(l4=UDP(sport=1, dport=2) / (b"x" * (pmtu - 28)), flags="DF")    # exactly the pod MTU
    [(port, out)] = dp.process(bytes(ok), 0)
    assert port == UPLINK and len(out) == 14 + mtu                  # a full fabric frame
    CHECK[backend](out, ok)
    assert dp.counters()["overlay"]["encapsulated"] == 1


# ---- configuration ------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_overhead_and_info(clock, backend):
    dp = make(clock, backend)
    assert dp.overlay.backend == backend and dp.overlay.overhead == OVERHEAD[backend]
    info = dp.overlay.info()
    assert (info["backend"], info["overhead"], info["mtu"], info["ip"], info["mac"]) == \
        (backend, OVERHEAD[backend], 1500, NODE_IP, NODE_MAC)


def test_vxlan_is_the_default_backend(clock):
    dp = Dataplane(nslots=4, clock=clock)
    dp.add_port(UPLINK, domain=UPLINK_DOMAIN)
    dp.overlay.configure(UPLINK, NODE_IP, NODE_MAC)
    assert (dp.overlay.backend, dp.overlay.overhead) == ("vxlan", 50)
    assert (dp.overlay.info()["backend"], dp.overlay.info()["overhead"]) == ("vxlan", 50)


@pytest.mark.parametrize("kw", [{"backend": "gre"}, {"backend": ""}, {"backend": "VXLAN"},
                                {"backend": "ipip", "mtu": 100}])
def test_configure_refuses(clock, kw):
    dp = make(clock, "direct")
    with pytest.raises(ValueError):
        dp.overlay.configure(UPLINK, NODE_IP, NODE_MAC, prefixlen=24, **kw)
    assert dp.overlay.backend == "direct"                       # as it was
    [(port, out)] = dp.process(bytes(from_pod()), 0)
    check_direct(out, from_pod())


def test_ipip_without_tunnel_gso_and_direct_with_it_are_taken(clock):
    dp = make(clock, "ipip", tunnel_gso=False)
    assert dp.overlay.backend == "ipip"
    dp = make(clock, "direct", tunnel_gso=True)
    assert dp.overlay.backend == "direct"


@pytest.mark.parametrize("backend", ["ipip", "direct"])
def test_inner_mac_is_optional_outside_vxlan(clock, backend):
    dp = make(clock, backend)
    [r] = dp.overlay.routes()
    assert (r["cidr"], r["vtep"], r["inner_mac"], r["vtep_mac"], r["name"]) == \
        ("10.244.1.0/24", PEER_IP, None, PEER_MAC, "node-b")
    dp.overlay.set_routes([route(backend, inner_mac=REMOTE_GW_MAC)], local=SUBNET)
    assert dp.overlay.routes()[0]["inner_mac"] == REMOTE_GW_MAC     # reported as given, unused
    [(port, out)] = dp.process(bytes(from_pod()), 0)
    CHECK[backend](out, from_pod())


def test_vxlan_still_needs_the_inner_mac(clock):
    dp = make(clock, "vxlan")
    before = dp.overlay.routes()
    r = route("vxlan")
    del r["inner_mac"]
    with pytest.raises(ValueError, match="inner_mac"):
        dp.overlay.set_routes([r], local=SUBNET)
    assert dp.overlay.routes() == before


def test_direct_refuses_next_hops_off_the_fabric(clock):
    dp = make(clock, "direct")
    before = dp.overlay.routes()
    good = route("direct", cidr="10.244.2.0/24", vtep="172.30.250.3", name="node-c")
    for bad in ([route("direct", vtep="172.30.251.2")],
                [good, route("direct", vtep="10.0.0.2", vtep_mac=None)],
                [route("direct", vtep="172.30.249.254")]):
        with pytest.raises(ValueError, match="not on the fabric"):
            dp.overlay.set_routes(bad, local=SUBNET)
        assert dp.overlay.routes() == before
    [(port, out)] = dp.process(bytes(from_pod()), 0)                 # the old route still carries
    assert port == UPLINK
    check_direct(out, from_pod())
    dp.overlay.set_routes([route("direct"), good], local=SUBNET)     # on the fabric: taken
    assert sorted(r["cidr"] for r in dp.overlay.routes()) == ["10.244.1.0/24", "10.244.2.0/24"]


# ---- the same in every mode: anti-spoofing, conntrack -------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_anti_spoofing_in_every_mode(clock, backend):
    dp = make(clock, backend)
    dp.set_port_guard(POD[2], POD[1], POD[0])
    assert dp.process(bytes(from_pod(pod=("10.244.0.66", POD[1], 0))), 0) == []          # forged IPv4 source
    assert dp.process(bytes(from_pod(pod=(POD[0], "0a:58:0a:f4:00:66", 0))), 0) == []    # forged MAC
    assert dp.process(bytes(from_pod(pod=(REMOTE, POD[1], 0))), 0) == []                  # a remote pod's
    assert drops(dp) == {"spoof_ip": 2, "spoof_mac": 1}
    [(port, out)] = dp.process(bytes(from_pod()), 0)                                       # its own: leaves
    assert port == UPLINK
    CHECK[backend](out, from_pod())
    assert dp.counters()["overlay"]["encapsulated"] == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_clusterip_across_the_fabric_in_every_mode(clock, backend):
    """A SYN to a ClusterIP whose backend is on node-b is DNATed and carried
    there; node-b's SYN-ACK comes back across the fabric and is reverse-NATed."""
    dp = make(clock, backend)
    dp.services.set(VIP, 80, "TCP", [(REMOTE, 8080)])
    syn = from_pod(VIP, l4=TCP(sport=40000, dport=80, flags="S", seq=1000), ttl=64)
    [(port, out)] = dp.process(bytes(syn), 0)
    assert port == UPLINK and (Ether(out).dst, Ether(out).src) == (PEER_MAC, NODE_MAC)
    p = sums_ok(inner_ip(backend, out))
    assert (p.src, p.dst, p[TCP].sport, p[TCP].dport, p[TCP].flags, p.ttl) == (POD[0], REMOTE, 40000, 8080, "S", 63)
    if backend == "ipip":
        o = Ether(out)[IP]
        assert (o.proto, o.ttl, o.len, int(o.flags)) == (4, 63, len(out) - 14, 2) and ip_checksum_ok(out[14:34])
    [conn] = dp.conntrack_dump()
    assert (conn["state"], conn["backend"], conn["service"]) == ("new", f"{REMOTE}:8080", f"{VIP}:80")
    synack = IP(src=REMOTE, dst=POD[0], ttl=63) / TCP(sport=8080, dport=40000, flags="SA", seq=5000, ack=1001)
    [(port, out)] = dp.process(wire(backend, synack), UPLINK)
    e = Ether(out)
    assert port == POD[2] and (e.src, e.dst) == (GW_MAC, POD[1])
    r = sums_ok(out[14:])
    assert (r.src, r.dst, r[TCP].sport, r[TCP].dport, r[TCP].flags, r.ttl) == (VIP, POD[0], 80, 40000, "SA", 62)
    assert dp.conntrack_dump()[0]["state"] == "established"
    # a reply from node-b's pod that conntrack does not know is not NATed
    stray = IP(src=REMOTE, dst=POD[0], ttl=63) / TCP(sport=8080, dport=40001, flags="SA")
    [(port, out)] = dp.process(wire(backend, stray), UPLINK)
    assert port == POD[2] and (Ether(out)[IP].src, Ether(out)[TCP].sport) == (REMOTE, 8080)
    assert drops(dp) == {}


# ---- virtio-net headers ---------------------------------------------------------------

def vnet12(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset):
    return (bytes([flags, gso_type]) + hdr_len.to_bytes(2, "little") + gso_size.to_bytes(2, "little")
            + csum_start.to_bytes(2, "little") + csum_offset.to_bytes(2, "little") + b"\0\0")


def le(h, o):
    return int.from_bytes(h[o:o + 2], "little")


@pytest.mark.parametrize("uplink_vnet", [12, 24])
def test_direct_gso_super_frame_leaves_whole(clock, uplink_vnet):
    """Direct mode with uplink TSO: no outer header, so the pod's offload
    metadata is the uplink's as it stands."""
    dp = make(clock, "direct", uplink_vnet=uplink_vnet, tunnel_gso=True)
    seg = from_pod(l4=TCP(sport=5000, dport=80, flags="A", options=[("NOP", None)] * 12) / (b"d" * 20000),
                   flags="DF")
    hdr = vnet12(0x01, 0x01, 14 + 20 + 32, 1448, 34, 16)
    dp.load(0, bytes(seg), 0, vnet=hdr)
    dp.run_burst(0, 1)
    assert dp.verdict(0) == (UPLINK, None)
    h = dp.vnet_hdr(0)
    assert len(h) == uplink_vnet
    assert h[:10] == hdr[:10], "flags, gso_type TCPV4, hdr_len, gso_size, csum_start, csum_offset unchanged"
    assert h[10:] == bytes(uplink_vnet - 10), "no tunnel offsets"
    check_direct(dp.frame(0), seg)
    assert dp.counters()["overlay"]["encapsulated"] == 1 and drops(dp) == {}


def test_direct_gso_without_uplink_tso_is_too_big(clock):
    dp = make(clock, "direct", uplink_vnet=12, tunnel_gso=False)
    seg = from_pod(l4=TCP(sport=5000, dport=80, flags="A") / (b"d" * 5000))
    dp.load(0, bytes(seg), 0, vnet=vnet12(0x01, 0x01, 54, 1448, 34, 16))
    dp.run_burst(0, 1)
    assert dp.verdict(0) == ("drop", "too_big")


@pytest.mark.parametrize("uplink_vnet", [12, 24])
def test_ipip_gso_super_frame_is_too_big(clock, uplink_vnet):
    """No IPIP GSO type in the virtio-net header: pods get MTU-sized frames
    in ipip mode, and a super-frame is not sent."""
    dp = make(clock, "ipip", uplink_vnet=uplink_vnet)
    seg = from_pod(l4=TCP(sport=5000, dport=80, flags="A") / (b"d" * 5000))
    dp.load(0, bytes(seg), 0, vnet=vnet12(0x01, 0x01, 54, 1448, 34, 16))
    dp.run_burst(0, 1)
    assert dp.verdict(0) == ("drop", "too_big")
    assert drops(dp) == {"too_big": 1} and dp.counters()["overlay"]["encapsulated"] == 0


def partial(ip_pkt_bytes):
    """The L4 checksum replaced by the pseudo-header sum (as a sender with
    checksum offload leaves it); returns (bytes, csum_offset)."""
    p = IP(ip_pkt_bytes)
    ihl = p.ihl * 4
    l4len = p.len - ihl
    off = {6: 16, 17: 6}[p.proto]
    s = sum(int.from_bytes(ip_pkt_bytes[k:k + 2], "big") for k in (12, 14, 16, 18)) + p.proto + l4len
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    at = ihl + off
    return ip_pkt_bytes[:at] + s.to_bytes(2, "big") + ip_pkt_bytes[at + 2:], off


def dec_ttl(ipb):
    """An IPv4 packet's bytes with TTL one less and the header checksum
    recomputed, the rest (a partial L4 sum included) as it was."""
    b = bytearray(ipb)
    b[8] -= 1
    b[10:12] = b"\0\0"
    ihl = (b[0] & 15) * 4
    s = sum(int.from_bytes(b[k:k + 2], "big") for k in range(0, ihl, 2))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    b[10:12] = (~s & 0xffff).to_bytes(2, "big")
    return bytes(b)


def complete(frame, start, off):
    """What the device does for NEEDS_CSUM: the checksum from start to the end."""
    b = frame[start:] + (b"\0" if (len(frame) - start) % 2 else b"")     # the field holds the pseudo-header sum
    s = sum(int.from_bytes(b[k:k + 2], "big") for k in range(0, len(b), 2))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    at = start + off
    return frame[:at] + (~s & 0xffff).to_bytes(2, "big") + frame[at + 2:]


L4S = {"udp": UDP(sport=1000, dport=53) / (b"c" * 300), "tcp": TCP(sport=5000, dport=80, flags="PA") / (b"c" * 300)}


@pytest.mark.parametrize("l4", sorted(L4S))
@pytest.mark.parametrize("backend", BACKENDS)
def test_needs_csum_start_moves_by_the_outer_header(clock, backend, l4):
    dp = make(clock, backend, uplink_vnet=12)
    f = from_pod(l4=L4S[l4], flags="DF")
    ipb, off = partial(bytes(f[IP]))
    data = bytes(f)[:14] + ipb
    dp.load(0, data, 0, vnet=vnet12(0x01, 0, 0, 0, 34, off))
    dp.run_burst(0, 1)
    assert dp.verdict(0) == (UPLINK, None)
    h, out = dp.vnet_hdr(0), dp.frame(0)
    assert len(h) == 12 and h[0] & 0x01 and h[1] == 0
    assert (le(h, 6), le(h, 8)) == (34 + OVERHEAD[backend], off)
    assert le(h, 4) == 0 and h[10:] == b"\0\0"
    assert inner_ip(backend, out) == dec_ttl(ipb), "TTL-1, header checksum fixed, the partial sum left for the device"
    done = complete(out, le(h, 6), off)
    sums_ok(inner_ip(backend, done))                                 # and the device's sum is right


@pytest.mark.parametrize("backend", BACKENDS)
def test_decap_moves_needs_csum_back_to_the_pods_offsets(clock, backend):
    dp = make(clock, backend, uplink_vnet=12)
    pkt = IP(src=REMOTE, dst=POD[0], ttl=63) / TCP(sport=80, dport=4000, flags="PA") / (b"r" * 200)
    ipb, off = partial(bytes(pkt))
    frame = wire(backend, IP(ipb))
    assert frame[-len(ipb):] == ipb
    dp.load(0, frame, UPLINK, vnet=vnet12(0x01, 0, 0, 0, len(frame) - len(ipb) + 20, off))
    dp.run_burst(0, 1)
    assert dp.verdict(0) == (POD[2], None)
    h, out = dp.vnet_hdr(0), dp.frame(0)
    assert len(h) == 12 and h[0] & 0x01 and h[1] == 0 and (le(h, 6), le(h, 8)) == (34, off)
    assert out[14:] == dec_ttl(ipb)
    sums_ok(complete(out, 34, off)[14:])
    assert dp.counters()["overlay"]["decapsulated"] == 1
