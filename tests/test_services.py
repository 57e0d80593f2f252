"""ClusterIP services in the fast path: DNAT and reverse NAT field by field
(checksums verified by letting scapy recompute them), backend choice (random
spread, Maglev stability, ClientIP affinity), hairpin, rejects without
endpoints, conntrack states, timeouts and GC on an injected clock, backend
removal."""
import collections

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, UDPerror
from scapy.layers.l2 import ARP, Ether
from scapy.layers.vxlan import VXLAN

from fastpath import Dataplane

GW_IP, GW_MAC = "10.244.0.1", "0a:58:0a:f4:00:01"
A = ("10.244.0.2", "0a:58:0a:f4:00:02", 0)      # client pod
B = ("10.244.0.3", "0a:58:0a:f4:00:03", 1)      # local backend
C = ("10.244.0.4", "0a:58:0a:f4:00:04", 2)      # another local pod
REMOTE = "10.244.1.2"                            # a backend on node-b
VIP = "10.96.0.10"
NODE_IP, NODE_MAC, PEER_IP, PEER_MAC = "172.30.250.1", "0a:5a:ac:1e:fa:01", "172.30.250.2", "0a:5a:ac:1e:fa:02"
UPLINK = 255


@pytest.fixture
def dp(clock):
    d = Dataplane(nslots=64, clock=clock, conntrack_capacity=1024, service_capacity=1024)
    for _, _, p in (A, B, C):
        d.add_port(p)
    d.add_port(UPLINK, domain=4095)
    d.gateway.configure(GW_IP, GW_MAC, "10.244.0.0/24")
    for ip, mac, port in (A, B, C):
        d.gateway.add_neighbor(ip, mac)
        d.process(bytes(Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc=ip, pdst="10.244.0.250")), port)
    d.overlay.configure(UPLINK, NODE_IP, NODE_MAC)
    d.overlay.set_routes([{"cidr": "10.244.1.0/24", "vtep": PEER_IP, "inner_mac": "0a:58:0a:f4:01:01",
                           "vtep_mac": PEER_MAC}])
    d.services.seed(7)
    return d


def ok_sums(frame):
    """IP and L4 checksums as scapy recomputes them."""
    e = Ether(frame)
    for layer in (IP, TCP, UDP, ICMP):
        if e.haslayer(layer):
            q = Ether(frame)
            want = q[layer].chksum
            if layer is UDP and want == 0:
                continue
            del q[layer].chksum
            assert Ether(bytes(q))[layer].chksum == want, f"{layer.__name__} checksum"
    return e


def syn(src=A, sport=40000, dport=80, dst=VIP, flags="S", payload=b""):
    return bytes(Ether(src=src[1], dst=GW_MAC) / IP(src=src[0], dst=dst, ttl=64)
                 / TCP(sport=sport, dport=dport, flags=flags, seq=1000, ack=0 if "A" not in flags else 5000)
                 / payload)


def udp(src=A, sport=5353, dport=53, dst=VIP, payload=b"query"):
    return bytes(Ether(src=src[1], dst=GW_MAC) / IP(src=src[0], dst=dst) / UDP(sport=sport, dport=dport) / payload)


def test_dnat_and_reverse_nat_tcp_local_backend(dp):
    dp.services.set(VIP, 80, "TCP", [(B[0], 8080)])
    [(port, out)] = dp.process(syn(), A[2])
    e = ok_sums(out)
    assert port == B[2] and (e.src, e.dst) == (GW_MAC, B[1])
    assert (e[IP].src, e[IP].dst, e[IP].ttl) == (A[0], B[0], 63)
    assert (e[TCP].sport, e[TCP].dport, e[TCP].flags) == (40000, 8080, "S")
    # B answers A directly on the bridge; the reply is un-NATed there
    synack = Ether(src=B[1], dst=A[1]) / IP(src=B[0], dst=A[0]) / TCP(sport=8080, dport=40000, flags="SA")
    [(port, out)] = dp.process(bytes(synack), B[2])
    e = ok_sums(out)
    assert port == A[2] and (e[IP].src, e[IP].dst) == (VIP, A[0])
    assert (e[TCP].sport, e[TCP].dport) == (80, 40000)
    [conn] = dp.conntrack_dump()
    assert (conn["state"], conn["backend"], conn["service"]) == ("established", f"{B[0]}:8080", f"{VIP}:80")
    # the next client segment follows the connection
    [(port, out)] = dp.process(syn(flags="A", payload=b"GET /"), A[2])
    assert port == B[2] and Ether(out)[TCP].dport == 8080 and bytes(Ether(out)[TCP].payload) == b"GET /"


