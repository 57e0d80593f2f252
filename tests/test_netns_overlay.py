"""The VXLAN overlay for real: two podnet nodes and a flannel-style node made
of Linux's own vxlan device on one fabric bridge. Ping, TCP and UDP across
nodes, interop with the kernel node both ways, what the nodes put on the
fabric checked field by field (dataplane.testing: frames sent from a pod,
captured at the uplinks), and live route changes (node add/remove)."""
import json
import re
import sys

import pytest

from dataplane.testing import expect_routed, expect_vxlan, send_and_expect
from kernel_node import KernelNode
from netns_helpers import (agent, echo_requests, in_pod, pod_ip, podnet, py_in_pod, running_cluster, spawn_in_pod,
                           wait_listening, wait_marked)
from test_netns_node import TCP_CLIENT, TCP_SERVER, UDP_CLIENT, UDP_SERVER

SPEC = """
cluster: {name: pnov, podCIDR: 10.246.0.0/16, serviceCIDR: 10.95.0.0/16, fabricCIDR: 172.30.240.0/24}
nodes: [{name: n1}, {name: n2}]
pods: [{name: a, node: n1}, {name: b, node: n1}, {name: c, node: n2}]
"""
K_CIDR, K_VTEP = "10.246.9.0/24", "172.30.240.100"


@pytest.fixture(scope="module")
def ov(tmp_path_factory):
    with running_cluster(tmp_path_factory.mktemp("ov"), SPEC) as st:
        with KernelNode("k1", fabric_ns="pnov-fabric", fabric_bridge="br-fabric", underlay_ip=K_VTEP,
                        underlay_prefixlen=24, pod_cidr=K_CIDR, prefix="pnovk", pods=1) as k:
            for node, n in st.nodes.items():
                p = st.nodes[node]
                k.add_peer(p.subnet, n.underlay_ip, p.gateway_mac)
            podnet("node", "add", "k1", "--pod-cidr", K_CIDR, "--vtep", K_VTEP, "--vtep-mac", k.vtep_mac)
            yield st, k





def test_status_describes_fabric_and_underlay(ov):
    st, k = ov
    s = json.loads(podnet("status", "-o", "json").stdout)
    assert s["fabric"] == {"namespace": "pnov-fabric", "bridge": "br-fabric", "subnet": "172.30.240.0/24", "mtu": 1500}
    assert (s["vni"], s["vxlan_port"]) == (1, 4789)
    nodes = {n["name"]: n for n in s["nodes"]}
    assert nodes["n1"]["underlay_ip"] == "172.30.240.1" and nodes["n2"]["underlay_ip"] == "172.30.240.2"
    assert nodes["n1"]["underlay_mac"] == "0a:5a:ac:1e:f0:01"
    assert nodes["n1"]["gso_path"] == "udp-tunnel-gso"
    assert s["external_nodes"] == [{"name": "k1", "pod_cidr": K_CIDR, "vtep": K_VTEP, "vtep_mac": k.vtep_mac}]


def test_ping_across_podnet_nodes(ov):
    st, _ = ov
    r = in_pod(st, "a", "ping", "-c", "3", "-i", "0.2", "-W", "2", pod_ip(st, "c"))
    assert "3 received" in r.stdout and "ttl=62" in r.stdout       # a gateway hop on each node
    r = in_pod(st, "c", "ping", "-c", "2", "-i", "0.2", "-W", "2", "10.246.0.1")   # n1's gateway, over the overlay
    assert "2 received" in r.stdout


@pytest.mark.parametrize("src,dst", [("a", "c"), ("c", "b")])
def test_tcp_across_nodes_with_gso(ov, src, dst):
    st, _ = ov
    before = agent(st, "n1", "counters")
    srv = spawn_in_pod(st, dst, TCP_SERVER, 7101)
    try:
        r = py_in_pod(st, src, TCP_CLIENT, pod_ip(st, dst), 7101, 20_000_000, timeout=40)
        sent, echoed = r.stdout.split()
        assert sent == echoed
        assert srv.communicate(timeout=20)[0].split() == ["20000000", sent]
    finally:
        srv.kill()
    after = agent(st, "n1", "counters")
    ov = {k: after["overlay"][k] - before["overlay"][k] for k in ("gso_encapsulated", "encapsulated", "decapsulated")}
    up = {k: after["ports"]["255"][k] - before["ports"]["255"][k] for k in ("tx_bytes", "rx_bytes")}
    # The 20 MB crossed n1's uplink (out for a -> c, in for c -> b) in super-frames,
    # not in MTU-sized segments: far fewer frames than 20 MB / 1400 B, most of them GSO.
    if src == "a":
        assert up["tx_bytes"] >= 20_000_000, up
        assert 0 < ov["encapsulated"] < 20_000_000 / 1400 / 2, ov
        assert ov["gso_encapsulated"] >= ov["encapsulated"] // 2, ov
    else:
        assert up["rx_bytes"] >= 20_000_000, up
        assert 0 < ov["decapsulated"] < 20_000_000 / 1400 / 2, ov


