"""The ipip and direct backends for real (cluster.backend), each on two podnet
nodes: ping, TCP, UDP, a ClusterIP whose only backend is on the other node,
the pods' MTU and path-MTU discovery at each backend's overhead, `podnet
status`, and what each node puts on the fabric (echo requests sent from a
pod with dataplane.testing and the replies, caught at the nodes' uplinks)
checked by expect_ipip/expect_routed and by tshark's dissector (ipip: RFC
2003 frames between the underlay IPs; direct: the pods' own packets between
the underlay MACs). Linux nodes join: a direct one (plain routes
POD_CIDR via NODE_IP) both ways; a Calico-style tunl0 one wherever this
kernel has IPIP (the one test allowed to skip: this machine's kernel has no
CONFIG_NET_IPIP), and, on every kernel, a node that speaks IPIP from scapy.
VXLAN is tests/test_netns_overlay.py's."""
import json
import re
import sys

import pytest

from dataplane.testing import (Endpoint, expect_ipip, expect_routed, markers_in, send_and_assert_no_reply,
                               send_and_expect)
from kernel_node import IpipUnavailable, KernelDirectNode, KernelIpipNode, netns_exists, run
from netns_helpers import (agent, echo_requests, in_pod, pod_ip, podnet, py_in_pod, running_cluster, spawn_in_pod,
                           wait_listening, wait_marked, wait_until)
from test_netns_node import TCP_CLIENT, TCP_SERVER, UDP_CLIENT, UDP_SERVER
from test_netns_services import SERVER as SVC_SERVER
from test_netns_services import TCP_CLIENT as SVC_TCP_CLIENT
from test_netns_services import UDP_CLIENT as SVC_UDP_CLIENT

# per backend: cluster name (every namespace's prefix), pod /16 and fabric /24 prefixes
CLUSTERS = {"ipip": ("pnbip", "10.238", "172.30.226"), "direct": ("pnbdr", "10.239", "172.30.227")}
OVERHEAD = {"ipip": 20, "direct": 0}
SPEC = """
cluster: {{name: {name}, backend: {backend}, podCIDR: {pod}.0.0/16, serviceCIDR: 10.93.0.0/16,
          fabricCIDR: {fabric}.0/24}}
nodes: [{{name: n1}}, {{name: n2}}]
pods:
  - {{name: a, node: n1, labels: {{app: client}}}}
  - {{name: b, node: n1, labels: {{app: client}}}}
  - {{name: c, node: n2, labels: {{app: web}}}}
services:
  - name: web
    selector: {{app: web}}
    ports: [{{name: http, port: 80, targetPort: 8080}}, {{name: dns, port: 53, targetPort: 5353, protocol: UDP}}]
"""


class Cluster:
    """A running cluster of one backend, and the Linux node that joined it (None where this
    kernel cannot build one: `why` says why)."""

    def __init__(self, backend, st, k, why):
        self.backend, self.st, self.k, self.why = backend, st, k, why
        self.name, self.pod16, self.fabric24 = CLUSTERS[backend]
        self.fabric_ns = f"{self.name}-fabric"
        self.k_cidr, self.k_ip = f"{self.pod16}.9.0/24", f"{self.fabric24}.100"
        self.mtu = 1500 - OVERHEAD[backend]


@pytest.fixture(scope="module", params=["ipip", "direct"])
def cl(request, tmp_path_factory):
    backend = request.param
    name, pod, fabric = CLUSTERS[backend]
    spec = SPEC.format(name=name, backend=backend, pod=pod, fabric=fabric)
    with running_cluster(tmp_path_factory.mktemp(backend), spec) as st:
        kind = KernelDirectNode if backend == "direct" else KernelIpipNode
        c = Cluster(backend, st, None, None)
        try:
            k = kind("k1", fabric_ns=c.fabric_ns, fabric_bridge="br-fabric", underlay_ip=c.k_ip,
                     underlay_prefixlen=24, pod_cidr=c.k_cidr, prefix=f"{name}k", pods=1)
            k.__enter__()
        except IpipUnavailable as e:
            c.why = str(e)
            yield c
            return
        try:
            for n in st.nodes.values():
                k.add_peer(n.subnet, n.underlay_ip)
            podnet("node", "add", "k1", "--pod-cidr", c.k_cidr, "--vtep", c.k_ip)
            c.k = k
            yield c
        finally:
            k.__exit__(None, None, None)