def test_udp_to_remote_backend_and_reply_over_the_overlay(dp):
    dp.services.set(VIP, 53, "UDP", [(REMOTE, 5300)])
    [(port, out)] = dp.process(udp(), A[2])
    assert port == UPLINK
    inner = Ether(bytes(Ether(out)[VXLAN].payload))
    ok_sums(bytes(inner))
    assert (inner[IP].src, inner[IP].dst, inner[UDP].dport) == (A[0], REMOTE, 5300)
    reply = (Ether(src="0a:58:0a:f4:01:01", dst=GW_MAC) / IP(src=REMOTE, dst=A[0], ttl=63)
             / UDP(sport=5300, dport=5353) / b"answer")
    wire = bytes(Ether(src=PEER_MAC, dst=NODE_MAC) / IP(src=PEER_IP, dst=NODE_IP) / UDP(sport=50000, dport=4789)
                 / VXLAN(vni=1) / reply)
    [(port, out)] = dp.process(wire, UPLINK)
    e = ok_sums(out)
    assert port == A[2] and (e[IP].src, e[UDP].sport, e[IP].dst) == (VIP, 53, A[0])
    assert bytes(e[UDP].payload) == b"answer"


def test_random_spreads_flows_over_all_backends(dp):
    backends = [(B[0], 8080), (C[0], 8080), (REMOTE, 8080)]
    dp.services.set(VIP, 80, "TCP", backends)
    seen = collections.Counter()
    for sp in range(300):
        [(_, out)] = dp.process(syn(sport=20000 + sp), A[2])
        e = Ether(out)
        dst = Ether(bytes(e[VXLAN].payload))[IP].dst if e.haslayer(VXLAN) else e[IP].dst
        seen[dst] += 1
    assert set(seen) == {B[0], C[0], REMOTE} and min(seen.values()) > 50


def test_maglev_moves_about_one_nth_when_a_backend_goes(dp):
    backends = [(f"10.244.{n}.{h}", 8080) for n in (0, 1) for h in range(2, 7)]      # N = 10
    dp.services.set(VIP, 80, "TCP", backends, lb="maglev", maglev_size=16381)
    flows = range(20000)
    before = [dp.services.maglev_choice(VIP, 80, "TCP", f) for f in flows]
    dp.services.set(VIP, 80, "TCP", backends[1:], lb="maglev", maglev_size=16381)
    after = [dp.services.maglev_choice(VIP, 80, "TCP", f) for f in flows]
    moved = sum(b != a for b, a in zip(before, after))
    lost = sum(b == backends[0] for b in before)           # these must move
    assert lost / len(flows) == pytest.approx(0.1, abs=0.02)
    assert moved / len(flows) < 0.1 + 0.03                  # barely more than the lost ones
    counts = collections.Counter(after)
    assert max(counts.values()) / min(counts.values()) < 1.2


def test_client_ip_affinity_pins_a_backend(dp, clock):
    dp.services.set(VIP, 80, "TCP", [(B[0], 8080), (C[0], 8080), (REMOTE, 8080)], affinity_timeout=60)
    dsts = set()
    for sp in range(30):
        [(port, out)] = dp.process(syn(sport=30000 + sp), A[2])
        dsts.add(port)
    assert len(dsts) == 1
    assert dp.counters()["services"]["affinity_hits"] == 29
    spread = set()
    for sp in range(40):                                    # each time the affinity has expired:
        clock.advance(61)                                   # a free choice again
        spread.add(dp.process(syn(sport=31000 + sp), A[2])[0][0])
    assert len(spread) > 1


