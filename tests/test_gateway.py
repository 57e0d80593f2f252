"""The pod gateway: ARP and ICMP echo for its IP, routing between local pods
(MAC rewrite, TTL, IP checksum), TTL expiry, and what it refuses. Output
frames are dissected with scapy and checksums verified by recomputation."""
import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether

from fastpath import Dataplane

GW_IP, GW_MAC = "10.244.0.1", "0a:58:0a:f4:00:01"
A = ("10.244.0.2", "0a:58:0a:f4:00:02", 0)
B = ("10.244.0.3", "0a:58:0a:f4:00:03", 1)
C = ("10.244.0.4", "0a:58:0a:f4:00:04", 2)


@pytest.fixture
def gw(clock):
    dp = Dataplane(nslots=32, clock=clock)
    for p in range(3):
        dp.add_port(p)
    dp.gateway.configure(GW_IP, GW_MAC, "10.244.0.0/24")
    for ip, mac, _ in (A, B):
        dp.gateway.add_neighbor(ip, mac)        # from IPAM; C is not known
    return dp



def _recomputed(p):
    q = IP(bytes(p))
    del q.chksum
    return IP(bytes(q)).chksum


def l4_ok(pkt, layer):
    q = Ether(bytes(pkt))
    want = q[layer].chksum
    del q[layer].chksum
    return Ether(bytes(q))[layer].chksum == want


def test_arp_request_for_gateway_is_answered(gw):
    req = Ether(src=A[1], dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=A[1], psrc=A[0], pdst=GW_IP)
    [(port, out)] = gw.process(bytes(req), 0)
    e = Ether(out)
    assert port == 0                                             # back to the asker only
    assert (e.src, e.dst) == (GW_MAC, A[1])
    assert (e[ARP].op, e[ARP].hwsrc, e[ARP].psrc) == (2, GW_MAC, GW_IP)
    assert (e[ARP].hwdst, e[ARP].pdst) == (A[1], A[0])
    assert gw.counters()["gateway"]["arp_replies"] == 1


def test_arp_for_another_pod_floods_and_is_learned(gw):
    req = Ether(src=C[1], dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=C[1], psrc=C[0], pdst=A[0])
    assert sorted(p for p, _ in gw.process(bytes(req), 2)) == [0, 1]
    assert {"ip": C[0], "mac": C[1], "state": "learned"} in gw.gateway.neighbors()
    # now C is routable
    f = Ether(src=A[1], dst=GW_MAC) / IP(src=A[0], dst=C[0], ttl=10) / UDP(dport=53)
    [(port, out)] = gw.process(bytes(f), 0)
    assert port == 2 and Ether(out).dst == C[1]


def test_arp_reply_to_gateway_is_consumed(gw):
    rep = Ether(src=C[1], dst=GW_MAC) / ARP(op=2, hwsrc=C[1], psrc=C[0], hwdst=GW_MAC, pdst=GW_IP)
    assert gw.process(bytes(rep), 2) == []
    assert gw.verdict(0) == ("local", None)
    assert gw.counters()["gateway"]["arp_learned"] == 1


def test_arp_cannot_override_ipam_neighbor(gw):
    spoof = Ether(src=C[1], dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=C[1], psrc=A[0], pdst=B[0])
    gw.process(bytes(spoof), 2)
    assert {"ip": A[0], "mac": A[1], "state": "static"} in gw.gateway.neighbors()
    assert gw.counters()["gateway"]["neigh_conflicts"] == 1


def test_ping_gateway(gw):
    req = (Ether(src=A[1], dst=GW_MAC) / IP(src=A[0], dst=GW_IP, ttl=42, id=7)
           / ICMP(type=8, id=0x1234, seq=9) / b"abcdefgh")
    [(port, out)] = gw.process(bytes(req), 0)
    e = Ether(out)
    assert port == 0 and (e.src, e.dst) == (GW_MAC, A[1])
    assert (e[IP].src, e[IP].dst, e[IP].ttl) == (GW_IP, A[0], 64)
    assert (e[ICMP].type, e[ICMP].code, e[ICMP].id, e[ICMP].seq) == (0, 0, 0x1234, 9)
    assert bytes(e[ICMP].payload) == b"abcdefgh"
    assert _recomputed(e[IP]) == e[IP].chksum and l4_ok(e, ICMP)
    assert gw.counters()["gateway"]["icmp_replies"] == 1


@pytest.mark.parametrize("l4", [TCP(sport=1, dport=80, flags="S"), UDP(sport=5, dport=53) / b"q",
                                ICMP(type=8) / b"p"])
def test_route_between_local_pods(gw, l4):
    gw.process(bytes(Ether(src=B[1], dst="ff:ff:ff:ff:ff:ff") / ARP(psrc=B[0], pdst="10.244.0.9")), 1)
    f = Ether(src=A[1], dst=GW_MAC) / IP(src=A[0], dst=B[0], ttl=64) / l4
    [(port, out)] = gw.process(bytes(f), 0)
    e = Ether(out)
    assert port == 1                                             # B's port, learned by the FDB
    assert (e.src, e.dst) == (GW_MAC, B[1])
    assert (e[IP].src, e[IP].dst, e[IP].ttl) == (A[0], B[0], 63)
    assert _recomputed(e[IP]) == e[IP].chksum
    assert bytes(e[IP].payload) == bytes(f[IP].payload)           # L4 untouched
    assert gw.counters()["gateway"]["routed"] == 1