def ipip_only(f):
    return pytest.mark.parametrize("cl", ["ipip"], indirect=True)(f)


def direct_only(f):
    return pytest.mark.parametrize("cl", ["direct"], indirect=True)(f)


def tshark(pcap, *fields):
    """tshark's dissection of pcap: one list of field values per frame (a field of a header
    that occurs twice, such as ip.src under IPIP, reads "outer,inner")."""
    r = run("tshark", "-n", "-r", pcap, "-o", "ip.check_checksum:TRUE", "-T", "fields", "-E", "separator=|",
            *[a for f in fields for a in ("-e", f)], timeout=60)
    return [line.split("|") for line in r.stdout.splitlines() if line.strip()]


# ---- the cluster: status, MTU -----------------------------------------------------

def test_status_reports_the_backend(cl):
    st = cl.st
    s = json.loads(podnet("status", "-o", "json").stdout)
    assert s["backend"] == cl.backend
    assert {n["name"]: n["backend"] for n in s["nodes"]} == {"n1": cl.backend, "n2": cl.backend}
    # ipip: no IPIP GSO type, so pods' super-frames are segmented in the fast path; direct: plain TSO on the uplink
    assert {n["gso_path"] for n in s["nodes"]} == {"segmented" if cl.backend == "ipip" else "tso"}
    assert f"backend {cl.backend}" in podnet("status").stdout.splitlines()[0]
    info = agent(st, "n1", "status")["overlay"]
    assert (info["backend"], info["overhead"]) == (cl.backend, OVERHEAD[cl.backend])
    if cl.k is not None:
        assert s["external_nodes"] == [{"name": "k1", "pod_cidr": cl.k_cidr, "vtep": cl.k_ip, "vtep_mac": None}]
    routes = {r["name"]: r for r in json.loads(podnet("routes", "n1", "-o", "json").stdout)}
    assert routes["n2"]["vtep"] == st.nodes["n2"].underlay_ip and routes["n2"]["cidr"] == st.nodes["n2"].subnet
    assert routes["n2"]["inner_mac"] is None                  # no inner Ethernet header in ipip or direct


def test_pod_mtu_is_the_fabric_mtu_less_the_backend_overhead(cl):
    st = cl.st
    for pod in ("a", "c"):
        link = json.loads(in_pod(st, pod, "ip", "-j", "link", "show", "eth0").stdout)[0]
        assert link["mtu"] == cl.mtu == st.pods[pod].mtu, (pod, link["mtu"])
    pods = {p["name"]: p for p in json.loads(podnet("status", "-o", "json").stdout)["pods"]}
    assert pods["c"]["mtu"] == cl.mtu


# ---- traffic between the two podnet nodes ------------------------------------------

def test_ping_across_nodes(cl):
    st = cl.st
    r = in_pod(st, "a", "ping", "-c", "3", "-i", "0.2", "-W", "2", pod_ip(st, "c"))
    assert "3 received" in r.stdout and "ttl=62" in r.stdout        # a gateway hop on each node
    r = in_pod(st, "c", "ping", "-c", "2", "-i", "0.2", "-W", "2", st.nodes["n1"].gateway_ip)
    assert "2 received" in r.stdout