def test_hairpin_snat_to_the_gateway(dp):
    dp.services.set(VIP, 80, "TCP", [(A[0], 8080)])
    [(port, out)] = dp.process(syn(), A[2])
    e = ok_sums(out)
    assert port == A[2] and (e[IP].src, e[IP].dst, e[TCP].dport) == (GW_IP, A[0], 8080)
    reply = Ether(src=A[1], dst=GW_MAC) / IP(src=A[0], dst=GW_IP) / TCP(sport=8080, dport=40000, flags="SA")
    [(port, out)] = dp.process(bytes(reply), A[2])
    e = ok_sums(out)
    assert port == A[2] and (e[IP].src, e[IP].dst, e[TCP].sport, e[TCP].dport) == (VIP, A[0], 80, 40000)
    assert dp.conntrack_dump()[0]["snat"] == GW_IP


def test_no_endpoints_rejects(dp):
    dp.services.set(VIP, 80, "TCP", [])
    dp.services.set(VIP, 53, "UDP", [])
    [(port, out)] = dp.process(syn(), A[2])
    e = ok_sums(out)
    assert port == A[2] and (e[IP].src, e[IP].dst) == (VIP, A[0])
    assert (e[TCP].sport, e[TCP].dport, e[TCP].flags, e[TCP].ack) == (80, 40000, "RA", 1001)
    [(port, out)] = dp.process(udp(), A[2])
    e = ok_sums(out)
    assert (e[IP].src, e[ICMP].type, e[ICMP].code) == (VIP, 3, 3)
    assert (e[IPerror].dst, e[UDPerror].dport) == (VIP, 53)
    c = dp.counters()
    assert c["drops"]["service_rejected"] == 2 and c["services"]["no_endpoints"] == 2
    # a port the service does not have is rejected the same way
    assert Ether(dp.process(syn(dport=81), A[2])[0][1])[TCP].flags == "RA"


def test_syn_reusing_a_closed_tuple_is_a_new_connection(dp):
    dp.services.set(VIP, 80, "TCP", [(B[0], 8080)])
    dp.process(syn(), A[2])
    dp.process(syn(flags="FA"), A[2])                      # the client closes
    assert dp.conntrack_dump()[0]["state"] == "fin_wait"
    dp.services.set(VIP, 80, "TCP", [(C[0], 8080)])         # B goes
    dp.conntrack.flush(backend=B[0], mark_tcp_dead=True)
    [(port, out)] = dp.process(syn(), A[2])                 # same client port again
    assert port == C[2] and Ether(out)[TCP].flags == "S"    # not a RST: a new flow to C
    [conn] = dp.conntrack_dump()
    assert (conn["state"], conn["backend"]) == ("new", f"{C[0]}:8080")


def test_mid_stream_segment_without_connection_is_invalid(dp):
    dp.services.set(VIP, 80, "TCP", [(B[0], 8080)])
    assert dp.process(syn(flags="A", payload=b"x"), A[2]) == []
    assert dp.counters()["drops"]["conntrack_invalid"] == 1


def test_conntrack_timeouts_and_gc(dp, clock):
    dp.services.set(VIP, 53, "UDP", [(B[0], 5300)])
    dp.services.set(VIP, 80, "TCP", [(C[0], 8080)])
    dp.process(udp(), A[2])
    dp.process(syn(), A[2])
    assert len(dp.conntrack) == 2
    clock.advance(31)                                       # UDP unreplied: 30 s
    assert dp.conntrack_gc() == 1
    assert [c["proto"] for c in dp.conntrack_dump()] == ["TCP"]
    clock.advance(120)                                      # TCP SYN_SENT: 120 s
    assert dp.conntrack_gc() == 1 and len(dp.conntrack) == 0
    assert dp.counters()["conntrack"]["expired"] == 2
    dp.conntrack.set_timeouts({"tcp_established": 5})
    dp.process(syn(sport=1), A[2])
    dp.process(bytes(Ether(src=C[1], dst=A[1]) / IP(src=C[0], dst=A[0]) / TCP(sport=8080, dport=1, flags="SA")), C[2])
    assert dp.conntrack_dump()[0]["state"] == "established"
    clock.advance(6)
    assert dp.conntrack_gc() == 1
    with pytest.raises(ValueError, match="unknown conntrack timeout"):
        dp.conntrack.set_timeouts({"tcp_bogus": 1})


