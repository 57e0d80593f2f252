"""Hard to break, for real: a pod forging its MAC or IP (scapy sendp inside
its namespace) is stopped by the agent's port guard and counted, while
ordinary traffic keeps flowing; VXLAN with a VNI the node does not serve is
counted; the agent's control socket is root-only and survives bad requests."""
import os
import stat
import subprocess
import sys
import textwrap
import time

import pytest

from netns_helpers import agent, in_pod, pod_ip, py_in_pod, running_cluster

SPEC = """
cluster: {name: pnhd, podCIDR: 10.238.0.0/16, serviceCIDR: 10.93.0.0/16, fabricCIDR: 172.30.243.0/24}
nodes: [{name: n1}, {name: n2}]
pods: [{name: a1, node: n1}, {name: b1, node: n1}, {name: a2, node: n2}]
"""
N = 5                                    # forged frames of each kind

FORGE = """
import sys
from scapy.all import ARP, IP, UDP, Ether, conf, get_if_hwaddr, sendp
conf.verb = 0
me_ip, b_mac, b_ip, gw_ip, n = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
me_mac = get_if_hwaddr("eth0")
frames = (
    # another source MAC (the classic FDB flood / impersonation)
    [Ether(src="0a:58:de:ad:be:%02x" % i, dst=b_mac) / IP(src=me_ip, dst=b_ip) / UDP(dport=9) / b"x" for i in range(n)]
    # our MAC, a neighbour's IP
    + [Ether(src=me_mac, dst=b_mac) / IP(src=b_ip, dst=b_ip) / UDP(dport=9) / b"x" for _ in range(n)]
    # gratuitous ARP: "the gateway is at my MAC" (would redirect b's traffic through us); target
    # MAC = sender MAC makes Linux take it as gratuitous and override a fresh entry (arp_is_garp)
    + [Ether(src=me_mac, dst="ff:ff:ff:ff:ff:ff") / ARP(op=2, hwsrc=me_mac, psrc=gw_ip, hwdst=me_mac,
                                                        pdst=gw_ip) for _ in range(n)]
)
sendp(frames, iface="eth0")
print(me_mac)
"""

SEND_RAW = """
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
for frame in sys.argv[1:]:
    s.send(bytes.fromhex(frame))
"""


def garp(mac, ip):
    """A gratuitous ARP reply "ip is at mac" (target = sender, as Linux's
    arp_is_garp wants it to override a fresh entry), as hex."""
    from scapy.layers.l2 import ARP, Ether
    return bytes(Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / ARP(op=2, hwsrc=mac, psrc=ip, hwdst=mac, pdst=ip)).hex()


VXLAN_FOREIGN_VNI = """
import sys
from scapy.all import IP, UDP, Ether, conf, sendp
from scapy.layers.vxlan import VXLAN
conf.verb = 0
node_mac, node_ip, gw_mac, pod_ip, n = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
inner = Ether(src="0a:58:0a:ee:09:01", dst=gw_mac) / IP(src="10.238.9.2", dst=pod_ip) / UDP(dport=9) / b"x"
sendp([Ether(dst=node_mac) / IP(src="172.30.243.200", dst=node_ip) / UDP(sport=50000, dport=4789)
       / VXLAN(vni=99) / inner for _ in range(n)], iface="br-fabric")
"""


@pytest.fixture(scope="module")
def hd(tmp_path_factory):
    with running_cluster(tmp_path_factory.mktemp("hd"), SPEC) as st:
        yield st



def mac_of(st, pod):
    return st.pods[pod].mac


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
    before = agent(st, "n1", "counters")["drops"]
    py_in_pod(st, "a1", FORGE, pod_ip(st, "a1"), mac_of(st, "b1"), pod_ip(st, "b1"), gw_ip, N)
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
    a1_mac = mac_of(st, "a1")
    assert ping(st, "b1", gw_ip) and neigh_mac(st, "b1", gw_ip) == gw_mac
    try:
        assert agent(st, "n1", "port_guard", port=port, on=False)["guarded"] is False
        assert {p["pod"]: p["guarded"] for p in agent(st, "n1", "status")["ports"]} == {"a1": False, "b1": True}
        before = agent(st, "n1", "counters")["drops"]["spoof_ip"]
        py_in_pod(st, "a1", SEND_RAW, *[garp(a1_mac, gw_ip)] * N)
        assert wait_neigh(st, "b1", gw_ip, a1_mac) == a1_mac                 # poisoned
        assert agent(st, "n1", "counters")["drops"]["spoof_ip"] == before
    finally:
        agent(st, "n1", "port_guard", port=port, on=True)
        in_pod(st, "b1", "ip", "neigh", "flush", "dev", "eth0")
    assert ping(st, "b1", gw_ip) and neigh_mac(st, "b1", gw_ip) == gw_mac     # b1 healed
    assert all(p["guarded"] for p in agent(st, "n1", "status")["ports"])
    before = agent(st, "n1", "counters")["drops"]["spoof_ip"]
    py_in_pod(st, "a1", SEND_RAW, *[garp(a1_mac, gw_ip)] * N)
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
    r = subprocess.run(["ip", "netns", "exec", st.fabric["namespace"], sys.executable, "-c",
                        textwrap.dedent(VXLAN_FOREIGN_VNI), n1.underlay_mac, n1.underlay_ip,
                        st.nodes["n1"].gateway_mac, pod_ip(st, "a1"), str(N)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
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
