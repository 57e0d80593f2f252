"""VXLAN encap/decap in the fast path, checked field by field against scapy's
VXLAN layer (the shape of VPP's test_vxlan.py: build the expected frame, check
every outer field, check the inner frame)."""
import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.layers.vxlan import VXLAN

from dataplane.testing import NodeInfo, expect_vxlan
from fastpath import Dataplane

GW_IP, GW_MAC = "10.244.0.1", "0a:58:0a:f4:00:01"
POD = ("10.244.0.2", "0a:58:0a:f4:00:02")
REMOTE_GW_MAC = "0a:58:0a:f4:01:01"
NODE_IP, NODE_MAC = "172.30.250.1", "0a:5a:ac:1e:fa:01"
PEER_IP, PEER_MAC = "172.30.250.2", "0a:5a:ac:1e:fa:02"
UPLINK = 2


def make(clock, port=4789, static=True, vnet=0, tunnel_gso=False, mtu=1500):
    dp = Dataplane(nslots=16, slot_size=66000, clock=clock)
    dp.add_port(0)
    dp.add_port(1)
    dp.add_port(UPLINK, domain=4095)
    dp.gateway.configure(GW_IP, GW_MAC, "10.244.0.0/24")
    dp.gateway.add_neighbor(*POD)
    dp.overlay.configure(UPLINK, NODE_IP, NODE_MAC, vni=1, port=port, mtu=mtu, tunnel_gso=tunnel_gso)
    if vnet:
        dp.set_vnet_len(12)
        dp.set_port_vnet(UPLINK, 24 if tunnel_gso else 12)
    dp.overlay.set_routes([{"cidr": "10.244.1.0/24", "vtep": PEER_IP, "inner_mac": REMOTE_GW_MAC,
                            "vtep_mac": PEER_MAC if static else None, "name": "node-b"}],
                          local="10.244.0.0/24")
    # the pod is known to the bridge
    dp.process(bytes(Ether(src=POD[1], dst="ff:ff:ff:ff:ff:ff") / ARP(psrc=POD[0], pdst="10.244.0.9")), 0)
    return dp


def from_pod(dst="10.244.1.2", l4=None, **ip):
    return Ether(src=POD[1], dst=GW_MAC) / IP(src=POD[0], dst=dst, **ip) / (l4 or UDP(sport=1234, dport=53) / b"query")


def recomputed(pkt, layer):
    q = pkt.copy()
    del q[layer].chksum
    return q.__class__(bytes(q))[layer].chksum


NODE = NodeInfo("node-a", 0, "10.244.0.0/24", GW_IP, GW_MAC, NODE_IP, NODE_MAC)
PEER = NodeInfo("node-b", 1, "10.244.1.0/24", "10.244.1.1", REMOTE_GW_MAC, PEER_IP, PEER_MAC)


def routed_inner(inner_sent):
    """The pod's frame as the gateway routes it to node-b: from its MAC to
    node-b's gateway (no flooding), TTL one less, checksum fixed."""
    q = IP(bytes(inner_sent[IP]))
    q.ttl -= 1
    del q.chksum
    return Ether(src=GW_MAC, dst=REMOTE_GW_MAC) / IP(bytes(q))


def check_encapsulation(out, inner_sent, vni=1, port=4789):
    """Every outer field (expect_vxlan: addresses, DF, TTL 64, length and
    checksum, source port in 49152-65535, flags, VNI) and the inner frame
    byte for byte; the outer UDP checksum is 0 (the fast path never fills it)."""
    e = Ether(out)
    inner = expect_vxlan(out, NODE, PEER, vni=vni, dport=port, ttl=64, inner=routed_inner(inner_sent))
    assert e[UDP].chksum == 0
    assert inner[IP].ttl == inner_sent[IP].ttl - 1
    assert bytes(inner[IP].payload) == bytes(inner_sent[IP].payload)        # the payload untouched
    return e


def test_encap_every_outer_field(clock):
    dp = make(clock)
    f = from_pod(ttl=64)
    [(port, out)] = dp.process(bytes(f), 0)
    assert port == UPLINK
    check_encapsulation(out, f)
    c = dp.counters()
    assert c["overlay"]["encapsulated"] == 1 and c["ports"][UPLINK]["tx_packets"] == 1