def test_backend_removal_flushes_udp_and_resets_tcp(dp):
    dp.services.set(VIP, 53, "UDP", [(B[0], 5300)])
    dp.services.set(VIP, 80, "TCP", [(B[0], 8080)])
    dp.process(udp(), A[2])
    dp.process(syn(), A[2])
    dp.services.set(VIP, 53, "UDP", [(C[0], 5300)])         # B replaced by C
    dp.services.set(VIP, 80, "TCP", [(C[0], 8080)])
    assert dp.conntrack.flush(backend=B[0], udp_only=False, mark_tcp_dead=True) == (1, 1)
    [(port, out)] = dp.process(udp(), A[2])                 # the UDP flow moves to C at once
    assert port == C[2] and Ether(out)[IP].dst == C[0]
    [(port, out)] = dp.process(syn(flags="A", payload=b"more"), A[2])
    e = ok_sums(out)
    assert port == A[2] and e[TCP].flags == "R" and e[IP].src == VIP    # the old TCP flow ends
    [(port, out)] = dp.process(syn(sport=40001), A[2])      # new flows go to C
    assert port == C[2]


def test_partial_checksum_frames_get_pseudo_header_updates(dp):
    """With NEEDS_CSUM the L4 field holds the pseudo-header sum: DNAT must
    update it for the address change only (the port is summed later)."""
    dp.set_vnet_len(12)
    dp.services.set(VIP, 80, "TCP", [(B[0], 8080)])
    f = Ether(syn())
    from scapy.utils import checksum
    import struct
    ph = struct.pack("!4s4sBBH", bytes(map(int, A[0].split("."))), bytes(map(int, VIP.split("."))), 0, 6, 20)
    partial = (~checksum(ph)) & 0xffff                    # what a stack puts there with NEEDS_CSUM
    f[TCP].chksum = partial
    hdr = bytes([1, 0]) + (0).to_bytes(2, "little") * 2 + (34).to_bytes(2, "little") + (16).to_bytes(2, "little") + b"\0\0"
    dp.load(0, bytes(f), A[2], vnet=hdr)
    dp.run_burst(0, 1)
    out = Ether(dp.frame(0))
    ph2 = struct.pack("!4s4sBBH", bytes(map(int, A[0].split("."))), bytes(map(int, B[0].split("."))), 0, 6, 20)
    assert out[TCP].chksum == (~checksum(ph2)) & 0xffff
    assert out[TCP].dport == 8080 and dp.vnet_hdr(0)[0] == 1


# ---- frames a ClusterIP does not serve ----------------------------------------

@pytest.mark.parametrize("ip,l4,dst", [
    ({}, ICMP(type=8, id=1, seq=1) / b"ping", VIP),                                # ping a ClusterIP
    ({"flags": "MF"}, UDP(sport=5353, dport=53, len=1008) / (b"q" * 32), VIP),    # first fragment
    ({"frag": 100}, b"rest of a datagram", VIP),                                  # a later fragment
    ({"flags": "MF", "proto": 6}, TCP(sport=40000, dport=80, flags="S"), VIP),     # a TCP first fragment
    ({"proto": 132}, b"\x00" * 32, VIP),                                          # SCTP
    ({"proto": 47}, b"\x00" * 8, VIP),                                            # GRE
    ({}, ICMP(type=8) / b"x", "10.96.0.99"),                        # in the service CIDR, no service there
], ids=["icmp-echo", "udp-first-fragment", "later-fragment", "tcp-first-fragment", "sctp", "gre",
        "icmp-unassigned"])
def test_service_unsupported_is_dropped_silently(dp, ip, l4, dst):
    """What the service map cannot NAT (not TCP/UDP, or a fragment) is
    dropped as service_unsupported: no output, no reply, no connection."""
    dp.services.set(VIP, 80, "TCP", [(B[0], 8080)])
    dp.services.set(VIP, 53, "UDP", [(B[0], 5300)])
    dp.reset_counters()
    frame = bytes(Ether(src=A[1], dst=GW_MAC) / IP(src=A[0], dst=dst, **ip) / l4)
    assert dp.process(frame, A[2]) == []
    c = dp.counters()
    assert c["drops"]["service_unsupported"] == 1 and sum(c["drops"].values()) == 1
    assert c["ports"][A[2]]["rx_dropped"] == 1
    assert sum(p["tx_packets"] for p in c["ports"].values()) == 0
    assert len(dp.conntrack) == 0 and c["services"]["no_service"] == 0 and c["gateway"]["icmp_replies"] == 0


