"""`vxlanPort: 8472` (flannel's port) for real: the agents encapsulate to UDP
8472 on the fabric, nothing goes to 4789, and traffic crosses both ways
(echo requests sent from a pod with dataplane.testing, every frame either
node puts on the fabric captured at its uplink)."""
import json

import pytest

from dataplane.testing import expect_vxlan, send_and_expect
from netns_helpers import agent, echo_requests, podnet, running_cluster, wait_marked

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


def test_overlay_uses_udp_8472_on_the_fabric(vx):
    from scapy.layers.inet import ICMP, IP, UDP
    st = vx
    assert json.loads(podnet("status", "-o", "json").stdout)["vxlan_port"] == 8472
    assert [agent(st, n, "status")["overlay"]["udp_port"] for n in ("n1", "n2")] == [8472, 8472]
    before = {n: agent(st, n, "counters")["overlay"]["decapsulated"] for n in ("n1", "n2")}
    a, c = st.live.pod("a"), st.live.pod("c")
    n1, n2 = st.live.node("n1"), st.live.node("n2")
    reqs = echo_requests(a, c.ip, 3)
    # every UDP frame either node puts on the fabric (not just port 8472): one to 4789 would show
    with n1.uplink.capture("udp") as out1, n2.uplink.capture("udp") as out2, a.capture("icmp") as back:
        send_and_expect(a, reqs, c)                              # the 3 requests reach c...
        replies = wait_marked(back, reqs, 3)                     # ...and its 3 echo replies reach a
        sent = {"n1": wait_marked(out1, reqs, 3), "n2": wait_marked(out2, reqs, 3)}
        caught = out1.frames + out2.frames
    assert [r[ICMP].type for r in replies] == [0, 0, 0]
    assert len(caught) == 6                                      # 3 requests, 3 replies: nothing else
    for p in caught:
        assert p[UDP].dport == 8472
    for node, peer in (("n1", n2), ("n2", n1)):
        for p in sent[node]:
            inner = expect_vxlan(p, st.live.node(node), peer, vni=1, dport=8472)   # sport 49152-65535
            want = (a.ip, c.ip) if node == "n1" else (c.ip, a.ip)
            assert (inner[IP].src, inner[IP].dst) == want
    after = {n: agent(st, n, "counters")["overlay"]["decapsulated"] for n in ("n1", "n2")}
    assert {n: after[n] - before[n] for n in after} == {"n1": 3, "n2": 3}   # each echo decapsulated once
