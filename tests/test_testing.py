"""The packet-testing toolkit (dataplane.testing) in memory: the MemoryNode
built from a spec as an agent builds its fast path, markers, send_and_expect
and send_and_assert_no_reply with their failure reports, the encapsulation
checkers (every field they check is shown to be checked by breaking it),
bad input, and the pytest plugin itself (registered by the entry point)."""
import os
import subprocess
import sys
import textwrap

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw

from dataplane import testing as pt
from dataplane.spec import SpecError
from dataplane.testing import (FrameTooLong, MemoryNode, PodnetTestError, expect_ipip, expect_routed,
                               expect_vxlan, mark, marker, markers_in, send_and_assert_no_reply,
                               send_and_expect)

SPEC = {
    "cluster": {"name": "t", "backend": "vxlan"},
    "nodes": [{"name": "n1"}, {"name": "n2"}],
    "pods": [{"name": "a", "node": "n1", "labels": {"app": "c"}},
             {"name": "b", "node": "n1", "labels": {"app": "web"}},
             {"name": "r", "node": "n2", "labels": {"app": "web2"}}],
    "services": [{"name": "web", "clusterIP": "10.96.0.10", "selector": {"app": "web"},
                  "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]},
                 {"name": "far", "clusterIP": "10.96.0.11", "selector": {"app": "web2"},
                  "ports": [{"port": 53, "targetPort": 5353, "protocol": "UDP"}]}],
}


def spec(backend="vxlan"):
    s = {k: v for k, v in SPEC.items()}
    s["cluster"] = {**SPEC["cluster"], "backend": backend}
    return s


def udp(src, dst, **ip):
    return Ether(src=src.mac, dst=src.gateway_mac) / IP(src=src.ip, dst=dst if isinstance(dst, str) else dst.ip,
                                                        **ip) / UDP(sport=1000, dport=2000)


@pytest.fixture
def node(podnet_node):
    return podnet_node(spec(), "n1")


# ---- the node is the agent's -----------------------------------------------------

def test_memory_node_is_configured_as_the_agent_configures_it(node):
    """Pods, guards, neighbours, routes and services as an agent of n1 loads them."""
    a, b, r = node.pod("a"), node.pod("b"), node.pod("r")
    assert node.pods == ["a", "b"]
    assert (a.node, r.node) == ("n1", "n2")
    assert a.gateway == "10.244.0.1" and a.gateway_mac == node.info().gateway_mac
    assert r.gateway_mac == node.info("n2").gateway_mac and r.port is None
    assert {p["ip"] for p in node.agent.pods.values()} == {a.ip, b.ip}
    assert {n["ip"] for n in node.dp.gateway.neighbors()} >= {a.ip, b.ip}
    [route] = node.dp.overlay.routes()
    assert (route["cidr"], route["vtep"], route["vtep_mac"]) == (node.info("n2").subnet, node.info("n2").underlay_ip,
                                                                 node.info("n2").underlay_mac)
    svcs = {(s["vip"], s["port"]): sorted(map(tuple, s["backends"])) for s in node.dp.services.list()}
    assert svcs == {("10.96.0.10", 80): [(b.ip, 8080)], ("10.96.0.11", 53): [(r.ip, 5353)]}
    assert node.backend == "vxlan" and node.vni == 1


def test_same_node_frame_is_routed_once(node):
    a, b = node.pod("a"), node.pod("b")
    sent = udp(a, b, ttl=9)
    [got] = send_and_expect(a, sent, b)
    expect_routed(got, sent, src_mac=b.gateway_mac, dst_mac=b.mac)
    assert got[IP].ttl == 8


@pytest.mark.parametrize("backend", ["vxlan", "ipip", "direct"])
def test_cross_node_frame_in_every_backend(podnet_node, backend):
    n = podnet_node(spec(backend), "n1")
    a, r = n.pod("a"), n.pod("r")
    sent = udp(a, r, tos=1)
    out = n.send("a", sent)
    assert list(out) == ["uplink"]
    [wire] = out["uplink"]
    me, peer = n.info(), n.info("n2")
    if backend == "vxlan":
        inner = expect_vxlan(wire, me, peer, vni=n.vni)
        expect_routed(inner, sent, src_mac=a.gateway_mac, dst_mac=r.gateway_mac)
    elif backend == "ipip":
        inner = expect_ipip(wire, me, peer)
        assert inner.tos == 1 and bytes(inner) == bytes(IP(bytes(wire[IP].payload)))
        expect_routed(Ether() / inner, sent)
    else:
        expect_routed(wire, sent, src_mac=me.underlay_mac, dst_mac=peer.underlay_mac)


@pytest.mark.parametrize("backend", ["vxlan", "ipip", "direct"])
def test_frames_from_the_fabric_reach_the_pod(podnet_node, backend):
    n = podnet_node(spec(backend), "n1")
    a, r = n.pod("a"), n.pod("r")
    me, peer = n.info(), n.info("n2")
    pkt = IP(src=r.ip, dst=a.ip, ttl=20) / UDP(sport=7, dport=8) / Raw(marker())
    if backend == "vxlan":
        from scapy.layers.vxlan import VXLAN
        wire = (Ether(src=peer.underlay_mac, dst=me.underlay_mac) / IP(src=peer.underlay_ip, dst=me.underlay_ip)
                / UDP(sport=50000, dport=4789) / VXLAN(vni=n.vni, flags=0x08)
                / Ether(src=peer.gateway_mac, dst=me.gateway_mac) / pkt)
    elif backend == "ipip":
        wire = Ether(src=peer.underlay_mac, dst=me.underlay_mac) / IP(src=peer.underlay_ip, dst=me.underlay_ip,
                                                                      proto=4) / pkt
    else:
        wire = Ether(src=peer.underlay_mac, dst=me.underlay_mac) / pkt
    [got] = send_and_expect(n.uplink, wire, a)
    expect_routed(got, Ether() / pkt, src_mac=a.gateway_mac, dst_mac=a.mac)


def test_clusterip_syn_dnat_and_synack_reverse_nat(node):
    a, b = node.pod("a"), node.pod("b")
    syn = Ether(src=a.mac, dst=a.gateway_mac) / IP(src=a.ip, dst="10.96.0.10") / TCP(sport=999, dport=80, flags="S")
    [at_b] = send_and_expect(a, syn, b)
    assert (at_b[IP].dst, at_b[TCP].dport, at_b[IP].src) == (b.ip, 8080, a.ip)
    synack = Ether(src=b.mac, dst=b.gateway_mac) / IP(src=b.ip, dst=a.ip) / TCP(sport=8080, dport=999, flags="SA")
    [at_a] = send_and_expect(b, synack, a)
    assert (at_a[IP].src, at_a[TCP].sport, at_a[TCP].flags) == ("10.96.0.10", 80, "SA")
    assert node.counters()["conntrack"]["entries"] == 1


def test_spoofed_frames_are_dropped_and_counted(node):
    a, b = node.pod("a"), node.pod("b")
    send_and_assert_no_reply(a, Ether(src=a.mac, dst=a.gateway_mac) / IP(src="10.244.0.99", dst=b.ip) / ICMP(), b)
    send_and_assert_no_reply(a, Ether(src="02:00:00:00:00:01", dst=a.gateway_mac) / IP(src=a.ip, dst=b.ip) / ICMP(), b)
    assert node.drops() == {"spoof_ip": 1, "spoof_mac": 1}


def test_the_clock_ages_conntrack(node):
    a = node.pod("a")
    send_and_expect(a, Ether(src=a.mac, dst=a.gateway_mac) / IP(src=a.ip, dst="10.96.0.11") / UDP(sport=5, dport=53),
                    node.uplink)
    assert node.counters()["conntrack"]["entries"] == 1
    node.clock.advance(3600)
    node.dp.conntrack_gc()
    assert node.counters()["conntrack"]["entries"] == 0


def test_sniff_keeps_what_a_port_was_given(node):
    a, b = node.pod("a"), node.pod("b")
    node.send("a", [udp(a, b), udp(a, b)])
    assert len(b.sniff(count=1)) == 1 and b.sniff() == []          # read once
    node.send("a", [udp(a, b) / b"x", udp(a, b) / b"yy"])
    assert [len(f[Raw].load) for f in b.sniff(filter=lambda f: len(f[Raw].load) == 2)] == [2]


# ---- markers and matching --------------------------------------------------------------

def test_mark_appends_a_marker_in_place_and_keeps_one_given():
    p = Ether() / IP() / UDP() / b"payload"
    q, m = mark(p)
    assert q is p and markers_in(p) == [m] and bytes(p).endswith(m)
    assert IP(bytes(p[IP])).len == 20 + 8 + 7 + 16                  # the lengths computed with it
    assert mark(p) == (p, m)                                       # marked once
    m2 = marker()
    raw = bytes(Ether() / IP() / UDP() / m2)
    assert mark(raw) == (raw, m2)
    with pytest.raises(PodnetTestError, match="has no marker"):
        mark(bytes(Ether() / IP()))


def test_markers_are_unique_and_found_in_icmp_quotes():
    ms = {marker() for _ in range(1000)}
    assert len(ms) == 1000
    inner = IP(src="1.1.1.1", dst="2.2.2.2") / UDP() / Raw(marker())
    err = Ether() / IP() / ICMP(type=3, code=4) / inner
    assert markers_in(err) == markers_in(inner)


def test_a_missing_packet_is_reported_with_what_was_sent_and_what_arrived(node):
    a, b = node.pod("a"), node.pod("b")
    good, bad = udp(a, b), Ether(src=a.mac, dst=a.gateway_mac) / IP(src="10.244.0.99", dst=b.ip) / UDP()
    with pytest.raises(AssertionError) as e:
        send_and_expect(a, [good, bad], b, timeout=0.1)
    msg = str(e.value)
    assert "1 of 2 packets did not arrive" in msg
    assert msg.count("-> arrived:") == 1 and msg.count("-> did not arrive") == 1
    assert "IP.ttl: 64 -> 63" in msg and "Ether.dst" in msg             # the fields the gateway changed
    assert "src=10.244.0.99" in msg


def test_a_packet_arriving_twice_fails_and_count_takes_copies(node):
    a, b = node.pod("a"), node.pod("b")
    p = udp(a, b)
    mark(p)
    with pytest.raises(AssertionError, match="2 arrived more than once"):
        send_and_expect(a, [p, p], b, timeout=0.1)
    assert len(send_and_expect(a, [p, p], b, count=2)) == 2
    with pytest.raises(AssertionError, match="expected 3 marked frames, 2 arrived"):
        send_and_expect(a, [p, p], b, count=3, timeout=0.1)


def test_flooded_arp_reaches_the_other_pod(node):
    a, b = node.pod("a"), node.pod("b")
    arp = Ether(src=a.mac, dst="ff:ff:ff:ff:ff:ff") / ARP(hwsrc=a.mac, psrc=a.ip, pdst="10.244.0.200")
    [got] = send_and_expect(a, arp, b)
    assert got[ARP].pdst == "10.244.0.200"


def test_no_reply_fails_when_something_arrives(node):
    a, b = node.pod("a"), node.pod("b")
    with pytest.raises(AssertionError, match=r"send_and_assert_no_reply a -> b: 1 of 1 packets arrived"):
        send_and_assert_no_reply(a, udp(a, b), b)


def test_unmarked_frames_at_the_destination_are_listed(node):
    a, b = node.pod("a"), node.pod("b")
    node.send("a", udp(a, b) / b"noise")                           # queued at b before the capture opens: not listed
    with pytest.raises(AssertionError) as e:
        send_and_expect(a, [Ether(src=a.mac, dst=a.gateway_mac) / IP(src="10.0.0.1", dst=b.ip) / UDP()], b, timeout=0)
    assert "nothing else arrived (0 frames in all)" in str(e.value)


# ---- the encapsulation checkers check every field ----------------------------------------

def encapsulated(podnet_node, backend):
    n = podnet_node(spec(backend), "n1")
    a, r = n.pod("a"), n.pod("r")
    [wire] = n.send("a", udp(a, r, tos=2))["uplink"]
    return n, bytes(wire)


def poke(frame, at, value):
    """frame with the byte at (or each byte of a tuple of offsets) set to value."""
    b = bytearray(frame)
    for i in (at if isinstance(at, tuple) else (at,)):
        b[i] = value
    return bytes(b)


VXLAN_BREAKS = [(0, 0x02, "Ether.dst"), (6, 0x02, "Ether.src"), (12, 0x86, "Ether.type"),
                (14, 0x46, "IP.ihl"), (22, 9, "IP.ttl"), (23, 6, "IP.proto"), (20, 0x00, "IP.flags"),
                (24, 0, "IP.chksum"), (26, 9, "IP.src"), (33, 9, "IP.dst"), (36, 0x13, "UDP.dport"),
                (34, 0x01, "UDP.sport"), (39, 9, "UDP.len"), (42, 0x0c, "VXLAN.flags"), (43, 1, "VXLAN.reserved"),
                (46, 9, "VXLAN.vni"), (17, 0x10, "IP.len")]


@pytest.mark.parametrize("at,value,field", VXLAN_BREAKS)
def test_expect_vxlan_catches_each_outer_field(podnet_node, at, value, field):
    n, wire = encapsulated(podnet_node, "vxlan")
    me, peer = n.info(), n.info("n2")
    expect_vxlan(wire, me, peer, vni=1)
    with pytest.raises(AssertionError, match=field.replace(".", r"\.")):
        expect_vxlan(poke(wire, at, value), me, peer, vni=1)


def test_expect_vxlan_lists_every_problem_and_compares_the_inner_frame(podnet_node):
    n, wire = encapsulated(podnet_node, "vxlan")
    with pytest.raises(AssertionError) as e:
        expect_vxlan(poke(poke(wire, 22, 1), 46, 7), "172.30.250.1", "172.30.250.2", vni=1)
    msg = str(e.value)
    assert "3 fields wrong" in msg and "IP.ttl: 1, expected 64" in msg and "VXLAN.vni: 458753, expected 1" in msg
    assert "IP.chksum: 0xee5c is not the header's checksum" in msg
    inner = expect_vxlan(wire, "172.30.250.1", "172.30.250.2")
    expect_vxlan(wire, inner=inner)
    with pytest.raises(AssertionError, match="IP.ttl: 7 -> 63"):
        expect_vxlan(wire, inner=poke(bytes(inner), 22, 7))
    # a UDP checksum, when there is one, must be right
    good = IP(wire[14:])
    good[UDP].chksum = None
    expect_vxlan(wire[:14] + bytes(IP(bytes(good))), vni=1)
    with pytest.raises(AssertionError, match="UDP.chksum"):
        expect_vxlan(poke(poke(wire, 40, 0x12), 41, 0x34), vni=1)


IPIP_BREAKS = [((18, 19), 0, "IP.id"), (23, 17, "IP.proto"), (22, 3, "IP.ttl"), (15, 0x04 | 2, "IP.dscp"), (15, 1, "IP.ecn"),
               (20, 0, "IP.flags"), (25, 0, "IP.chksum"), (29, 7, "IP.src"), (33, 7, "IP.dst"), (17, 0, "IP.len")]


@pytest.mark.parametrize("at,value,field", IPIP_BREAKS)
def test_expect_ipip_catches_each_outer_field(podnet_node, at, value, field):
    n, wire = encapsulated(podnet_node, "ipip")
    me, peer = n.info(), n.info("n2")
    inner = expect_ipip(wire, me, peer)
    assert inner.tos == 2 and wire[15] == 2                         # ECN copied out (RFC 6040)
    with pytest.raises(AssertionError, match=field.replace(".", r"\.")):
        expect_ipip(poke(wire, at, value), me, peer)
    with pytest.raises(AssertionError, match="inner packet differs"):
        expect_ipip(wire, inner=poke(bytes(inner), 8, 1))


def test_expect_routed_catches_ttl_macs_checksum_and_payload():
    sent = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="1.1.1.1", dst="2.2.2.2", ttl=9) / UDP()
    routed = IP(bytes(sent[IP]))
    routed.ttl, routed.chksum = 8, None
    got = Ether(src="02:00:00:00:00:03", dst="02:00:00:00:00:04") / IP(bytes(routed))
    expect_routed(got, sent, src_mac="02:00:00:00:00:03", dst_mac="02:00:00:00:00:04")
    with pytest.raises(AssertionError, match="IP.ttl: 8, expected 7"):
        expect_routed(got, sent, hops=2)
    with pytest.raises(AssertionError, match="Ether.src"):
        expect_routed(got, sent, src_mac="02:00:00:00:00:09")
    with pytest.raises(AssertionError, match="IP.chksum"):
        expect_routed(poke(bytes(got), 24, 0), sent)
    with pytest.raises(AssertionError, match="changed beyond TTL and checksum"):
        expect_routed(poke(bytes(got), 40, 9), sent)