def test_several_ports_per_service_each_with_its_backends(dp):
    dp.services.set(VIP, 80, "TCP", [(B[0], 8080)])
    dp.services.set(VIP, 443, "TCP", [(C[0], 8443)])
    dp.services.set(VIP, 53, "UDP", [(C[0], 5300)])
    dp.services.set(VIP, 53, "TCP", [(B[0], 5301)])           # same port, other protocol
    for frame, port, dport in ((syn(dport=80), B[2], 8080), (syn(dport=443, sport=40001), C[2], 8443),
                               (udp(dport=53), C[2], 5300), (syn(dport=53, sport=40002), B[2], 5301)):
        [(out, f)] = dp.process(frame, A[2])
        e = ok_sums(f)
        assert out == port and (e[IP].dst, (e[TCP] if e.haslayer(TCP) else e[UDP]).dport) == \
            ({B[2]: B[0], C[2]: C[0]}[port], dport)
    assert len(dp.conntrack) == 4


def test_udp_to_a_port_the_service_lacks_is_refused(dp):
    dp.services.set(VIP, 53, "UDP", [(B[0], 5300)])
    [(port, out)] = dp.process(udp(dport=54), A[2])
    e = ok_sums(out)
    assert port == A[2] and (e[IP].src, e[IP].dst, e[ICMP].type, e[ICMP].code) == (VIP, A[0], 3, 3)
    assert (e[IPerror].dst, e[UDPerror].dport) == (VIP, 54)
    assert dp.counters()["services"]["no_service"] == 1


def test_a_new_backend_takes_new_flows_at_once(dp):
    dp.services.set(VIP, 80, "TCP", [(B[0], 8080)])
    assert dp.process(syn(sport=1), A[2])[0][0] == B[2]
    dp.services.set(VIP, 80, "TCP", [(B[0], 8080), (C[0], 8080)])
    ports = collections.Counter(dp.process(syn(sport=100 + k), A[2])[0][0] for k in range(200))
    assert set(ports) == {B[2], C[2]} and min(ports.values()) > 50
    # the old connection keeps its backend
    assert dp.process(syn(sport=1, flags="A", payload=b"x"), A[2])[0][0] == B[2]


def test_maglev_65537_table(dp):
    backends = [(f"10.244.1.{h}", 8080) for h in range(2, 12)]
    dp.services.set(VIP, 80, "TCP", backends, lb="maglev", maglev_size=65537)
    before = [dp.services.maglev_choice(VIP, 80, "TCP", f) for f in range(20000)]
    dp.services.set(VIP, 80, "TCP", backends[:-1], lb="maglev", maglev_size=65537)
    after = [dp.services.maglev_choice(VIP, 80, "TCP", f) for f in range(20000)]
    assert sum(b != a for b, a in zip(before, after)) / 20000 < 0.1 + 0.03
    with pytest.raises(ValueError, match="Maglev table size"):
        dp.services.set(VIP, 80, "TCP", backends, lb="maglev", maglev_size=65536)