@pytest.mark.parametrize("src,dst", [("a", "c"), ("c", "b")])
def test_tcp_across_nodes(cl, src, dst):
    st = cl.st
    nbytes = 6_000_000
    before = agent(st, "n1", "counters")
    srv = spawn_in_pod(st, dst, TCP_SERVER, 7201)
    try:
        r = py_in_pod(st, src, TCP_CLIENT, pod_ip(st, dst), 7201, nbytes, timeout=60)
        sent, echoed = r.stdout.split()
        assert sent == echoed                                   # every byte arrived intact
        assert srv.communicate(timeout=20)[0].split() == [str(nbytes), sent]
    finally:
        srv.kill()
        srv.wait()
    after = agent(st, "n1", "counters")
    key = "encapsulated" if src == "a" else "decapsulated"
    frames = after["overlay"][key] - before["overlay"][key]
    up = after["ports"]["255"]["tx_bytes" if src == "a" else "rx_bytes"] - \
        before["ports"]["255"]["tx_bytes" if src == "a" else "rx_bytes"]
    assert up >= nbytes, up
    if cl.backend == "ipip" and src == "a":
        # pods' super-frames (TSO) cut into segments by the fast path: one segment per <= 1440 bytes,
        # fewer super-frames than segments
        segs = after["overlay"]["segments"] - before["overlay"]["segments"]
        cut = after["overlay"]["segmented"] - before["overlay"]["segmented"]
        assert segs >= nbytes // (cl.mtu - 40) and 0 < cut < segs, (segs, cut)
        assert after["drops"]["segments_full"] == before["drops"]["segments_full"]
    elif cl.backend == "ipip":
        # the far side gets the segments one by one: at least one frame per 1440-byte segment
        assert frames >= nbytes // (cl.mtu - 40), frames
    elif src == "a":
        # direct: super-frames leave the uplink whole (TSO), far fewer than one per segment
        assert 0 < frames < nbytes / 1400 / 2, frames
    else:
        assert frames > 0


def test_udp_across_nodes(cl):
    st = cl.st
    srv = spawn_in_pod(st, "c", UDP_SERVER, 7202, 200)
    try:
        wait_listening(st, "c", 7202, "udp")
        r = py_in_pod(st, "a", UDP_CLIENT, pod_ip(st, "c"), 7202, 200, timeout=30)
        out, _ = srv.communicate(timeout=20)
    finally:
        srv.kill()
        srv.wait()
    assert int(out) == 200 and int(r.stdout) == 200


def test_cluster_ip_with_its_only_backend_on_the_other_node(cl):
    st = cl.st
    vip = st.services_plan["web"]
    srv = spawn_in_pod(st, "c", SVC_SERVER, pod_ip(st, "c"))
    try:
        wait_listening(st, "c", 8080, "tcp")
        wait_listening(st, "c", 5353, "udp")
        calls = json.loads(py_in_pod(st, "a", SVC_TCP_CLIENT, vip, 80, 8, timeout=60).stdout)
        # the peer is the ClusterIP, the backend c on n2, and c sees the real client
        assert calls == [[vip, pod_ip(st, "c"), pod_ip(st, "a")]] * 8, calls
        out = json.loads(py_in_pod(st, "b", SVC_UDP_CLIENT, vip, 53, 1.0, timeout=30).stdout)
        answered = [o for o in out if len(o) == 3]
        assert len(answered) >= len(out) - 1 and answered
        assert all(o == [vip, 53, pod_ip(st, "c")] for o in answered), out
    finally:
        srv.kill()
        srv.wait()
    conns = json.loads(podnet("conntrack", "n1", "-o", "json").stdout)
    assert any(c["service"] == f"{vip}:80" and c["backend"].startswith(pod_ip(st, "c") + ":") for c in conns)


def test_path_mtu_discovery_at_the_backend_mtu(cl):
    """A DF packet bigger than the backend lets through (a pod whose eth0 says 20 bytes more
    than the pod MTU) is dropped as too_big and answered by the gateway with ICMP fragmentation
    needed carrying fabric MTU - overhead (1480 ipip, 1500 direct); the pod's kernel learns it,
    refuses the size from then on, and that MTU crosses."""
    st = cl.st
    dst, gw, mtu = pod_ip(st, "c"), st.nodes["n1"].gateway_ip, cl.mtu
    in_pod(st, "a", "ip", "link", "set", "eth0", "mtu", str(mtu + 20))
    try:
        before = agent(st, "n1", "counters")["drops"]["too_big"]
        r = in_pod(st, "a", "ping", "-M", "do", "-s", str(mtu + 20 - 28), "-c", "1", "-W", "2", dst, check=False)
        assert r.returncode != 0
        assert re.search(rf"From {re.escape(gw)} icmp_seq=1 Frag needed and DF set \(mtu = {mtu}\)", r.stdout), \
            r.stdout
        assert agent(st, "n1", "counters")["drops"]["too_big"] - before == 1
        assert f"mtu {mtu}" in in_pod(st, "a", "ip", "route", "get", dst).stdout          # learnt
        r = in_pod(st, "a", "ping", "-M", "do", "-s", str(mtu + 20 - 28), "-c", "1", "-W", "2", dst, check=False)
        assert r.returncode != 0 and f"message too long, mtu={mtu}" in r.stdout + r.stderr
        assert agent(st, "n1", "counters")["drops"]["too_big"] - before == 1               # never sent
        r = in_pod(st, "a", "ping", "-M", "do", "-s", str(mtu - 28), "-c", "2", "-i", "0.2", "-W", "2", dst)
        assert "2 received" in r.stdout
    finally:
        in_pod(st, "a", "ip", "link", "set", "eth0", "mtu", str(mtu))
        in_pod(st, "a", "ip", "route", "flush", "cache")