def test_describe_and_diff():
    a = Ether() / IP(src="1.1.1.1", dst="2.2.2.2", ttl=5) / TCP(dport=80) / Raw(b"x" + marker())
    b = Ether() / IP(src="1.1.1.1", dst="2.2.2.3", ttl=5) / TCP(dport=81) / Raw(b"y")
    assert "IP src=1.1.1.1 dst=2.2.2.2 ttl=5" in pt.describe(a) and "marker PNMK" in pt.describe(a)
    d = pt.diff(a, b)
    assert "IP.dst: '2.2.2.2' -> '2.2.2.3'" in d and "TCP.dport: 80 -> 81" in d
    assert any(x.startswith("Raw: 17 B -> 1 B, first difference at byte 0") for x in d)


# ---- bad input: one clear error, nothing changed -----------------------------------------

def test_unknown_names(node):
    with pytest.raises(PodnetTestError, match="no pod 'zz' in the spec; its pods: a, b, r"):
        node.pod("zz")
    with pytest.raises(PodnetTestError, match="no node 'n9'"):
        node.info("n9")
    with pytest.raises(PodnetTestError, match="no pod or port 'zz' on node n1"):
        node.send("zz", Ether())
    with pytest.raises(PodnetTestError, match="pod 'r' is on node n2, not n1"):
        node.send("r", Ether())
    with pytest.raises(PodnetTestError, match="node n1 has no port 7"):
        node.send(7, Ether())
    with pytest.raises(PodnetTestError, match="pod r is on node n2, not on this in-memory node"):
        send_and_expect(node.pod("r"), udp(node.pod("r"), node.pod("a")), node.pod("a"))
    with pytest.raises(PodnetTestError, match="no node 'n9' in the spec"):
        MemoryNode(spec(), "n9")