def test_udp_across_nodes(ov):
    st, _ = ov
    srv = spawn_in_pod(st, "c", UDP_SERVER, 7102, 200)
    try:
        wait_listening(st, "c", 7102, "udp")
        r = py_in_pod(st, "a", UDP_CLIENT, pod_ip(st, "c"), 7102, 200, timeout=30)
        out, _ = srv.communicate(timeout=20)
    finally:
        srv.kill()
    assert int(out) == 200 and int(r.stdout) == 200


def test_path_mtu_discovery_through_the_overlay(ov):
    """A DF packet too big for the overlay (a pod whose eth0 says 1500 where
    VXLAN leaves 1450) is dropped as too_big and answered by the gateway with
    ICMP fragmentation needed carrying 1450; the pod's kernel learns the path
    MTU (route cache), refuses the size from then on, and 1450 crosses."""
    st, _ = ov
    dst, gw = pod_ip(st, "c"), st.nodes["n1"].gateway_ip
    in_pod(st, "a", "ip", "link", "set", "eth0", "mtu", "1500")
    try:
        before = agent(st, "n1", "counters")["drops"]["too_big"]
        r = in_pod(st, "a", "ping", "-M", "do", "-s", "1472", "-c", "1", "-W", "2", dst, check=False)
        assert r.returncode != 0
        assert re.search(rf"From {re.escape(gw)} icmp_seq=1 Frag needed and DF set \(mtu = 1450\)", r.stdout), r.stdout
        assert agent(st, "n1", "counters")["drops"]["too_big"] - before == 1
        assert "mtu 1450" in in_pod(st, "a", "ip", "route", "get", dst).stdout          # learnt
        r = in_pod(st, "a", "ping", "-M", "do", "-s", "1472", "-c", "1", "-W", "2", dst, check=False)
        assert r.returncode != 0 and "message too long, mtu=1450" in r.stdout + r.stderr   # refused locally now
        assert agent(st, "n1", "counters")["drops"]["too_big"] - before == 1               # never sent
        r = in_pod(st, "a", "ping", "-M", "do", "-s", str(1450 - 28), "-c", "2", "-i", "0.2", "-W", "2", dst)
        assert "2 received" in r.stdout
    finally:
        in_pod(st, "a", "ip", "link", "set", "eth0", "mtu", "1450")
        in_pod(st, "a", "ip", "route", "flush", "cache")


def test_routes_command(ov):
    st, k = ov
    routes = {r["name"]: r for r in json.loads(podnet("routes", "n1", "-o", "json").stdout)}
    assert routes["n2"]["cidr"] == st.nodes["n2"].subnet
    assert routes["n2"]["vtep"] == "172.30.240.2" and routes["n2"]["inner_mac"] == st.nodes["n2"].gateway_mac
    assert routes["k1"] == dict(routes["k1"], cidr=K_CIDR, vtep=K_VTEP, inner_mac=k.vtep_mac, vni=1)
    assert "POD CIDR" in podnet("routes", "n2").stdout


def test_interop_with_linux_vxlan_node_both_ways(ov):
    st, k = ov
    kpod = k.pods[0]
    r = in_pod(st, "a", "ping", "-c", "3", "-i", "0.2", "-W", "2", kpod["ip"])
    assert "3 received" in r.stdout
    r = k.exec(0, "ping", "-c", "3", "-i", "0.2", "-W", "2", pod_ip(st, "c"))
    assert "3 received" in r.stdout
    # TCP, podnet pod -> kernel pod
    srv = k.popen(0, sys.executable, "-c", TCP_SERVER, 7103, text=True)
    try:
        r = py_in_pod(st, "b", TCP_CLIENT, kpod["ip"], 7103, 8_000_000, timeout=40)
        sent, echoed = r.stdout.split()
        assert sent == echoed
    finally:
        srv.kill()
        srv.wait()
    # TCP, kernel pod -> podnet pod
    srv = spawn_in_pod(st, "c", TCP_SERVER, 7104)
    try:
        r = k.exec(0, sys.executable, "-c", TCP_CLIENT, pod_ip(st, "c"), 7104, 8_000_000, timeout=40)
        sent, echoed = r.stdout.split()
        assert sent == echoed
    finally:
        srv.kill()