def test_source_port_follows_the_inner_flow(clock):
    dp = make(clock)
    sport = lambda sp: Ether(dp.process(bytes(from_pod(l4=UDP(sport=sp, dport=53))), 0)[0][1])[UDP].sport
    assert sport(1000) == sport(1000)
    assert len({sport(p) for p in range(1000, 1032)}) > 16


def test_flannel_port_selectable(clock):
    dp = make(clock, port=8472)
    [(_, out)] = dp.process(bytes(from_pod()), 0)
    check_encapsulation(out, from_pod(), port=8472)


def vxlan_in(inner, dst_ip=NODE_IP, dst_mac=NODE_MAC, dport=4789, vni=1, flags=0x08, ipflags="DF"):
    return bytes(Ether(src=PEER_MAC, dst=dst_mac) / IP(src=PEER_IP, dst=dst_ip, flags=ipflags)
                 / UDP(sport=50000, dport=dport) / VXLAN(flags=flags, vni=vni) / inner)


REMOTE_INNER = (Ether(src=REMOTE_GW_MAC, dst=GW_MAC) / IP(src="10.244.1.2", dst=POD[0], ttl=63)
                / TCP(sport=80, dport=4000, flags="SA") / b"hello")


def test_decap_delivers_to_the_pod(clock):
    dp = make(clock)
    [(port, out)] = dp.process(vxlan_in(REMOTE_INNER), UPLINK)
    e = Ether(out)
    assert port == 0
    assert (e.src, e.dst) == (GW_MAC, POD[1])
    assert (e[IP].src, e[IP].dst, e[IP].ttl) == ("10.244.1.2", POD[0], 62)
    assert e[IP].chksum == recomputed(e, IP) and bytes(e[TCP].payload) == b"hello"
    assert dp.counters()["overlay"]["decapsulated"] == 1
    # the remote gateway's MAC is not learned by the pods' bridge
    assert [d["mac"] for d in dp.fdb_dump()] == [POD[1]]


@pytest.mark.parametrize("frame,reason", [
    (vxlan_in(REMOTE_INNER, dst_ip="172.30.250.9"), "uplink_not_ours"),
    (vxlan_in(REMOTE_INNER, dst_mac="0a:5a:00:00:00:09"), "uplink_not_ours"),
    (vxlan_in(REMOTE_INNER, dport=4790), "uplink_unsupported"),
    (vxlan_in(REMOTE_INNER, flags=0x00), "vxlan_flags"),
    (vxlan_in(REMOTE_INNER, vni=2), "vxlan_vni"),
    (vxlan_in(b"\x01\x02\x03"), "vxlan_inner"),
    (vxlan_in(bytes(REMOTE_INNER)[:30]), "vxlan_inner"),
    (vxlan_in(Ether(src=REMOTE_GW_MAC, dst="0a:58:00:00:00:99") / IP(dst=POD[0]) / UDP()), "vxlan_not_routed"),
    (vxlan_in(REMOTE_INNER, ipflags="MF"), "vxlan_fragment"),
    (vxlan_in(Ether(src=REMOTE_GW_MAC, dst=GW_MAC) / IP(src="10.244.1.2", dst="10.244.3.3") / UDP()), "no_route"),
])
def test_decap_failures_are_counted(clock, frame, reason):
    dp = make(clock)
    assert dp.process(frame, UPLINK) == []
    drops = dp.counters()["drops"]
    assert drops[reason] == 1 and sum(drops.values()) == 1