def test_a_frame_too_long_for_the_pods_mtu_is_refused_whole(node):
    a, b = node.pod("a"), node.pod("b")
    assert a.mtu == 1450
    fits = udp(a, b) / Raw(b"x" * (1450 - 28 - 16))              # 16: the marker send_and_expect appends
    too_long = udp(a, b) / Raw(b"x" * (1450 - 28 - 16 + 1))
    before = node.counters()["ports"]
    with pytest.raises(FrameTooLong, match=r"a: frame #1 is 1465 bytes; its MTU of 1450 carries frames of at most 1464"):
        send_and_expect(a, [fits, too_long], b)
    with pytest.raises(FrameTooLong):
        node.send("a", [fits, too_long])
    assert node.counters()["ports"] == before and b.sniff() == []      # nothing was sent
    assert len(send_and_expect(a, fits, b)) == 1
    with pytest.raises(PodnetTestError, match="shorter than an Ethernet header"):
        node.send("a", b"\x00" * 10)
    with pytest.raises(PodnetTestError, match="no packets to send"):
        send_and_expect(a, [], b)


@pytest.mark.parametrize("bad,what", [
    ({"cluster": {"podCIDR": "10.244.0.0/33"}, "nodes": [{"name": "n1"}]}, "podCIDR"),
    ({"nodes": [{"name": "n1"}], "pods": [{"name": "p", "node": "n7"}]}, "unknown node 'n7'"),
    ("nodes: [\n", "YAML"),
])
def test_an_invalid_spec_is_one_clear_error(podnet_node, bad, what):
    with pytest.raises(SpecError, match=what):
        podnet_node(bad)