# ---- what the fabric carries -----------------------------------------------------------

def fabric_exchange(cl, reqs, bpf):
    """Send reqs (echo requests) from pod a to c with dataplane.testing and
    catch what each node puts on the fabric for them (at its uplink, bpf
    filtering): (the requests as n1 sent them, in order; c's replies as n2
    sent them, in arrival order)."""
    live = cl.st.live
    a, c = live.pod("a"), live.pod("c")
    n1, n2 = live.node("n1"), live.node("n2")
    with n2.uplink.capture(bpf) as back:
        there = send_and_expect(a, reqs, n1.uplink, filter=bpf)
        replies = wait_marked(back, reqs, len(reqs))
    return there, replies


@ipip_only
def test_fabric_capture_is_rfc2003_ipip(cl, tmp_path):
    """Outer Ethernet between the nodes' underlay MACs, outer IPv4 protocol 4 between their
    underlay IPs, DF set, TTL the inner one (ttl inherit), DSCP 0 and the inner ECN (RFC 6040
    normal mode), non-zero IDs, valid checksum, length inner + 20; the inner packet is the
    pods' with TTL 63 (one gateway hop), its TOS untouched. The frames are echo requests sent
    from pod a with dataplane.testing and c's replies, caught at each node's uplink, checked
    by expect_ipip and by tshark's dissector (a pcap of the same frames)."""
    from scapy.layers.inet import ICMP, IP
    from scapy.utils import wrpcap
    st = cl.st
    n1, n2 = st.live.node("n1"), st.live.node("n2")
    a, c = st.live.pod("a"), st.live.pod("c")
    reqs = echo_requests(a, c.ip, 2) + echo_requests(a, c.ip, 2, tos=0xb9)     # EF + ECT(1)
    there, back = fabric_exchange(cl, reqs, "ip proto 4")
    pkts = there + back
    assert len(pkts) == 8
    ids = {n1.underlay_ip: [], n2.underlay_ip: []}
    for p, req in zip(there, reqs):                           # requests: the pod's packet, routed, TOS untouched
        want = IP(bytes(req[IP]))
        want.ttl = 63
        del want.chksum
        inner = expect_ipip(p, n1, n2, inner=IP(bytes(want)))
        assert inner.tos == req[IP].tos in (0, 0xb9)
    for p in back:
        expect_ipip(p, n2, n1)
        assert (p[IP].payload.src, p[IP].payload.dst, p[IP].payload[ICMP].type) == (c.ip, a.ip, 0)
    for p in pkts:                                            # every outer field, again by hand
        o = p[IP]
        inner = o.payload
        assert isinstance(inner, IP) and o.proto == 4 and o.ihl == 5
        assert o.flags.DF and not o.flags.MF and o.frag == 0
        assert o.ttl == inner.ttl == 63
        assert o.tos >> 2 == 0 and o.tos & 3 == inner.tos & 3
        assert o.len == inner.len + 20 and o.id != 0
        ids[o.src].append(o.id)
        assert {inner.src, inner.dst} == {a.ip, c.ip} and inner.haslayer(ICMP)
    marked = [p for p in there if p[IP].payload.tos == 0xb9]
    assert len(marked) == 2 and all(p[IP].tos == 0x01 for p in marked)     # ECT(1) copied, DSCP not
    assert all(len(set(v)) == len(v) == 4 for v in ids.values()), ids      # a new ID per packet
    # tshark's dissector: IP in IP, outer then inner header
    pcap = tmp_path / "ipip.pcap"
    wrpcap(str(pcap), pkts)
    rows = tshark(str(pcap), "frame.protocols", "ip.proto", "ip.src", "ip.dst", "ip.flags.df", "ip.ttl",
                  "ip.checksum.status", "ip.dsfield.dscp")
    assert len(rows) == 8
    for protos, proto, src, dst, df, ttl, csum, dscp in rows:
        assert protos == "eth:ethertype:ip:ip:icmp:data", protos
        assert proto == "4,1" and df.split(",")[0] == "1"
        assert set(src.split(",")[:1] + dst.split(",")[:1]) == {n1.underlay_ip, n2.underlay_ip}
        assert {src.split(",")[1], dst.split(",")[1]} == {a.ip, c.ip}
        assert ttl == "63,63" and csum.split(",")[0] == "1"     # 1: good
        assert dscp.split(",")[0] == "0"


