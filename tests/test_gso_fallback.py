"""The uplink's GSO path, decided when the agent opens its TAPs
(Agent.setup_uplink): if the kernel refuses the UDP-tunnel GSO offload bits
on the uplink TAP, the agent falls back to a 12-byte virtio-net header with
checksum offload only there, gives the pods' TAPs no TSO (they send
MTU-sized frames), and reports gso_path "mtu-frames"; encapsulated frames
still leave correctly. The refusal is injected (TUNSETOFFLOAD answered
EINVAL when it carries the tunnel bits, as an older kernel does); the
namespaces, TAPs and fabric bridge are real. The agent runs in this
process, set up from inside a node namespace this test made; frames are
sent from the pod's eth0 and caught on the fabric with dataplane.testing's
Endpoint (the agent's loop pumped meanwhile), the VXLAN frame checked by
expect_vxlan."""
import array
import errno
import fcntl
import socket
import struct
import subprocess
import time

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.layers.vxlan import VXLAN

import tap.device as device
from conftest import require_root
from dataplane.testing import Endpoint, NodeInfo, expect_vxlan, mark, markers_in

PREFIX = "pnimgso"                  # namespaces of this file only
GW = {"ip": "10.244.0.1", "mac": "0a:58:0a:f4:00:01", "subnet": "10.244.0.0/24"}
POD_IP, POD_MAC = "10.244.0.2", "0a:58:0a:f4:00:02"
NODE_IP, NODE_MAC = "172.30.250.1", "0a:5a:ac:1e:fa:01"
STATIC_VTEP, STATIC_VTEP_MAC = "172.30.250.2", "0a:5a:ac:1e:fa:02"
ARP_VTEP = "172.30.250.3"          # no MAC given: asked by ARP at start-up
UPLINK_IF = "pnimgsoup"
N1 = NodeInfo("n1", 0, GW["subnet"], GW["ip"], GW["mac"], NODE_IP, NODE_MAC)                # this node
N2 = NodeInfo("n2", 1, "10.244.1.0/24", "10.244.1.1", "0a:58:0a:f4:01:01", STATIC_VTEP, STATIC_VTEP_MAC)
ETHTOOL_GTSO, SIOCETHTOOL = 0x1e, 0x8946


def sh(*cmd):
    subprocess.run(cmd, check=True, capture_output=True, timeout=20)