def test_spec_inputs(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("nodes: [{name: x}]\npods: [{name: q, node: x}]\n")
    for given in (p, str(p), p.read_text(), {"nodes": [{"name": "x"}], "pods": [{"name": "q", "node": "x"}]}):
        assert [x.name for x in pt.load_spec_input(given).pods] == ["q"]
    assert pt.load_spec_input(None).name == "podnet"
    with pytest.raises(PodnetTestError, match="does not exist"):
        pt.load_spec_input(str(tmp_path / "missing.yaml"))
    with pytest.raises(PodnetTestError, match="a spec is a dict, YAML text or a path"):
        pt.load_spec_input(42)


def test_bad_filters_and_in_memory_limits(node):
    with pytest.raises(PodnetTestError, match="filter must be"):
        node.pod("a").capture(filter=5)
    with pytest.raises(PodnetTestError, match="callable filter, not BPF"):
        node.pod("a").capture(filter="udp")
    with pytest.raises(PodnetTestError, match="in memory: it has no namespace"):
        node.pod("a").exec("true")


def test_a_live_cluster_without_root_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    c = pt.Cluster(None, tmp_path)
    with pytest.raises(PodnetTestError, match="needs root"):
        c.up()
    assert not (tmp_path / "run").exists()                          # nothing made


# ---- the plugin: fixtures in any pytest run, skip without root ------------------------------

PLUGIN_TEST = textwrap.dedent("""
    import os
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from dataplane.testing import send_and_expect

    def test_memory(podnet_node):
        n = podnet_node()
        a, w = n.pod("client-a"), n.pod("web-a")
        [got] = send_and_expect(a, Ether(src=a.mac, dst=a.gateway_mac) / IP(src=a.ip, dst=w.ip) / UDP(), w)
        assert got[IP].ttl == 63

    def test_live(podnet_cluster, monkeypatch):
        monkeypatch.setattr(os, "geteuid", lambda: 1000)   # as a user without root
        podnet_cluster()
""")


@pytest.mark.parametrize("ci,outcome", [("", "1 passed, 1 skipped"), ("true", "1 failed, 1 passed")])
def test_the_plugin_is_registered_and_skips_live_clusters_without_root(tmp_path, ci, outcome):
    """A test file with no conftest gets the fixtures from the installed
    package's entry point; without root the live fixture skips with the
    reason (fails under CI=true)."""
    (tmp_path / "test_user.py").write_text(PLUGIN_TEST)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "test_user.py"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120, env={**os.environ, "CI": ci})
    assert outcome in r.stdout, r.stdout + r.stderr
    assert "live podnet clusters need root and /dev/net/tun" in r.stdout