@direct_only
def test_fabric_capture_is_the_pods_own_packets(cl, tmp_path):
    """Direct routing: on the fabric, the pods' packets themselves (TTL 63 after the sending
    node's gateway, every other byte as sent: expect_routed), no outer header, from one
    node's underlay MAC to the other's. Echo requests from pod a (dataplane.testing) and c's
    replies, caught at each node's uplink; tshark's dissector reads a pcap of them."""
    from scapy.layers.inet import ICMP, IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.utils import wrpcap
    st = cl.st
    n1, n2 = st.live.node("n1"), st.live.node("n2")
    a, c = st.live.pod("a"), st.live.pod("c")
    reqs = echo_requests(a, c.ip, 4)
    there, back = fabric_exchange(cl, reqs, f"icmp and host {a.ip}")
    pkts = there + back
    assert len(pkts) == 8
    for p, req in zip(there, reqs):
        expect_routed(p, req, src_mac=n1.underlay_mac, dst_mac=n2.underlay_mac)
    for p in pkts:
        ip = p[IP]
        assert {ip.src, ip.dst} == {a.ip, c.ip} and ip.haslayer(ICMP)
        assert not isinstance(ip.payload, IP) and not p.haslayer(UDP)         # no encapsulation
        assert ip.ttl == 63
        to_n2 = ip.dst == c.ip
        assert (p[Ether].src, p[Ether].dst) == ((n1.underlay_mac, n2.underlay_mac) if to_n2
                                                else (n2.underlay_mac, n1.underlay_mac))
    assert sum(p[IP].dst == c.ip for p in pkts) == 4
    assert [p[ICMP].type for p in back] == [0] * 4
    pcap = tmp_path / "direct.pcap"
    wrpcap(str(pcap), pkts)
    rows = tshark(str(pcap), "frame.protocols", "ip.proto", "ip.src", "ip.dst", "eth.src", "eth.dst")
    assert len(rows) == 8
    for protos, proto, src, dst, esrc, edst in rows:
        assert (protos, proto) == ("eth:ethertype:ip:icmp:data", "1")
        assert {src, dst} == {a.ip, c.ip} and {esrc, edst} == {n1.underlay_mac, n2.underlay_mac}


# ---- Linux nodes ---------------------------------------------------------------------------

def _interop_both_ways(cl):
    st, k = cl.st, cl.k
    kpod = k.pods[0]
    r = in_pod(st, "a", "ping", "-c", "3", "-i", "0.2", "-W", "2", kpod["ip"])
    assert "3 received" in r.stdout and "ttl=62" in r.stdout
    r = k.exec(0, "ping", "-c", "3", "-i", "0.2", "-W", "2", pod_ip(st, "c"))
    assert "3 received" in r.stdout and "ttl=62" in r.stdout
    srv = k.popen(0, sys.executable, "-c", TCP_SERVER, 7203, text=True)
    try:                                                  # TCP, podnet pod -> kernel pod
        r = py_in_pod(st, "b", TCP_CLIENT, kpod["ip"], 7203, 4_000_000, timeout=60)
        sent, echoed = r.stdout.split()
        assert sent == echoed
    finally:
        srv.kill()
        srv.wait()
    srv = spawn_in_pod(st, "c", TCP_SERVER, 7204)
    try:                                                  # TCP, kernel pod -> podnet pod
        r = k.exec(0, sys.executable, "-c", TCP_CLIENT, pod_ip(st, "c"), 7204, 4_000_000, timeout=60)
        sent, echoed = r.stdout.split()
        assert sent == echoed
    finally:
        srv.kill()
        srv.wait()