def test_node_ip_answers_arp_and_ping(clock):
    dp = make(clock)
    req = Ether(src=PEER_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(hwsrc=PEER_MAC, psrc=PEER_IP, pdst=NODE_IP)
    [(port, out)] = dp.process(bytes(req), UPLINK)
    a = Ether(out)[ARP]
    assert port == UPLINK and (a.op, a.hwsrc, a.psrc, a.pdst) == (2, NODE_MAC, NODE_IP, PEER_IP)
    ping = Ether(src=PEER_MAC, dst=NODE_MAC) / IP(src=PEER_IP, dst=NODE_IP) / ICMP(id=5, seq=1) / b"x"
    [(port, out)] = dp.process(bytes(ping), UPLINK)
    e = Ether(out)
    assert (e[IP].src, e[IP].dst, e[ICMP].type, e[ICMP].id) == (NODE_IP, PEER_IP, 0, 5)
    assert e[ICMP].chksum == recomputed(e, ICMP)


def test_vtep_resolved_by_arp(clock):
    dp = make(clock, static=False)
    [(port, out)] = dp.process(bytes(from_pod()), 0)          # the frame becomes a who-has
    a = Ether(out)
    assert port == UPLINK and a.dst == "ff:ff:ff:ff:ff:ff"
    assert (a[ARP].op, a[ARP].hwsrc, a[ARP].psrc, a[ARP].pdst) == (1, NODE_MAC, NODE_IP, PEER_IP)
    assert dp.process(bytes(from_pod()), 0) == []              # asked already: dropped, counted
    assert dp.counters()["drops"]["vtep_unresolved"] == 2
    assert dp.overlay.routes()[0]["vtep_state"] == "incomplete"
    rep = Ether(src=PEER_MAC, dst=NODE_MAC) / ARP(op=2, hwsrc=PEER_MAC, psrc=PEER_IP, hwdst=NODE_MAC, pdst=NODE_IP)
    assert dp.process(bytes(rep), UPLINK) == []
    assert dp.overlay.routes()[0]["vtep_mac"] == PEER_MAC
    [(port, out)] = dp.process(bytes(from_pod()), 0)
    check_encapsulation(out, from_pod())


def test_too_big_answers_fragmentation_needed(clock):
    dp = make(clock)
    big = from_pod(l4=UDP(sport=1, dport=2) / (b"x" * 1460), flags="DF")   # 1488-byte IP packet
    [(port, out)] = dp.process(bytes(big), 0)
    e = Ether(out)
    assert port == 0 and (e[IP].src, e[IP].dst) == (GW_IP, POD[0])
    # to the pod's MAC (the routed copy's rewritten source must not leak into the answer)
    assert (e.src, e.dst) == (GW_MAC, POD[1])
    assert (e[ICMP].type, e[ICMP].code, e[ICMP].nexthopmtu) == (3, 4, 1450)
    assert e[ICMP].chksum == recomputed(e, ICMP)
    nodf = from_pod(l4=UDP(sport=1, dport=2) / (b"x" * 1460))
    assert dp.process(bytes(nodf), 0) == []
    assert dp.counters()["drops"]["too_big"] == 2
    ok = from_pod(l4=UDP(sport=1, dport=2) / (b"x" * (1450 - 28)), flags="DF")   # exactly the pod MTU
    [(port, _)] = dp.process(bytes(ok), 0)
    assert port == UPLINK


def vnet12(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset):
    return (bytes([flags, gso_type]) + hdr_len.to_bytes(2, "little") + gso_size.to_bytes(2, "little")
            + csum_start.to_bytes(2, "little") + csum_offset.to_bytes(2, "little") + b"\0\0")


def test_gso_super_frame_gets_the_udp_tunnel_header(clock):
    """TAP-OFFLOADS.md's table: what the uplink TAP needs to segment an
    encapsulated TCP super-frame itself."""
    dp = make(clock, vnet=12, tunnel_gso=True)
    seg = from_pod(l4=TCP(sport=5000, dport=80, options=[("NOP", None)] * 12) / (b"d" * 20000))
    hdr = vnet12(0x01, 0x01, 14 + 20 + 32, 1398, 34, 16)
    dp.load(0, bytes(seg), 0, vnet=hdr)
    dp.run_burst(0, 1)
    assert dp.verdict(0) == (UPLINK, None)
    h = dp.vnet_hdr(0)
    assert len(h) == 24
    le = lambda o: int.from_bytes(h[o:o + 2], "little")
    assert h[0] == 0x01 and h[1] == 0x21                     # NEEDS_CSUM; TCPV4 | UDP_TUNNEL_IPV4
    assert le(2) == 50 + 14 + 20 + 32                         # hdr_len
    assert le(4) == 1398 and le(6) == 34 + 50 and le(8) == 16
    assert h[10:20] == bytes(10) and le(20) == 34 and le(22) == 64
    e = Ether(dp.frame(0))
    assert e[IP].len == len(dp.frame(0)) - 14 and e[VXLAN].vni == 1
    assert dp.counters()["overlay"]["gso_encapsulated"] == 1


def test_decap_turns_the_tunnel_header_back_into_the_pods_header(clock):
    dp = make(clock, vnet=12, tunnel_gso=True)
    inner = (Ether(src=REMOTE_GW_MAC, dst=GW_MAC) / IP(src="10.244.1.2", dst=POD[0])
             / TCP(options=[("NOP", None)] * 12) / (b"d" * 10000))
    h24 = vnet12(0x01, 0x21, 50 + 66, 1398, 34 + 50, 16)[:10] + bytes(10) + (34).to_bytes(2, "little") \
        + (64).to_bytes(2, "little")
    dp.load(0, vxlan_in(inner), UPLINK, vnet=h24)
    dp.run_burst(0, 1)
    assert dp.verdict(0) == (0, None)
    assert dp.vnet_hdr(0) == vnet12(0x01, 0x01, 66, 1398, 34, 16)
    assert len(dp.frame(0)) == len(inner)


def test_gso_without_tunnel_offload_is_refused(clock):
    dp = make(clock, vnet=12, tunnel_gso=False)
    seg = from_pod(l4=TCP() / (b"d" * 5000))
    dp.load(0, bytes(seg), 0, vnet=vnet12(0x01, 0x01, 54, 1398, 34, 16))
    dp.run_burst(0, 1)
    assert dp.verdict(0) == ("drop", "too_big")


def test_route_updates_are_atomic(clock):
    dp = make(clock)
    before = dp.overlay.routes()
    good = {"cidr": "10.244.2.0/24", "vtep": "172.30.250.3", "inner_mac": "0a:58:0a:f4:02:01"}
    for bad, msg in [
        ([good, dict(good, cidr="10.244.2.128/25")], "overlaps"),
        ([dict(good, cidr="10.244.0.0/24")], "this node's pod subnet"),
        ([dict(good, cidr="10.244.2.1/24")], "host bits"),
        ([dict(good, vtep="300.1.1.1")], "route 0"),
        ([dict(good, inner_mac="01:00:5e:00:00:01")], "unicast"),
        ([dict(good, vni=7)], "VNI"),
        ([dict(good, vtep=NODE_IP)], "own address"),
        ([{"cidr": "10.244.2.0/24"}], "missing 'vtep'"),
    ]:
        with pytest.raises(ValueError, match=msg):
            dp.overlay.set_routes(bad, local="10.244.0.0/24")
        assert dp.overlay.routes() == before
    dp.overlay.set_routes([good], local="10.244.0.0/24")
    assert [r["cidr"] for r in dp.overlay.routes()] == ["10.244.2.0/24"]
    assert dp.process(bytes(from_pod("10.244.1.2")), 0) == []      # old route gone
    assert dp.counters()["drops"]["no_route"] == 1


# ---- VTEP resolution: how often we ask ----------------------------------------

PEER2_IP = "172.30.250.3"


def is_who_has(frame, target):
    """An ARP request from our underlay address for target, broadcast, as RFC 826 has it."""
    e = Ether(frame)
    a = e[ARP]
    return (e.dst, e.src, e.type, a.hwtype, a.ptype, a.hwlen, a.plen, a.op, a.hwsrc, a.psrc, a.hwdst, a.pdst) \
        == ("ff:ff:ff:ff:ff:ff", NODE_MAC, 0x0806, 1, 0x0800, 6, 4, 1, NODE_MAC, NODE_IP, "00:00:00:00:00:00", target)


def test_unresolved_vtep_is_asked_at_most_once_a_second(clock):
    dp = make(clock, static=False)
    dp.overlay.set_routes([
        {"cidr": "10.244.1.0/24", "vtep": PEER_IP, "inner_mac": REMOTE_GW_MAC, "name": "node-b"},
        {"cidr": "10.244.2.0/24", "vtep": PEER2_IP, "inner_mac": "0a:58:0a:f4:02:01", "name": "node-c"}],
        local="10.244.0.0/24")

    def send(dst="10.244.1.2"):
        return dp.process(bytes(from_pod(dst)), 0)

    [(port, out)] = send()                                   # first packet: one who-has for node-b's VTEP
    assert port == UPLINK and is_who_has(out, PEER_IP) and len(out) == 60
    for _ in range(7):                                       # 0.875 s of traffic: nothing more asked
        clock.advance(0.125)
        assert send() == []
    [(port, out)] = send("10.244.2.2")                       # another VTEP has its own timer
    assert port == UPLINK and is_who_has(out, PEER2_IP)
    assert send("10.244.2.2") == []
    clock.advance(0.125)                                     # one second after the first request
    [(port, out)] = send()
    assert port == UPLINK and is_who_has(out, PEER_IP)
    assert send() == [] and send("10.244.2.2") == []         # node-c's second is not up yet
    c = dp.counters()
    assert c["overlay"]["arp_requests"] == 3 and c["overlay"]["encapsulated"] == 0
    assert c["drops"]["vtep_unresolved"] == 13 and sum(c["drops"].values()) == 13   # asked or not, dropped
    # once the answer is in, no more asking: frames are encapsulated
    rep = Ether(src=PEER_MAC, dst=NODE_MAC) / ARP(op=2, hwsrc=PEER_MAC, psrc=PEER_IP, hwdst=NODE_MAC, pdst=NODE_IP)
    assert dp.process(bytes(rep), UPLINK) == []
    clock.advance(5)
    for _ in range(3):
        [(port, out)] = send()
        check_encapsulation(out, from_pod())
    assert dp.counters()["overlay"]["arp_requests"] == 3     # node-b resolved: never asked again


def test_solicit_asks_for_unresolved_vteps_after_a_route_change(clock):
    """What the agent sends at start-up and after each route change (and
    then every second while unresolved): one who-has per VTEP that has
    neither a static MAC nor an ARP answer."""
    dp = make(clock, static=False)
    [frame] = dp.overlay.solicit()
    assert is_who_has(frame, PEER_IP) and len(frame) == 60
    rep = Ether(src=PEER_MAC, dst=NODE_MAC) / ARP(op=2, hwsrc=PEER_MAC, psrc=PEER_IP, hwdst=NODE_MAC, pdst=NODE_IP)
    dp.process(bytes(rep), UPLINK)
    assert dp.overlay.solicit() == []                        # resolved: nothing to ask
    routes = [{"cidr": "10.244.1.0/24", "vtep": PEER_IP, "inner_mac": REMOTE_GW_MAC, "name": "node-b"},
              {"cidr": "10.244.2.0/24", "vtep": PEER2_IP, "inner_mac": "0a:58:0a:f4:02:01", "name": "node-c"},
              {"cidr": "10.244.3.0/24", "vtep": "172.30.250.4", "inner_mac": "0a:58:0a:f4:03:01",
               "vtep_mac": "0a:5a:ac:1e:fa:04", "name": "static"}]
    dp.overlay.set_routes(routes, local="10.244.0.0/24")     # `podnet node add`: node-b stays resolved
    [frame] = dp.overlay.solicit()
    assert is_who_has(frame, PEER2_IP)
    assert {r["name"]: r["vtep_state"] for r in dp.overlay.routes()} == \
        {"node-b": "reachable", "node-c": "incomplete", "static": "static"}


# ---- the outer IP id ---------------------------------------------------------

def ip_checksum_ok(hdr):
    s = sum(int.from_bytes(hdr[k:k + 2], "big") for k in range(0, 20, 2))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return s == 0xffff


def test_each_encapsulated_frame_gets_a_fresh_outer_ip_id(clock):
    """Across the 16-bit wrap too: the id changes frame to frame and the
    incrementally updated header checksum stays right."""
    dp = Dataplane(nslots=256, clock=clock)
    dp.add_port(0)
    dp.add_port(UPLINK, domain=4095)
    dp.gateway.configure(GW_IP, GW_MAC, "10.244.0.0/24")
    dp.overlay.configure(UPLINK, NODE_IP, NODE_MAC)
    dp.overlay.set_routes([{"cidr": "10.244.1.0/24", "vtep": PEER_IP, "inner_mac": REMOTE_GW_MAC,
                            "vtep_mac": PEER_MAC}], local="10.244.0.0/24")
    frames = [bytes(from_pod(l4=UDP(sport=1000 + k % 7, dport=53) / (b"q" * (k % 50)))) for k in range(256)]
    ids = []
    for b in range(260):                                     # 66560 frames: past the wrap
        for j in range(256):
            dp.load(j, frames[j], 0)
        dp.run_burst(0, 256)
        for j in range(256):
            out = dp.frame(j)
            assert dp.verdict(j) == (UPLINK, None)
            assert ip_checksum_ok(out[14:34]), (b, j)
            ids.append(int.from_bytes(out[18:20], "big"))
    assert all((y - x) % 65536 == 1 for x, y in zip(ids, ids[1:]))     # a new id every frame
    assert len(set(ids)) == 65536
    for j in (0, 97, 255):                                   # and the rest of each header as scapy sees it
        check_encapsulation(dp.frame(j), Ether(frames[j]))


def test_solicit_and_traffic_share_one_timer_per_vtep(clock):
    """The agent's solicitations (start-up, route changes, every second)
    and the fast path's ARP on traffic count as one: at most one who-has
    per VTEP a second in all."""
    dp = make(clock, static=False)
    ms = lambda: int(clock() * 1000)
    [f] = dp.overlay.solicit(ms())                             # start-up
    assert is_who_has(f, PEER_IP)
    assert dp.process(bytes(from_pod()), 0) == []              # traffic right after: not asked again
    clock.advance(0.5)
    assert dp.overlay.solicit(ms()) == []                      # the agent's next round, within the second
    clock.advance(0.5)
    [(port, out)] = dp.process(bytes(from_pod()), 0)           # a second on: traffic asks
    assert port == UPLINK and is_who_has(out, PEER_IP)
    clock.advance(0.875)
    assert dp.overlay.solicit(ms()) == []
    clock.advance(0.125)
    [f] = dp.overlay.solicit(ms())
    assert is_who_has(f, PEER_IP)
    assert dp.process(bytes(from_pod()), 0) == []
    assert dp.counters()["drops"]["vtep_unresolved"] == 3 and dp.counters()["overlay"]["arp_requests"] == 1


def test_agent_solicits_at_start_up_after_route_changes_and_once_a_second(tmp_path, clock):
    """The agent's side, with its uplink TAP replaced by a datagram socket
    (one frame per write, header included) and its clock injected."""
    import socket
    from dataplane.agent import UPLINK_DOMAIN, UPLINK_PORT, Agent
    gw = {"ip": GW_IP, "mac": GW_MAC, "subnet": "10.244.0.0/24"}
    agent = Agent({"node": "n1", "netns": "-", "socket": str(tmp_path / "n1.sock"), "vnet": False,
                   "gateway": gw, "pods": []}, clock=clock)
    ours, wire = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    wire.setblocking(False)

    class Uplink:
        def fileno(self):
            return ours.fileno()

        def close(self):
            ours.close()

    def sent():
        out = []
        while True:
            try:
                out.append(wire.recv(65536))
            except BlockingIOError:
                return out
    try:
        agent.setup()
        agent.dp.add_port(UPLINK_PORT, domain=UPLINK_DOMAIN)
        agent.dp.overlay.configure(UPLINK_PORT, NODE_IP, NODE_MAC)
        agent.uplink_tap = Uplink()
        agent.dp.overlay.set_routes([{"name": "n2", "cidr": "10.244.1.0/24", "vtep": PEER_IP,
                                      "inner_mac": REMOTE_GW_MAC}], local=gw["subnet"])
        agent.solicit()                                        # what setup() does last with an uplink
        [f] = sent()
        assert is_who_has(f, PEER_IP)
        clock.advance(0.5)
        agent.route_add({"name": "n3", "cidr": "10.244.2.0/24", "vtep": PEER2_IP,
                         "inner_mac": "0a:58:0a:f4:02:01"})
        [f] = sent()                                           # the new VTEP at once, not n2's again
        assert is_who_has(f, PEER2_IP)
        clock.advance(0.5)
        agent.solicit()                                        # the loop's round: n2 is due, n3 not
        assert [Ether(f)[ARP].pdst for f in sent()] == [PEER_IP]
        clock.advance(0.5)
        agent.solicit()
        assert [Ether(f)[ARP].pdst for f in sent()] == [PEER2_IP]
        agent.dp.process(bytes(Ether(src=PEER_MAC, dst=NODE_MAC) / ARP(op=2, hwsrc=PEER_MAC, psrc=PEER_IP,
                                                                       hwdst=NODE_MAC, pdst=NODE_IP)), UPLINK_PORT)
        clock.advance(5)
        agent.solicit()                                        # answered: only n3 is asked
        assert [Ether(f)[ARP].pdst for f in sent()] == [PEER2_IP]
    finally:
        agent.close()
        wire.close()


def test_24_bit_vni_both_ways(clock):
    """The whole 24-bit VNI is written and checked (a VNI that differs only
    in its top or bottom byte is someone else's)."""
    vni = 0xABCDEF
    dp = Dataplane(nslots=16, clock=clock)
    dp.add_port(0)
    dp.add_port(UPLINK, domain=4095)
    dp.gateway.configure(GW_IP, GW_MAC, "10.244.0.0/24")
    dp.gateway.add_neighbor(*POD)
    dp.overlay.configure(UPLINK, NODE_IP, NODE_MAC, vni=vni)
    dp.overlay.set_routes([{"cidr": "10.244.1.0/24", "vtep": PEER_IP, "inner_mac": REMOTE_GW_MAC,
                            "vtep_mac": PEER_MAC}], local="10.244.0.0/24")
    dp.process(bytes(Ether(src=POD[1], dst="ff:ff:ff:ff:ff:ff") / ARP(psrc=POD[0], pdst="10.244.0.9")), 0)
    [(_, out)] = dp.process(bytes(from_pod()), 0)
    check_encapsulation(out, from_pod(), vni=vni)
    assert out[14 + 20 + 8:14 + 20 + 16] == bytes([0x08, 0, 0, 0, 0xAB, 0xCD, 0xEF, 0])   # reserved bytes 0
    assert [p for p, _ in dp.process(vxlan_in(REMOTE_INNER, vni=vni), UPLINK)] == [0]
    for other in (0x00CDEF, 0xABCD00, 0xABCDEE):
        assert dp.process(vxlan_in(REMOTE_INNER, vni=other), UPLINK) == []
    assert dp.counters()["drops"]["vxlan_vni"] == 3
    with pytest.raises(ValueError, match="VNI"):
        dp.overlay.configure(UPLINK, NODE_IP, NODE_MAC, vni=1 << 24)


def test_pod_mtu_is_fabric_mtu_less_50_with_jumbo_frames(clock):
    dp = make(clock, mtu=9000)
    fits = from_pod(l4=UDP(sport=1, dport=2) / (b"x" * (8950 - 28)), flags="DF")
    [(port, out)] = dp.process(bytes(fits), 0)
    assert port == UPLINK and len(out) == 14 + 9000                  # a full fabric frame
    check_encapsulation(out, fits)
    big = from_pod(l4=UDP(sport=1, dport=2) / (b"x" * (8951 - 28)), flags="DF")
    [(port, out)] = dp.process(bytes(big), 0)
    e = Ether(out)
    assert port == 0 and (e[ICMP].type, e[ICMP].code, e[ICMP].nexthopmtu) == (3, 4, 8950)


def test_vnet_hdr_of_a_flooded_decapsulated_frame_is_the_pods_size(clock):
    """A decapsulated frame routed to a pod whose MAC the bridge has not
    learned is flooded to the pods' ports with a pod-sized (12-byte) header
    in front of it, not the uplink's 24: vnet_hdr(i) reports the frame's own."""
    dp = make(clock, vnet=12, tunnel_gso=True)
    dp.gateway.add_neighbor("10.244.0.7", "0a:58:0a:f4:00:07")          # known to the gateway, not to the FDB
    inner = Ether(src=REMOTE_GW_MAC, dst=GW_MAC) / IP(src="10.244.1.2", dst="10.244.0.7") / UDP(sport=1, dport=2)
    outer = (Ether(src=PEER_MAC, dst=NODE_MAC) / IP(src=PEER_IP, dst=NODE_IP, flags="DF")
             / UDP(sport=50000, dport=4789, chksum=0) / VXLAN(vni=1) / inner)
    assert dp.load(0, bytes(outer), UPLINK, vnet=bytes(24))
    dp.run_burst(0, 1)
    assert dp.verdict(0) == ("flood", None)
    assert sorted(dp.tx_ports()) == [0, 1]
    assert len(dp.vnet_hdr(0)) == 12 and dp.vnet_hdr(0) == bytes(12)
    assert Ether(dp.frame(0))[IP].dst == "10.244.0.7" and Ether(dp.frame(0)).dst == "0a:58:0a:f4:00:07"
