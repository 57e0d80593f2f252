"""The flannel-style kernel node (tests/kernel_node.py): two nodes on a fabric
bridge, peered as flanneld would, pods reaching each other across the
overlay, standard VXLAN on the wire, and peers that can be taken away.
Needs root: skips on a developer box without it, fails when CI=true."""
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import IN_CI
from kernel_node import Fabric, KernelNode, netns_list, run

PREFIX = "pnkt"
FABRIC_NS = f"{PREFIX}-fabric"
VNI, PORT = 1, 4789
N1 = dict(underlay_ip="172.30.251.1", pod_cidr="10.248.1.0/24")
N2 = dict(underlay_ip="172.30.251.2", pod_cidr="10.248.2.0/24")


def require_root():
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("needs root (CI=true: netns tests must run)")
        pytest.skip("needs root")


def ours():
    return {n for n in netns_list() if n.startswith(PREFIX + "-")}


@pytest.fixture(scope="module")
def fabric():
    require_root()
    with Fabric(FABRIC_NS, "br-fabric", mtu=1500) as fab:
        yield fab


@pytest.fixture(scope="module")
def nodes(fabric):
    common = dict(fabric_ns=fabric.ns, fabric_bridge=fabric.bridge, underlay_prefixlen=24,
                  vni=VNI, port=PORT, fabric_mtu=1500, pods=2, prefix=PREFIX)
    with KernelNode("n1", **common, **N1) as n1, KernelNode("n2", **common, **N2) as n2:
        n1.peer_with(n2)
        n2.peer_with(n1)
        yield n1, n2


def ping(node, pod, ip, count=3, check=True):
    r = node.exec(pod, "ping", "-c", str(count), "-i", "0.2", "-W", "2", ip, timeout=15, check=False)
    if check:
        assert r.returncode == 0, f"ping {ip} from {node.name}/{pod}:\n{r.stdout}\n{r.stderr}"
    return r


# ---- what was built ------------------------------------------------------------