def _unknown_source_dropped_then_rejoins(cl, vtep_mac):
    """Without its route (node remove), the Linux node's pods are nobody podnet knows: their
    packets are dropped on arrival as tunnel_unknown_source. Added again (with a static
    underlay MAC this time), it is reached again."""
    st, k = cl.st, cl.k
    podnet("node", "remove", "k1")
    try:
        before = agent(st, "n2", "counters")["drops"]["tunnel_unknown_source"]
        r = k.exec(0, "ping", "-c", "2", "-i", "0.2", "-W", "1", pod_ip(st, "c"), check=False)
        assert r.returncode != 0
        assert agent(st, "n2", "counters")["drops"]["tunnel_unknown_source"] - before == 2
    finally:
        podnet("node", "add", "k1", "--pod-cidr", cl.k_cidr, "--vtep", cl.k_ip, "--vtep-mac", vtep_mac)
    routes = {r["name"]: r for r in agent(st, "n1", "routes")}
    assert (routes["k1"]["vtep_state"], routes["k1"]["vtep_mac"]) == ("static", vtep_mac)
    r = k.exec(0, "ping", "-c", "2", "-i", "0.2", "-W", "2", pod_ip(st, "c"))
    assert "2 received" in r.stdout
    r = in_pod(st, "a", "ping", "-c", "2", "-i", "0.2", "-W", "2", k.pods[0]["ip"])
    assert "2 received" in r.stdout


@direct_only
def test_linux_direct_node_both_ways(cl):
    assert cl.k is not None
    st, k = cl.st, cl.k
    # the Linux node's side: plain routes to each podnet node's pods via its underlay IP
    routes = {r["dst"]: r for r in k.routes()}
    for n in st.nodes.values():
        assert routes[n.subnet]["gateway"] == n.underlay_ip and routes[n.subnet]["dev"] == "eth0"
    _interop_both_ways(cl)
    # podnet's side: its next hop resolved by ARP to the Linux node's uplink MAC
    r = {r["name"]: r for r in agent(st, "n1", "routes")}["k1"]
    assert (r["vtep"], r["vtep_mac"], r["inner_mac"]) == (cl.k_ip, k.underlay_mac, None)
    _unknown_source_dropped_then_rejoins(cl, k.underlay_mac)


@ipip_only
def test_linux_ipip_node_both_ways(cl):
    """Calico's IPIP mode on a Linux node (tunl0, POD_CIDR via NODE_IP dev tunl0 onlink): runs
    wherever this kernel makes ipip devices (this machine's has no CONFIG_NET_IPIP)."""
    if cl.k is None:
        pytest.skip(cl.why)
    k = cl.k
    info = k.tunnel_info()
    assert info["mtu"] == cl.mtu and info.get("remote", "any") == "any"
    _interop_both_ways(cl)
    _unknown_source_dropped_then_rejoins(cl, k.underlay_mac)


# A node speaking RFC 2003 from scapy, on every kernel: a namespace on the fabric bridge whose
# eth0 the test sends from and captures at (a dataplane.testing Endpoint); its kernel answers
# ARP for the node's address.
def ipip_echo(mac, node, outer_src, inner_src, inner_dst):
    from scapy.layers.inet import ICMP, IP
    from scapy.layers.l2 import Ether
    return (Ether(src=mac, dst=node.underlay_mac) / IP(src=outer_src, dst=node.underlay_ip, proto=4, flags="DF",
                                                       ttl=64, id=7)
            / IP(src=inner_src, dst=inner_dst, ttl=64) / ICMP(id=4242, seq=1) / b"podnet-ipip")