def test_agent_backend_removal_touches_only_the_changed_ports(tmp_path):
    """The agent's services_apply (what `podnet apply` pushes): a backend
    removed from one service port ends that port's connections to it (UDP
    deleted at once, TCP marked for a RST) and leaves every other port's
    connections to the same backend alone."""
    from dataplane.agent import Agent
    cfg = {"node": "n1", "netns": "-", "socket": str(tmp_path / "n1.sock"), "vnet": False, "pods": [],
           "gateway": {"ip": GW_IP, "mac": GW_MAC, "subnet": "10.244.0.0/24"}, "service_capacity": 64,
           "conntrack_capacity": 64}
    agent = Agent(cfg)
    agent.setup()
    try:
        d = agent.dp
        for ip, mac, port in (A, B, C):
            d.add_port(port)
            d.gateway.add_neighbor(ip, mac)
            d.process(bytes(Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc=ip, pdst="10.244.0.250")), port)

        def svc(port, proto, backend, target):
            return {"vip": VIP, "port": port, "protocol": proto, "backends": [[backend[0], target]]}
        agent.services_apply([svc(80, "TCP", B, 8080), svc(81, "TCP", B, 8081), svc(53, "UDP", B, 5300),
                              svc(54, "UDP", B, 5400)], [])
        for frame in (syn(dport=80), syn(dport=81), udp(dport=53), udp(dport=54)):
            assert d.process(frame, A[2])[0][0] == B[2]
        assert agent.services_apply([svc(80, "TCP", C, 8080), svc(53, "UDP", C, 5300)], []) == \
            {"service_ports": 4, "conntrack_deleted": 1, "conntrack_reset": 1}
        by_port = {c["service"]: (c["backend"], c["dead"]) for c in d.conntrack_dump()}
        assert by_port == {f"{VIP}:80": (f"{B[0]}:8080", True), f"{VIP}:81": (f"{B[0]}:8081", False),
                           f"{VIP}:54": (f"{B[0]}:5400", False)}
        [(port, out)] = d.process(syn(dport=80, flags="A", payload=b"x"), A[2])
        assert port == A[2] and "R" in Ether(out)[TCP].flags                    # reset
        assert d.process(syn(dport=81, flags="A", payload=b"x"), A[2])[0][0] == B[2]     # untouched
        assert d.process(udp(dport=54), A[2])[0][0] == B[2]
        assert d.process(udp(dport=53), A[2])[0][0] == C[2]                     # moved at once
        # deleting a service port ends its connections, and only its own
        assert agent.services_apply([], [{"vip": VIP, "port": 54, "protocol": "UDP"}])["conntrack_deleted"] == 1
        assert {c["service"] for c in d.conntrack_dump()} == {f"{VIP}:81", f"{VIP}:53"}
        ct = d.counters()["conntrack"]
        assert (ct["deleted"], ct["entries"], ct["inserts"]) == (2, 2, 5)     # UDP :53 and :54 by the agent
    finally:
        agent.close()


def reply_from(backend, to, sport, dport, flags):
    return bytes(Ether(src=backend[1], dst=GW_MAC) / IP(src=backend[0], dst=to[0])
                 / TCP(sport=sport, dport=dport, flags=flags, seq=7000, ack=1001))


def test_a_reused_client_port_to_another_clusterip_with_the_same_backend():
    """Both ClusterIPs lead to B:8080, so to B the two connections from A's
    port 40000 are one 4-tuple: the reply tuple clashes. A closed old
    connection makes way (the SYN-ACK is reverse-NATed for the new ClusterIP,
    not the old); a live one keeps it and the new flow is refused, counted."""
    from conftest import Clock
    d = Dataplane(nslots=64, clock=Clock(), conntrack_capacity=1024, service_capacity=64)
    for _, _, p in (A, B):
        d.add_port(p)
    d.gateway.configure(GW_IP, GW_MAC, "10.244.0.0/24")
    for ip, mac, port in (A, B):
        d.gateway.add_neighbor(ip, mac)
        d.process(bytes(Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc=ip, pdst="10.244.0.250")), port)
    vip2 = "10.96.0.20"
    for v in (VIP, vip2):
        d.services.set(v, 80, "TCP", [(B[0], 8080)])
    [(port, out)] = d.process(syn(), A[2])
    assert port == B[2] and Ether(out)[IP].dst == B[0]
    d.process(reply_from(B, A, 8080, 40000, "SA"), B[2])
    # while the first connection is live, the same port to the other ClusterIP is refused
    assert d.process(syn(dst=vip2), A[2]) == []
    c = d.counters()
    assert c["drops"]["conntrack_clash"] == 1 and c["conntrack"]["entries"] == 1
    # the first one ends (RST from B): now the new one takes the tuple
    d.process(reply_from(B, A, 8080, 40000, "R"), B[2])
    [(port, out)] = d.process(syn(dst=vip2), A[2])
    assert port == B[2]
    [(port, out)] = d.process(reply_from(B, A, 8080, 40000, "SA"), B[2])
    e = Ether(out)
    assert port == A[2] and (e[IP].src, e[TCP].sport) == (vip2, 80)      # the new ClusterIP, not the old
    c = d.counters()
    assert c["drops"]["conntrack_clash"] == 1 and c["conntrack"]["entries"] == 1 and c["conntrack"]["deleted"] == 1
    assert [x["service"] for x in d.conntrack_dump()] == [f"{vip2}:80"]