def test_node_is_built_like_flannel(nodes):
    n1, n2 = nodes
    assert (n1.netns, n2.netns) == ("pnkt-n1", "pnkt-n2")
    assert [p["netns"] for p in n1.pods] == ["pnkt-n1-p0", "pnkt-n1-p1"]
    assert [p["ip"] for p in n2.pods] == ["10.248.2.2", "10.248.2.3"]
    assert n1.uplink != n2.uplink and max(len(n1.uplink), len(n2.uplink)) <= 15
    assert n1.gateway_ip == "10.248.1.1" and n1.vtep_ip == "172.30.251.1"
    for mac in (n1.vtep_mac, n1.underlay_mac, n1.gateway_mac, *(p["mac"] for p in n1.pods)):
        assert len(mac.split(":")) == 6
    vx = n1.node_exec("ip", "-d", "link", "show", "flannel.1").stdout
    assert f"vxlan id {VNI} local 172.30.251.1 dev eth0" in vx
    assert f"dstport {PORT}" in vx and "nolearning" in vx and "mtu 1450" in vx
    assert n1.vtep_mac in vx
    info = n1.vxlan_info()
    assert (info["id"], info["port"], info["local"], info["learning"]) == (VNI, PORT, "172.30.251.1", False)
    assert info["udp_csum"] is True   # the kernel default, as flannel leaves it
    br = n1.node_exec("ip", "-o", "addr", "show", "cni0").stdout
    assert "10.248.1.1/24" in br
    assert n1.gateway_mac in n1.node_exec("ip", "link", "show", "cni0").stdout
    eth0 = n1.exec(0, "ip", "-d", "link", "show", "eth0").stdout
    assert "mtu 1450" in eth0 and n1.pods[0]["mac"] in eth0
    assert "default via 10.248.1.1" in n1.exec(1, "ip", "route").stdout
    assert n1.node_exec("sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"
    # what add_peer installed for n2
    assert "10.248.2.0/24 via 10.248.2.0 dev flannel.1 onlink" in n1.node_exec("ip", "route").stdout
    neigh = n1.node_exec("ip", "neigh", "show", "dev", "flannel.1").stdout
    assert f"10.248.2.0 lladdr {n2.vtep_mac} PERMANENT" in neigh
    fdb = n1.node_exec("bridge", "fdb", "show", "dev", "flannel.1").stdout
    assert f"{n2.vtep_mac} dst 172.30.251.2 self permanent" in fdb


# ---- traffic -------------------------------------------------------------------

def test_ping_across_nodes_both_ways(nodes):
    n1, n2 = nodes
    ping(n1, 0, n2.pods[0]["ip"])
    ping(n2, 1, n1.pods[1]["ip"])
    ping(n2, 0, n1.pods[0]["ip"])
    # routed twice (node, node): TTL 64 - 2
    assert "ttl=62" in ping(n1, 1, n2.pods[1]["ip"], count=1).stdout
    # full-MTU packet, DF set: 1450 - 28 bytes of ICMP payload cross unfragmented
    r = n1.exec(0, "ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1422", n2.pods[0]["ip"], timeout=15, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


SERVER = """
import hashlib, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(1); s.settimeout(20)
print("ready", flush=True)
c, _ = s.accept(); c.settimeout(20)
h, n = hashlib.sha256(), 0
while True:
    b = c.recv(1 << 16)
    if not b:
        break
    h.update(b); n += len(b)
c.sendall(b"ok"); c.close()
print(n, h.hexdigest(), flush=True)
"""

CLIENT = """
import hashlib, random, socket, sys
data = random.Random(7).randbytes(int(sys.argv[3]))
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
c.sendall(data); c.shutdown(socket.SHUT_WR)
assert c.recv(2) == b"ok"
print(len(data), hashlib.sha256(data).hexdigest(), flush=True)
"""


@pytest.mark.parametrize("src,dst", [((0, 0), (1, 1)), ((1, 0), (0, 1))], ids=["n1->n2", "n2->n1"])
def test_tcp_transfer_crosses_intact(nodes, src, dst):
    size, port = 6 * 1024 * 1024, 5401
    client_node, client_pod = nodes[src[0]], src[1]
    server_node, server_pod = nodes[dst[0]], dst[1]
    srv = server_node.popen(server_pod, sys.executable, "-c", textwrap.dedent(SERVER), port, text=True)
    try:
        assert srv.stdout.readline().strip() == "ready", srv.stderr.read()
        cli = client_node.exec(client_pod, sys.executable, "-c", textwrap.dedent(CLIENT),
                               server_node.pods[server_pod]["ip"], port, size, timeout=30, check=False)
        assert cli.returncode == 0, cli.stderr
        out, err = srv.communicate(timeout=25)
        assert srv.returncode == 0, err
        assert out.split() == cli.stdout.split()
        assert out.split()[0] == str(size)
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait(timeout=5)


def test_fabric_carries_standard_vxlan(nodes, fabric, tmp_path):
    from scapy.all import IP, UDP, Ether, rdpcap
    from scapy.layers.vxlan import VXLAN
    n1, n2 = nodes
    pcap = tmp_path / "fabric.pcap"
    count = 6   # 3 echo requests + 3 replies on n1's uplink
    cap = subprocess.Popen(["ip", "netns", "exec", fabric.ns, "tcpdump", "-i", n1.uplink, "-n", "-U",
                            "-c", str(count), "-w", str(pcap), "udp", "port", str(PORT)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert "listening on" in cap.stderr.readline()
        ping(n1, 0, n2.pods[1]["ip"], count=3)
        cap.wait(timeout=10)
    finally:
        if cap.poll() is None:
            cap.terminate()
            cap.wait(timeout=5)
    pkts = rdpcap(str(pcap))
    assert len(pkts) == count
    seen = set()
    for p in pkts:
        assert p.haslayer(VXLAN), p.summary()
        outer, udp, vx = p[IP], p[UDP], p[VXLAN]
        assert udp.dport == PORT and vx.vni == VNI and vx.flags & 0x08
        inner_eth = vx.payload
        assert isinstance(inner_eth, Ether)
        inner = inner_eth[IP]
        seen.add((outer.src, outer.dst, inner.src, inner.dst))
        # flannel addresses inner frames to the remote VTEP's own MAC
        if outer.dst == n2.vtep_ip:
            assert inner_eth.dst == n2.vtep_mac and inner_eth.src == n1.vtep_mac
            assert p[Ether].dst == n2.underlay_mac and p[Ether].src == n1.underlay_mac
        else:
            assert inner_eth.dst == n1.vtep_mac and inner_eth.src == n2.vtep_mac
    a, b = n1.pods[0]["ip"], n2.pods[1]["ip"]
    assert seen == {(n1.vtep_ip, n2.vtep_ip, a, b), (n2.vtep_ip, n1.vtep_ip, b, a)}


# ---- peers -------------------------------------------------------------------------

def test_remove_peer_takes_the_route_away(nodes):
    n1, n2 = nodes
    target = n2.pods[0]["ip"]
    try:
        n1.remove_peer(n2.pod_cidr, n2.vtep_ip, n2.vtep_mac)
        assert n2.pod_cidr not in n1.node_exec("ip", "route").stdout
        assert n2.vtep_mac not in n1.node_exec("bridge", "fdb", "show", "dev", "flannel.1").stdout
        r = n1.exec(0, "ping", "-c", "1", "-W", "2", target, timeout=10, check=False)
        assert r.returncode != 0
        # the node has no route: the pod hears so from its gateway (ICMP unreachable),
        # not by its ping timing out
        assert "Unreachable" in r.stdout, r.stdout
    finally:
        n1.peer_with(n2)
    ping(n1, 0, target)


def test_static_underlay_arp_peer(nodes):
    """add_peer with underlay_mac pins the VTEP's ARP entry (no ARP on the fabric)."""
    n1, n2 = nodes
    try:
        n1.node_exec("ip", "neigh", "flush", "dev", "eth0")
        n1.add_peer(n2.pod_cidr, n2.vtep_ip, n2.vtep_mac, n2.underlay_mac)
        neigh = n1.node_exec("ip", "neigh", "show", n2.vtep_ip, "dev", "eth0").stdout
        assert f"lladdr {n2.underlay_mac} PERMANENT" in neigh
        ping(n1, 1, n2.pods[1]["ip"], count=2)
    finally:
        n1.remove_peer(n2.pod_cidr, n2.vtep_ip, n2.vtep_mac)
        n1.peer_with(n2)
    assert "PERMANENT" not in n1.node_exec("ip", "neigh", "show", n2.vtep_ip, "dev", "eth0").stdout
    ping(n1, 1, n2.pods[1]["ip"], count=1)


# ---- clean-up ------------------------------------------------------------------------

def test_failed_build_leaves_nothing(fabric):
    before = ours()
    node = KernelNode("bad", fabric_ns=fabric.ns, fabric_bridge="no-such-br", underlay_ip="172.30.251.9",
                      underlay_prefixlen=24, pod_cidr="10.248.9.0/24", pods=1, prefix=f"{PREFIX}-e")
    with pytest.raises(subprocess.CalledProcessError):
        with node:
            pass
    assert ours() == before
    assert node.uplink not in run("ip", "-n", fabric.ns, "-o", "link").stdout


def test_exit_deletes_everything(fabric):
    before = ours()
    with KernelNode("tmp", fabric_ns=fabric.ns, fabric_bridge=fabric.bridge, underlay_ip="172.30.251.8",
                    underlay_prefixlen=24, pod_cidr="10.248.8.0/24", pods=1, prefix=f"{PREFIX}-x",
                    udpcsum=False) as node:
        assert node.vxlan_info()["udp_csum"] is False
        made = ours() - before
        assert made == {"pnkt-x-tmp", "pnkt-x-tmp-p0"}
        assert node.uplink in run("ip", "-n", fabric.ns, "-o", "link").stdout
    assert ours() == before
    assert node.uplink not in run("ip", "-n", fabric.ns, "-o", "link").stdout