def test_routed_to_unlearned_port_floods(gw):
    f = Ether(src=A[1], dst=GW_MAC) / IP(src=A[0], dst=B[0]) / UDP()
    assert sorted(p for p, _ in gw.process(bytes(f), 0)) == [1, 2]


def test_ttl_expiry_answered_with_time_exceeded(gw):
    f = Ether(src=A[1], dst=GW_MAC) / IP(src=A[0], dst=B[0], ttl=1, id=99) / UDP(sport=33434, dport=33435) / (b"x" * 20)
    [(port, out)] = gw.process(bytes(f), 0)
    e = Ether(out)
    assert port == 0 and (e.src, e.dst) == (GW_MAC, A[1])
    assert (e[IP].src, e[IP].dst, e[IP].proto) == (GW_IP, A[0], 1)
    assert (e[ICMP].type, e[ICMP].code) == (11, 0)
    assert e[IPerror].id == 99 and e[IPerror].dst == B[0]        # the quoted header
    assert _recomputed(e[IP]) == e[IP].chksum and l4_ok(e, ICMP)
    assert len(bytes(e[ICMP])) == 8 + 20 + 8
    c = gw.counters()
    assert c["gateway"]["icmp_errors_sent"] == 1 and c["gateway"]["routed"] == 0
    assert c["drops"]["ttl_exceeded"] == 1        # answered, and still counted as a drop


def test_no_time_exceeded_about_an_icmp_error(gw):
    err = IP(src=A[0], dst=B[0], ttl=1) / ICMP(type=3, code=3) / IP(src=B[0], dst=A[0]) / UDP()
    assert gw.process(bytes(Ether(src=A[1], dst=GW_MAC) / err), 0) == []
    assert gw.counters()["drops"]["ttl_exceeded"] == 1


def test_no_time_exceeded_about_a_non_initial_fragment(gw):
    """RFC 1812 4.3.2.7: no ICMP error for a fragment other than the first;
    the first one is answered."""
    later = IP(src=A[0], dst=B[0], ttl=1, frag=1, proto=17) / (b"x" * 16)
    assert gw.process(bytes(Ether(src=A[1], dst=GW_MAC) / later), 0) == []
    c = gw.counters()
    assert c["drops"]["ttl_exceeded"] == 1 and c["gateway"]["icmp_errors_sent"] == 0
    first = IP(src=A[0], dst=B[0], ttl=1, flags="MF") / UDP(sport=1, dport=2) / (b"x" * 16)
    [(port, out)] = gw.process(bytes(Ether(src=A[1], dst=GW_MAC) / first), 0)
    assert port == 0 and (Ether(out)[ICMP].type, Ether(out)[ICMP].code) == (11, 0)
    assert gw.counters()["gateway"]["icmp_errors_sent"] == 1


@pytest.mark.parametrize("frame,reason", [
    (Ether(src=A[1], dst=GW_MAC) / IP(src=A[0], dst=C[0]) / UDP(), "no_neighbor"),
    (Ether(src=A[1], dst=GW_MAC) / IP(src=A[0], dst="10.244.0.255") / UDP(), "no_neighbor"),
    (Ether(src=A[1], dst=GW_MAC) / IP(src=A[0], dst="10.244.7.2") / UDP(), "no_route"),
    (Ether(src=A[1], dst=GW_MAC) / IP(src=A[0], dst=GW_IP) / UDP(dport=53), "gateway_unsupported"),
    (Ether(src=A[1], dst=GW_MAC) / IPv6() / UDP(), "gateway_unsupported"),
])
def test_refused_by_the_gateway(gw, frame, reason):
    assert gw.process(bytes(frame), 0) == []
    assert gw.counters()["drops"][reason] == 1


def test_replies_clear_the_vnet_header_routed_frames_keep_it(gw):
    gw.set_vnet_len(12)
    hdr = bytes([1, 1]) + (54).to_bytes(2, "little") + (1448).to_bytes(2, "little") \
        + (34).to_bytes(2, "little") + (16).to_bytes(2, "little") + b"\0\0"
    ping = Ether(src=A[1], dst=GW_MAC) / IP(src=A[0], dst=GW_IP) / ICMP()
    tcp = Ether(src=A[1], dst=GW_MAC) / IP(src=A[0], dst=B[0]) / TCP() / (b"z" * 1400)
    gw.load(0, bytes(ping), 0, vnet=hdr)
    gw.load(1, bytes(tcp), 0, vnet=hdr)
    gw.run_burst(0, 2)
    assert gw.vnet_hdr(0) == bytes(12)                           # the reply is complete
    assert gw.vnet_hdr(1) == hdr                                 # GSO metadata carried along
    assert Ether(gw.frame(1))[IP].ttl == 63 and len(gw.frame(1)) == len(tcp)


def test_gateway_config_errors(gw):
    with pytest.raises(ValueError, match="host address"):
        gw.gateway.configure("10.244.1.1", GW_MAC, "10.244.0.0/24")
    with pytest.raises(ValueError, match="multicast"):
        gw.gateway.configure(GW_IP, "01:00:5e:00:00:01", "10.244.0.0/24")
    with pytest.raises(ValueError):
        gw.gateway.configure(GW_IP, GW_MAC, "10.244.0.0/33")
    with pytest.raises(ValueError, match="not a pod address"):
        gw.gateway.add_neighbor("10.9.9.9", A[1])
    assert gw.gateway.info() == {"ip": GW_IP, "mac": GW_MAC, "subnet": "10.244.0.0/24", "domain": 0}