@pytest.fixture
def scapy_node(cl):
    """A namespace with a veth into the fabric bridge at fabric .200 (its end in the fabric
    netns named pnbsx-*), removed afterwards."""
    ns, peer = f"{cl.name}-sx", f"{cl.name}-sx"
    ip = f"{cl.fabric24}.200"
    assert not netns_exists(ns)
    run("ip", "netns", "add", ns)
    try:
        run("ip", "-n", cl.fabric_ns, "link", "add", peer, "type", "veth", "peer", "name", "eth0", "netns", ns)
        run("ip", "-n", cl.fabric_ns, "link", "set", peer, "master", "br-fabric", "up")
        run("ip", "-n", ns, "link", "set", "lo", "up")
        run("ip", "-n", ns, "link", "set", "eth0", "up")
        run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        mac = json.loads(run("ip", "-n", ns, "-j", "link", "show", "eth0").stdout)[0]["address"]
        ep = Endpoint(ns, "eth0", 1500, name="scapy-node")
        try:
            yield ep, ip, mac
        finally:
            ep.close()
    finally:
        run("ip", "-n", cl.fabric_ns, "link", "del", peer, check=False)
        run("ip", "netns", "del", ns, check=False)


@ipip_only
def test_an_ipip_node_made_with_scapy_both_ways(cl, scapy_node):
    """An RFC 2003 packet from a registered node reaches pod c (decapsulated, TTL-1) and c's
    reply comes back IPIP-encapsulated to that node's underlay IP; the same packet from an
    outer source that is no node's is dropped as tunnel_unknown_source."""
    from scapy.layers.inet import ICMP, IP
    from scapy.layers.l2 import Ether
    st = cl.st
    sx, ip, mac = scapy_node
    n2 = st.live.node("n2")
    cidr = f"{cl.pod16}.10.0/24"
    inner_src = f"{cl.pod16}.10.2"
    bpf = f"ip proto 4 and src host {n2.underlay_ip}"
    podnet("node", "add", "sx", "--pod-cidr", cidr, "--vtep", ip)
    try:
        # n2 asks for the new node's MAC when the route comes (the scapy node's kernel answers)
        wait_until(lambda: {r["name"]: r for r in agent(st, "n2", "routes")}["sx"]["vtep_state"] == "reachable",
                   10, "n2 to resolve the scapy node's MAC")
        before = agent(st, "n2", "counters")
        pkt = ipip_echo(mac, n2, ip, inner_src, pod_ip(st, "c"))
        [p] = send_and_expect(sx, pkt, sx, filter=bpf)
        [m] = markers_in(pkt)
        o = p[IP]
        i = o.payload
        reply = {"esrc": p[Ether].src, "edst": p[Ether].dst, "src": o.src, "dst": o.dst, "proto": o.proto,
                 "df": bool(o.flags.DF), "ttl": o.ttl, "isrc": i.src, "idst": i.dst, "ittl": i.ttl,
                 "icmp": i[ICMP].type, "id": i[ICMP].id, "load": bytes(i[ICMP].payload)}
        assert reply == {"esrc": n2.underlay_mac, "edst": mac, "src": n2.underlay_ip, "dst": ip, "proto": 4,
                         "df": True, "ttl": 63, "isrc": pod_ip(st, "c"), "idst": inner_src, "ittl": 63,
                         "icmp": 0, "id": 4242, "load": b"podnet-ipip" + m}, reply
        expect_ipip(p, n2, ip)                                   # and every other outer field
        after = agent(st, "n2", "counters")
        assert after["overlay"]["decapsulated"] - before["overlay"]["decapsulated"] >= 1
        # the same from an outer source no route names
        before = after["drops"]["tunnel_unknown_source"]
        send_and_assert_no_reply(sx, ipip_echo(mac, n2, f"{cl.fabric24}.201", inner_src, pod_ip(st, "c")), sx,
                                 filter=bpf)
        wait_until(lambda: agent(st, "n2", "counters")["drops"]["tunnel_unknown_source"] - before >= 1, 5,
                   "the packet from .201 to be counted")
        assert agent(st, "n2", "counters")["drops"]["tunnel_unknown_source"] - before == 1
    finally:
        podnet("node", "remove", "sx")