def test_fabric_capture_dissects_as_vxlan(ov):
    """Echo requests from pod a (sent with dataplane.testing) to c, and c's
    replies, as the nodes put them on the fabric (captured at each uplink):
    every outer field of RFC 7348 VXLAN between the two VTEPs (expect_vxlan),
    VNI 1, and inside the pods' packets routed by the sending node's gateway
    (from its MAC to the other gateway's, TTL one less)."""
    from scapy.layers.inet import ICMP, IP
    from scapy.layers.vxlan import VXLAN
    st, _ = ov
    a, c = st.live.pod("a"), st.live.pod("c")
    n1, n2 = st.live.node("n1"), st.live.node("n2")
    reqs = echo_requests(a, c.ip, 4)
    with n1.uplink.capture("udp port 4789") as out1, n2.uplink.capture("udp port 4789") as out2:
        send_and_expect(a, reqs, c)
        there = wait_marked(out1, reqs, 4)
        back = wait_marked(out2, reqs, 4)
    for p, req in zip(there, reqs):
        assert p.haslayer(VXLAN) and p[VXLAN].vni == 1 and p[VXLAN].flags == 0x08
        inner = expect_vxlan(p, n1, n2, vni=1)
        expect_routed(inner, req, src_mac=n1.gateway_mac, dst_mac=n2.gateway_mac)
    for p in back:
        assert p.haslayer(VXLAN) and p[VXLAN].vni == 1 and p[VXLAN].flags == 0x08
        inner = expect_vxlan(p, n2, n1, vni=1)
        assert (inner.src, inner.dst) == (n2.gateway_mac, n1.gateway_mac)
        assert (inner[IP].src, inner[IP].dst, inner[IP].ttl, inner[ICMP].type) == (c.ip, a.ip, 63, 0)


def test_node_remove_and_add_live(ov):
    st, k = ov
    podnet("node", "remove", "k1")
    assert "k1" not in {r["name"] for r in json.loads(podnet("routes", "n1", "-o", "json").stdout)}
    before = agent(st, "n1", "counters")["drops"]["no_route"]
    r = in_pod(st, "a", "ping", "-c", "1", "-W", "1", k.pods[0]["ip"], check=False)
    assert r.returncode != 0
    assert agent(st, "n1", "counters")["drops"]["no_route"] - before == 1     # the echo request, dropped
    podnet("node", "add", "k1", "--pod-cidr", K_CIDR, "--vtep", K_VTEP, "--vtep-mac", k.vtep_mac)
    r = in_pod(st, "a", "ping", "-c", "2", "-i", "0.2", "-W", "2", k.pods[0]["ip"])
    assert "2 received" in r.stdout


@pytest.mark.parametrize("args,msg", [
    (["k2", "--pod-cidr", "10.246.50.0/24", "--vtep", "10.1.1.1"], "not on the fabric"),
    (["k2", "--pod-cidr", "10.246.1.0/24", "--vtep", "172.30.240.101"], "overlaps"),
    (["k2", "--pod-cidr", "10.246.50.0/33", "--vtep", "172.30.240.101"], "node add"),
    (["k2", "--pod-cidr", "10.246.50.0/24", "--vtep", "172.30.240.101", "--vtep-mac", "zz"], "MAC"),
    (["n1", "--pod-cidr", "10.246.50.0/24", "--vtep", "172.30.240.101"], "podnet node"),
])
def test_bad_node_add_changes_nothing(ov, args, msg):
    st, _ = ov
    before = {n: agent(st, n, "routes") for n in st.nodes}
    r = podnet("node", "add", *args, check=False)
    assert r.returncode == 1 and msg in r.stderr, r.stderr
    assert {n: agent(st, n, "routes") for n in st.nodes} == before
