"""Hard to break, for real: a pod forging its MAC or IP (frames sent from its
eth0 with dataplane.testing, none of which reaches its neighbour) is stopped by the agent's port guard and counted, while
ordinary traffic keeps flowing; VXLAN with a VNI the node does not serve is
counted; the agent's control socket is root-only and survives bad requests."""
import os
import stat
import time

import pytest

from dataplane.testing import send_and_assert_no_reply, send_and_expect
from netns_helpers import agent, in_pod, pod_ip, running_cluster

SPEC = """
cluster: {name: pnhd, podCIDR: 10.238.0.0/16, serviceCIDR: 10.93.0.0/16, fabricCIDR: 172.30.243.0/24}
nodes: [{name: n1}, {name: n2}]
pods: [{name: a1, node: n1}, {name: b1, node: n1}, {name: a2, node: n2}]
"""
N = 5                                    # forged frames of each kind
FOREIGN_MAC = "0a:5a:ac:1e:f3:c8"         # a host on the fabric no route names (at 172.30.243.200)


def forged(me_mac, me_ip, b_mac, b_ip, gw_ip, n=N):
    """The frames a pod forging its way in sends (each a packet of its own:
    send_and_expect gives each a marker of its own)."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    return (
        # another source MAC (the classic FDB flood / impersonation)
        [Ether(src="0a:58:de:ad:be:%02x" % i, dst=b_mac) / IP(src=me_ip, dst=b_ip) / UDP(dport=9) / b"x"
         for i in range(n)]
        # our MAC, a neighbour's IP
        + [Ether(src=me_mac, dst=b_mac) / IP(src=b_ip, dst=b_ip) / UDP(dport=9) / b"x" for _ in range(n)]
        # gratuitous ARP: "the gateway is at my MAC" (would redirect b's traffic through us)
        + garps(me_mac, gw_ip, n))


def garps(mac, ip, n=N):
    """n gratuitous ARP replies "ip is at mac" (target = sender, as Linux's
    arp_is_garp wants it to override a fresh entry)."""
    from scapy.layers.l2 import ARP, Ether
    return [Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / ARP(op=2, hwsrc=mac, psrc=ip, hwdst=mac, pdst=ip)
            for _ in range(n)]


def foreign_vni(node, gw_mac, pod_ip, n=N):
    """VXLAN frames to node with VNI 99 (the cluster's is 1) from a fabric
    host no route names, carrying a frame for pod_ip."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.layers.vxlan import VXLAN
    return [Ether(src=FOREIGN_MAC, dst=node.underlay_mac) / IP(src="172.30.243.200", dst=node.underlay_ip)
            / UDP(sport=50000, dport=4789) / VXLAN(vni=99)
            / Ether(src="0a:58:0a:ee:09:01", dst=gw_mac) / IP(src="10.238.9.2", dst=pod_ip) / UDP(dport=9) / b"x"
            for _ in range(n)]


@pytest.fixture(scope="module")
def hd(tmp_path_factory):
    with running_cluster(tmp_path_factory.mktemp("hd"), SPEC) as st:
        yield st



def drops_reach(st, node, want, timeout=10.0):
    """The node's drop counters once they reach want (the agent works
    asynchronously); bounded in time."""
    deadline = time.monotonic() + timeout
    while True:
        d = agent(st, node, "counters")["drops"]
        if all(d[k] >= v for k, v in want.items()) or time.monotonic() > deadline:
            return d
        time.sleep(0.1)


def ping(st, pod, dst):
    r = in_pod(st, pod, "ping", "-c", "3", "-i", "0.2", "-W", "2", dst, check=False)
    return "3 packets transmitted, 3 received" in r.stdout


def test_forged_frames_from_a_pod_are_dropped_and_counted(hd):
    st = hd
    gw_ip, gw_mac = st.nodes["n1"].gateway_ip, st.nodes["n1"].gateway_mac
    assert [p["pod"] for p in agent(st, "n1", "status")["ports"] if p["guarded"]] == ["a1", "b1"]
    assert ping(st, "b1", gw_ip)                                     # b1 knows the real gateway MAC
    a1, b1 = st.live.pod("a1"), st.live.pod("b1")
    before = agent(st, "n1", "counters")["drops"]
    # sent from a1's eth0; none of them reaches b1
    send_and_assert_no_reply(a1, forged(a1.mac, a1.ip, b1.mac, b1.ip, gw_ip), b1)
    after = drops_reach(st, "n1", timeout=2, want={"spoof_mac": before["spoof_mac"] + N, "spoof_ip": before["spoof_ip"] + 2 * N})
    assert after["spoof_mac"] - before["spoof_mac"] == N
    assert after["spoof_ip"] - before["spoof_ip"] == 2 * N           # forged IPv4 source and ARP sender
    fdb = agent(st, "n1", "fdb")
    assert not [e for e in fdb if e["mac"].startswith("0a:58:de:ad:be")]    # nothing learned
    neigh = in_pod(st, "b1", "ip", "neigh", "show", gw_ip).stdout
    assert gw_mac in neigh                                           # b1's ARP cache not poisoned
    # the pods' own traffic is untouched, on the node and across the overlay
    assert ping(st, "a1", pod_ip(st, "b1"))
    assert ping(st, "a1", pod_ip(st, "a2"))
    assert ping(st, "b1", pod_ip(st, "a2"))


def neigh_mac(st, pod, ip):
    """The MAC in pod's ARP cache for ip, or None."""
    out = in_pod(st, pod, "ip", "neigh", "show", ip, "dev", "eth0").stdout.split()
    return out[out.index("lladdr") + 1] if "lladdr" in out else None


def wait_neigh(st, pod, ip, mac, timeout=5.0):
    deadline = time.monotonic() + timeout
    while neigh_mac(st, pod, ip) != mac and time.monotonic() < deadline:
        time.sleep(0.05)
    return neigh_mac(st, pod, ip)


def test_gratuitous_arp_for_the_gateway_poisons_a_neighbour_only_without_the_guard(hd):
    """The attack the guard exists for: a1 announces the gateway's IP at its
    own MAC. Unguarded, b1's ARP cache takes it (b1's traffic to the gateway
    would go to a1); guarded, the frames are dropped as spoof_ip."""
    st = hd
    gw_ip, gw_mac = st.nodes["n1"].gateway_ip, st.nodes["n1"].gateway_mac
    [port] = [p["port"] for p in agent(st, "n1", "status")["ports"] if p["pod"] == "a1"]
    a1, b1 = st.live.pod("a1"), st.live.pod("b1")
    a1_mac = a1.mac
    assert ping(st, "b1", gw_ip) and neigh_mac(st, "b1", gw_ip) == gw_mac
    try:
        assert agent(st, "n1", "port_guard", port=port, on=False)["guarded"] is False
        assert {p["pod"]: p["guarded"] for p in agent(st, "n1", "status")["ports"]} == {"a1": False, "b1": True}
        before = agent(st, "n1", "counters")["drops"]["spoof_ip"]
        send_and_expect(a1, garps(a1_mac, gw_ip), b1)                       # each flooded to b1 once
        assert wait_neigh(st, "b1", gw_ip, a1_mac) == a1_mac                 # poisoned
        assert agent(st, "n1", "counters")["drops"]["spoof_ip"] == before
    finally:
        agent(st, "n1", "port_guard", port=port, on=True)
        in_pod(st, "b1", "ip", "neigh", "flush", "dev", "eth0")
    assert ping(st, "b1", gw_ip) and neigh_mac(st, "b1", gw_ip) == gw_mac     # b1 healed
    assert all(p["guarded"] for p in agent(st, "n1", "status")["ports"])
    before = agent(st, "n1", "counters")["drops"]["spoof_ip"]
    send_and_assert_no_reply(a1, garps(a1_mac, gw_ip), b1)
    after = drops_reach(st, "n1", {"spoof_ip": before + N})["spoof_ip"]
    assert after - before == N                                             # every one dropped, counted
    assert neigh_mac(st, "b1", gw_ip) == gw_mac                             # and b1 never heard them


@pytest.mark.parametrize("args,msg", [
    ({"port": 99, "on": False}, "port must be one of this node's pod ports"),
    ({"port": 0, "on": "no"}, "on must be true or false"),
    ({"port": 0, "on": False, "pod": "a1"}, "unknown key 'pod'"),
])
def test_port_guard_op_is_validated(hd, args, msg):
    from dataplane.control import ControlError, request
    with pytest.raises(ControlError, match=msg):
        request(hd.nodes["n1"].socket, "port_guard", **args)
    assert all(p["guarded"] for p in agent(hd, "n1", "status")["ports"])


def test_vxlan_with_a_foreign_vni_is_counted(hd):
    st = hd
    n1 = st.nodes["n1"]
    before = agent(st, "n1", "counters")["drops"]["vxlan_vni"]
    # sent into n1 from the fabric (its uplink); nothing reaches a1
    send_and_assert_no_reply(st.live.node("n1").uplink, foreign_vni(n1, n1.gateway_mac, pod_ip(st, "a1")),
                             st.live.pod("a1"))
    after = drops_reach(st, "n1", {"vxlan_vni": before + N})["vxlan_vni"]
    assert after - before == N
    assert ping(st, "a2", pod_ip(st, "a1"))                           # the overlay still works


def test_control_socket_is_root_only_and_survives_bad_requests(hd):
    st = hd
    path = st.nodes["n1"].socket
    s = os.stat(path)
    assert stat.S_ISSOCK(s.st_mode) and stat.S_IMODE(s.st_mode) == 0o600 and s.st_uid == 0
    from dataplane.control import ControlError, request
    services, routes = agent(st, "n1", "services"), agent(st, "n1", "routes")
    for op, args, msg in [("nope", {}, "unknown operation"),
                          ("route_add", {"name": "x", "cidr": "10.238.0.0/24", "vtep": "172.30.243.9"}, "overlap"),
                          ("services_apply", {"upsert": [{"vip": "10.93.0.50", "port": 0}]}, "port")]:
        with pytest.raises(ControlError, match=msg):
            request(path, op, **args)
    assert agent(st, "n1", "services") == services and agent(st, "n1", "routes") == routes
    assert agent(st, "n1", "ping") == "pong"