# ---- refusals --------------------------------------------------------------------------------

@direct_only
def test_direct_node_add_refuses_a_next_hop_off_the_fabric(cl):
    st = cl.st
    before = {n: agent(st, n, "routes") for n in st.nodes}
    external = json.loads(podnet("status", "-o", "json").stdout)["external_nodes"]
    r = podnet("node", "add", "k2", "--pod-cidr", f"{cl.pod16}.50.0/24", "--vtep", "10.1.1.1", check=False)
    assert r.returncode == 1
    assert "next hop 10.1.1.1 is not on the fabric " + f"{cl.fabric24}.0/24" in r.stderr, r.stderr
    # the agents refuse it too, if asked directly (the fast path's own check)
    from dataplane.control import ControlError
    with pytest.raises(ControlError, match="not on the fabric"):
        agent(st, "n1", "route_add", name="k2", cidr=f"{cl.pod16}.50.0/24", vtep="10.1.1.1")
    assert {n: agent(st, n, "routes") for n in st.nodes} == before
    assert json.loads(podnet("status", "-o", "json").stdout)["external_nodes"] == external


def test_no_namespace_left_of_a_linux_node_that_could_not_be_built():
    """KernelIpipNode cleans up after itself when the kernel has no IPIP (what the ipip
    cluster's fixture relies on); where it has, the node builds and is removed."""
    from conftest import require_root
    require_root()
    from kernel_node import Fabric, netns_list
    with Fabric("pnbx-fabric") as fab:
        try:
            with KernelIpipNode("x", fabric_ns=fab.ns, fabric_bridge=fab.bridge, underlay_ip="172.30.228.9",
                                underlay_prefixlen=24, pod_cidr="10.237.9.0/24", prefix="pnbx", pods=1) as k:
                assert k.tunnel_info()["mtu"] == 1480
        except IpipUnavailable as e:
            assert str(e).startswith("this kernel has no IPIP (ip link add tunl0 type ipip: ")
            assert KernelIpipNode.probe() == str(e)
        assert not [n for n in netns_list() if n.startswith("pnbx-x")]
    assert "pnbx-fabric" not in netns_list()


def test_a_restarted_agent_keeps_its_backend_and_routes(cl):
    """SIGKILL n1's agent; `podnet up` starts it again: it comes back in the same backend, its
    routes restored from its snapshot (no inner MAC in ipip or direct; the Linux node's static
    underlay MAC kept) agree with state.json, so nothing needs putting right, and traffic
    crosses again. (Last in the module: the cluster's agent PIDs change.)"""
    from netns_helpers import kill_agent
    st = cl.st
    before = {r["name"]: r for r in agent(st, "n1", "routes")}
    kill_agent(st, "n1")
    out = podnet("up").stdout
    [line] = [ln for ln in out.splitlines() if ln.startswith("node n1:")]
    assert "agent was dead, restarted" in line and "route to" not in line, line
    s = json.loads(podnet("status", "-o", "json").stdout)
    n1 = next(n for n in s["nodes"] if n["name"] == "n1")
    assert (n1["agent"], n1["backend"]) == ("running", cl.backend)
    assert agent(st, "n1", "status")["overlay"]["backend"] == cl.backend
    after = {r["name"]: r for r in agent(st, "n1", "routes")}
    assert after.keys() == before.keys()
    for name, r in after.items():
        assert (r["cidr"], r["vtep"], r["inner_mac"]) == (before[name]["cidr"], before[name]["vtep"], None)
        if before[name]["vtep_state"] == "static":
            assert (r["vtep_state"], r["vtep_mac"]) == ("static", before[name]["vtep_mac"])
    r = in_pod(st, "a", "ping", "-c", "2", "-i", "0.2", "-W", "2", pod_ip(st, "c"))
    assert "2 received" in r.stdout
    if cl.k is not None:
        r = in_pod(st, "a", "ping", "-c", "2", "-i", "0.2", "-W", "2", cl.k.pods[0]["ip"])
        assert "2 received" in r.stdout