def tso_on(netns, ifname):
    """The kernel's own view (ETHTOOL_GTSO) of a device in netns."""
    with device.in_netns(netns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        buf = array.array("B", struct.pack("II", ETHTOOL_GTSO, 0))
        fcntl.ioctl(s, SIOCETHTOOL, struct.pack("16sP", ifname.encode(), buf.buffer_info()[0]))
        return bool(struct.unpack("II", buf)[1])
    finally:
        s.close()


def pump(agent, cap, want, timeout=5.0):
    """The first frame a dataplane.testing Capture has caught for which
    want(Ether) holds, running the agent's loop meanwhile (it runs in this
    process: nothing else moves its frames); bounded in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if agent is not None:
            agent.io.poll(20)
        for e in cap.wait(timeout=0 if agent is not None else 0.1):
            if want(e):
                return e
    raise AssertionError(f"expected frame not seen among {len(cap.raw)} caught")


@pytest.fixture
def namespaces(tmp_path):
    require_root()
    names = {k: f"{PREFIX}-{k}" for k in ("node", "pod", "fabric")}
    for ns in names.values():
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)      # a crashed earlier run
    try:
        for ns in names.values():
            sh("ip", "netns", "add", ns)
        fab = ["ip", "netns", "exec", names["fabric"]]
        sh(*fab, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
        sh(*fab, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
        sh(*fab, "ip", "link", "add", "br-fabric", "type", "bridge")
        sh(*fab, "ip", "link", "add", "pnimtap0", "type", "veth", "peer", "name", "pnimtap1")
        sh(*fab, "ip", "link", "set", "pnimtap0", "master", "br-fabric")
        for dev in ("br-fabric", "pnimtap0", "pnimtap1"):
            sh(*fab, "ip", "link", "set", dev, "up")
        yield names
    finally:
        for ns in names.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def agent_config(tmp_path, names, vnet=True):
    return {
        "node": "n1", "cluster": PREFIX, "netns": names["node"], "socket": str(tmp_path / "n1.sock"),
        "vnet": vnet, "burst": 64, "gateway": GW,
        "pods": [{"name": "p1", "netns": names["pod"], "ip": POD_IP, "mac": POD_MAC, "prefixlen": 24,
                  "mtu": 1450}],
        "uplink": {"fabric_netns": names["fabric"], "ifname": UPLINK_IF, "bridge": "br-fabric", "mtu": 1500,
                   "ip": NODE_IP, "mac": NODE_MAC, "vni": 1, "port": 4789},
        "routes": [{"name": "n2", "cidr": N2.subnet, "vtep": STATIC_VTEP, "inner_mac": N2.gateway_mac,
                    "vtep_mac": STATIC_VTEP_MAC},
                   {"name": "n3", "cidr": "10.244.2.0/24", "vtep": ARP_VTEP, "inner_mac": "0a:58:0a:f4:02:01"}],
    }


@pytest.mark.parametrize("kernel", ["refuses-tunnel-gso", "takes-tunnel-gso", "plain"])
def test_uplink_gso_path_and_pod_offloads(tmp_path, namespaces, monkeypatch, kernel):
    from dataplane.agent import UPLINK_PORT, Agent
    asked = []
    real_ioctl = fcntl.ioctl

    def ioctl(fd, request, arg=0, *rest):
        if request == device.TUNSETOFFLOAD:
            asked.append(arg)
            if kernel == "refuses-tunnel-gso" and arg & (device.TUN_F_UDP_TUNNEL_GSO | device.TUN_F_UDP_TUNNEL_GSO_CSUM):
                raise OSError(errno.EINVAL, "Invalid argument")
        return real_ioctl(fd, request, arg, *rest)
    monkeypatch.setattr(device.fcntl, "ioctl", ioctl)

    # the fabric's end of the bridge: what the uplink puts on the fabric arrives here
    fabric = Endpoint(namespaces["fabric"], "pnimtap1", 1500, name="fabric").capture()
    agent = Agent(agent_config(tmp_path, namespaces, vnet=kernel != "plain"))
    try:
        with device.in_netns(namespaces["node"]):
            agent.setup()
        refused = kernel != "takes-tunnel-gso"
        st = agent.status()
        up = agent.uplink_tap
        if kernel == "plain":                                           # `podnet up --plain`: no vnet headers
            assert asked == [] and st["gso_path"] == "plain" and st["overlay"]["gso"] == "none"
            assert (up.vnet_len, up.offloads, agent.dp.port_vnet(UPLINK_PORT)) == (0, 0, 0)
            assert agent.taps[0].offloads == st["offloads"] == 0
        else:
            assert asked[0] == device.UPLINK_OFFLOADS                      # the tunnel bits were asked for
        if kernel == "refuses-tunnel-gso":
            assert st["gso_path"] == "mtu-frames" and st["overlay"]["gso"] == "none"
            assert (up.vnet_len, up.offloads) == (12, device.TUN_F_CSUM)  # checksum offload only
            assert agent.dp.port_vnet(UPLINK_PORT) == 12
            assert agent.taps[0].offloads == st["offloads"] == device.TUN_F_CSUM      # pods: no TSO
        elif kernel == "takes-tunnel-gso":
            assert st["gso_path"] == "udp-tunnel-gso" and st["overlay"]["gso"] == "udp-tunnel-gso"
            assert (up.vnet_len, up.offloads) == (24, device.UPLINK_OFFLOADS)
            assert agent.dp.port_vnet(UPLINK_PORT) == 24
            assert agent.taps[0].offloads == st["offloads"] == device.POD_OFFLOADS
        # what the kernel itself now does with the pod's eth0 and the uplink
        assert tso_on(namespaces["pod"], "eth0") is not refused
        assert tso_on(namespaces["fabric"], UPLINK_IF) is not refused

        # start-up: a who-has for the VTEP without a MAC, from our underlay address
        a = pump(None, fabric, lambda e: e.haslayer(ARP))[ARP]
        assert (a.op, a.hwsrc, a.psrc, a.pdst) == (1, NODE_MAC, NODE_IP, ARP_VTEP)

        # a pod's frame to the other node leaves the uplink as VXLAN, whole (sent from the pod's eth0)
        pod = Endpoint(namespaces["pod"], "eth0", 1450, name="p1")
        try:
            sent, m = mark(Ether(src=POD_MAC, dst=GW["mac"]) / IP(src=POD_IP, dst="10.244.1.2", ttl=64)
                           / UDP(sport=4000, dport=5000) / (b"m" * 1000))
            pod.send(sent)
            e = pump(agent, fabric, lambda e: e.haslayer(VXLAN) and m in markers_in(e))
        finally:
            pod.close()
        assert (e.src, e.dst, e[IP].src, e[IP].dst, e[UDP].dport, e[VXLAN].vni) == \
            (NODE_MAC, STATIC_VTEP_MAC, NODE_IP, STATIC_VTEP, 4789, 1)
        # every outer field, and the inner frame byte for byte: the pod's, routed to n2's gateway
        routed = IP(bytes(sent[IP]))
        routed.ttl = 63
        del routed.chksum
        inner = expect_vxlan(e, N1, N2, vni=1, inner=Ether(src=GW["mac"], dst=N2.gateway_mac) / IP(bytes(routed)))
        assert (inner[IP].src, inner[IP].dst, inner[IP].ttl, bytes(inner[UDP].payload)) == \
            (POD_IP, "10.244.1.2", 63, b"m" * 1000 + m)
        assert agent.dp.counters()["overlay"]["encapsulated"] == 1
    finally:
        fabric.close()
        agent.close()
        for t in list(agent.taps.values()) + [getattr(agent, "uplink_tap", None)]:
            if t is not None:
                t.destroy()
