"""`vxlanPort: 8472` (flannel's port) for real: the agents encapsulate to UDP
8472 on the fabric, nothing goes to 4789, and traffic crosses both ways."""
import json

import pytest

from netns_helpers import agent, in_pod, pod_ip, podnet, running_cluster, tcpdump

SPEC = """
cluster: {name: pnnx8472, podCIDR: 10.233.0.0/16, serviceCIDR: 10.90.0.0/16, fabricCIDR: 172.30.233.0/24,
          vxlanPort: 8472}
nodes: [{name: n1}, {name: n2}]
pods: [{name: a, node: n1}, {name: c, node: n2}]
"""


@pytest.fixture(scope="module")
def vx(tmp_path_factory):
    with running_cluster(tmp_path_factory.mktemp("vx"), SPEC) as st:
        yield st


def test_overlay_uses_udp_8472_on_the_fabric(vx, tmp_path):
    from scapy.layers.inet import IP, UDP
    from scapy.layers.vxlan import VXLAN
    from scapy.utils import rdpcap
    st = vx
    assert json.loads(podnet("status", "-o", "json").stdout)["vxlan_port"] == 8472
    assert [agent(st, n, "status")["overlay"]["udp_port"] for n in ("n1", "n2")] == [8472, 8472]
    before = {n: agent(st, n, "counters")["overlay"]["decapsulated"] for n in ("n1", "n2")}
    pcap = tmp_path / "fabric.pcap"
    # every UDP frame on the fabric (not just port 8472): one to 4789 would show
    with tcpdump(st.fabric["namespace"], "br-fabric", pcap, "-c", "6", "udp") as cap:
        r = in_pod(st, "a", "ping", "-c", "3", "-i", "0.2", "-W", "2", pod_ip(st, "c"))
        assert "3 received" in r.stdout
        cap.wait(timeout=15)
    pkts = rdpcap(str(pcap))
    assert len(pkts) == 6                                        # 3 requests, 3 replies
    for p in pkts:
        assert p[UDP].dport == 8472 and 49152 <= p[UDP].sport <= 65535
        assert p.haslayer(VXLAN) and p[VXLAN].vni == 1
        assert {p[IP].src, p[IP].dst} == {"172.30.233.1", "172.30.233.2"}
        assert {p[VXLAN].payload[IP].src, p[VXLAN].payload[IP].dst} == {pod_ip(st, "a"), pod_ip(st, "c")}
    after = {n: agent(st, n, "counters")["overlay"]["decapsulated"] for n in ("n1", "n2")}
    assert {n: after[n] - before[n] for n in after} == {"n1": 3, "n2": 3}   # each echo decapsulated once