def test_bulk_apply_is_one_change_or_none(dp):
    """Services.apply: upserts then deletes as one new map, swapped in whole.
    What it leaves equals the same change made entry by entry; a bad entry
    anywhere, or an overflow, leaves the map as it was (list and traffic)."""
    svcs = dp.services
    svcs.set(VIP, 80, "TCP", [(B[0], 8080)])
    svcs.set("10.96.0.11", 53, "UDP", [(B[0], 5353)])
    upsert = [(f"10.96.3.{j}", 80, "TCP", [(B[0], 8080 + j), (C[0], 8080)], "maglev" if j % 2 else "random",
               60 if j == 3 else 0, 251) for j in range(50)]
    upsert.append((VIP, 80, "TCP", [(C[0], 9090)]))                     # a replacement
    upsert.append(("10.96.3.60", 80, "TCP", [(B[0], 1)]))               # added, then deleted below
    delete = [("10.96.0.11", 53, "UDP"), ("10.96.3.60", 80, "TCP"), ("10.96.9.9", 1, "TCP")]   # the last: absent
    gen = svcs.generation
    assert svcs.apply(upsert, delete) == 51
    assert svcs.generation == gen + 1
    twin = Dataplane(nslots=4, service_capacity=1024)
    twin.services.set("10.96.0.11", 53, "UDP", [(B[0], 5353)])
    for u in upsert:
        twin.services.set(*u)
    for d in delete[:2]:
        twin.services.remove(*d)
    assert svcs.list() == twin.services.list()
    # traffic sees the new map: VIP now goes to C, the Maglev services pick as set() builds them
    [(port, out)] = dp.process(syn(), A[2])
    assert port == C[2] and (Ether(out)[IP].dst, Ether(out)[TCP].dport) == (C[0], 9090)
    assert svcs.maglev_choice("10.96.3.5", 80, "TCP", 12345) == twin.services.maglev_choice("10.96.3.5", 80, "TCP", 12345)
    # rejected changes change nothing
    after = svcs.list()
    with pytest.raises(ValueError, match=r"upsert\[1\]: backend 127.0.0.1"):
        svcs.apply([("10.96.4.1", 80, "TCP", []), ("10.96.4.2", 80, "TCP", [("127.0.0.1", 80)])])
    with pytest.raises(ValueError, match=r"delete\[0\]: service VIP 192.168.0.1 is outside"):
        svcs.apply([("10.96.4.1", 80, "TCP", [])], [("192.168.0.1", 80, "TCP")])
    with pytest.raises(OverflowError, match="nothing changed"):
        svcs.apply([(f"10.97.{j // 250}.{j % 250 + 1}", 80, "TCP", []) for j in range(1024 - 51 + 1)])
    assert svcs.list() == after and len(svcs) == 51
    [(port, _)] = dp.process(syn(sport=40001), A[2])
    assert port == C[2]
    # a whole map's worth in one change, and back to nothing
    big = [(f"10.97.{j // 250}.{j % 250 + 1}", 80, "TCP", [(B[0], 80 + j)]) for j in range(1024 - 51)]
    assert svcs.apply(big) == 1024                           # past APPLY_IN_PLACE: a new array swapped in
    for u in big:
        twin.services.set(*u)
    assert svcs.list() == twin.services.list()
    [(port, out)] = dp.process(syn(dst="10.97.3.200", sport=40003), A[2])
    assert port == B[2] and Ether(out)[TCP].dport == 80 + 949
    assert svcs.apply([], [(d["vip"], d["port"], d["protocol"]) for d in svcs.list()]) == 0
    assert dp.process(syn(sport=40002, flags="A"), A[2])[0][0] == A[2]       # no service: RST back