# ---- the docs page shows what the toolkit does ---------------------------------------------

DOCS = os.path.join(os.path.dirname(__file__), "..", "docs")


def test_the_docs_page_holds_the_example_file_verbatim():
    page = open(os.path.join(DOCS, "testing.md")).read()
    example = open(os.path.join(DOCS, "examples", "test_podnet_packets.py")).read()
    assert f"```python\n{example}```" in page


def test_the_docs_failure_report_is_what_the_toolkit_prints():
    """The sample report on the docs page, made again: identical but for the markers."""
    page = open(os.path.join(DOCS, "testing.md")).read()
    start = page.index("```\nsend_and_expect client-a -> web-a") + 4
    shown = page[start:page.index("```", start)].rstrip("\n")
    n = MemoryNode()
    a, w = n.pod("client-a"), n.pod("web-a")
    ok = Ether(src=a.mac, dst=a.gateway_mac) / IP(src=a.ip, dst=w.ip) / UDP(sport=1000, dport=2000)
    spoofed = Ether(src=a.mac, dst=a.gateway_mac) / IP(src="10.244.0.99", dst=w.ip) / UDP(sport=1000, dport=2000)
    with pytest.raises(AssertionError) as e:
        send_and_expect(a, [ok, spoofed], w)
    import re
    def norm(t):                     # the markers differ, and with them the UDP checksums
        return re.sub(r"chksum=\d+ / Raw", "chksum=N / Raw", re.sub(r"PNMK[0-9a-f]{6}[0-9]{6}", "PNMK", t))
    assert norm(str(e.value)) == norm(shown)


def test_every_public_name_has_a_docstring():
    import inspect
    missing = []
    for name in pt.__all__:
        obj = getattr(pt, name)
        if not (obj.__doc__ or "").strip():
            missing.append(name)
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if attr.startswith("_") or not (inspect.isfunction(member) or isinstance(member, property)):
                    continue
                doc = member.__doc__ or next((getattr(b, attr).__doc__ for b in obj.__mro__[1:]
                                              if getattr(getattr(b, attr, None), "__doc__", None)), None)
                if not (doc or "").strip():
                    missing.append(f"{name}.{attr}")
    assert not missing, f"public names without a docstring: {', '.join(missing)}"
