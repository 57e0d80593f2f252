"""The packet-testing toolkit against live clusters (root): the docs'
example file run by pytest as a user runs it (the plugin from the entry
point, nothing from this directory), pods' attributes as `podnet status`
reports them, send/capture/sniff with BPF and callable filters, a node's
uplink both ways, frames too long for a pod's MTU, two clusters of one spec
side by side, a user's own cluster left alone, teardown after a failing
test and after a failed up, and the CLI against a toolkit cluster."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw

from dataplane import netns
from dataplane.testing import (Cluster, FrameTooLong, PodnetTestError, expect_routed, expect_vxlan, marker,
                               send_and_assert_no_reply, send_and_expect)

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "docs" / "examples" / "test_podnet_packets.py"
SPEC = """
cluster: {name: pntk, podCIDR: 10.232.0.0/16, serviceCIDR: 10.91.0.0/16, fabricCIDR: 172.30.239.0/24}
nodes: [{name: n1}, {name: n2}]
pods: [{name: a, node: n1}, {name: b, node: n1}, {name: c, node: n2}]
"""


def ours(name):
    return [n for n in netns.listing() if n.startswith(name + "-")]


def run_pytest(tmp_path, files, env=None):
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *files],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    from dataplane.testing import require_root
    require_root()
    with Cluster(SPEC, tmp_path_factory.mktemp("tk")) as c:
        yield c


def udp(src, dst, payload=b""):
    return Ether(src=src.mac, dst=src.gateway_mac) / IP(src=src.ip, dst=dst.ip) / UDP(sport=3000, dport=4000) / payload


def test_the_docs_example_runs_as_a_user_runs_it(tmp_path):
    """Copied out of the repository and run by pytest with no conftest: every
    test passes, live ones included, and nothing is left behind."""
    (tmp_path / EXAMPLE.name).write_text(EXAMPLE.read_text())
    before = set(netns.listing())
    r = run_pytest(tmp_path, [EXAMPLE.name])
    assert "7 passed" in r.stdout and "skipped" not in r.stdout, r.stdout + r.stderr
    assert set(netns.listing()) == before


def test_a_failing_test_still_takes_its_cluster_down(tmp_path):
    (tmp_path / "test_fails.py").write_text(
        "def test_fails(podnet_cluster):\n"
        "    c = podnet_cluster()\n"
        "    print('CLUSTER', c.name)\n"
        "    assert c.pod('web-a').ip == 'not this'\n")
    before = set(netns.listing())
    r = run_pytest(tmp_path, ["test_fails.py", "-s"])
    assert "1 failed" in r.stdout, r.stdout + r.stderr
    name = next(line.split()[1] for line in r.stdout.splitlines() if line.startswith("CLUSTER"))
    assert name.startswith("pt") and not ours(name)
    assert set(netns.listing()) == before


def test_pods_and_nodes_are_what_status_reports(live):
    st = live.status()
    assert st["cluster"] == live.name and live.name.startswith("pt") and live.name != "pntk"
    rows = {p["name"]: p for p in st["pods"]}
    for name in ("a", "b", "c"):
        p = live.pod(name)
        assert (p.ip, p.mac, p.node) == (rows[name]["ip"], rows[name]["mac"], rows[name]["node"])
        assert p.netns == f"{live.name}-pod-{name}" and p.mtu == 1450
    nodes = {n["name"]: n for n in st["nodes"]}
    for name in ("n1", "n2"):
        n = live.node(name)
        assert (n.gateway_ip, n.gateway_mac, n.underlay_ip, n.underlay_mac) == tuple(
            nodes[name][k] for k in ("gateway_ip", "gateway_mac", "underlay_ip", "underlay_mac"))
    a = live.pod("a")
    assert a.gateway == nodes["n1"]["gateway_ip"] and a.gateway_mac == nodes["n1"]["gateway_mac"]
    assert sorted(live.pods) == ["a", "b", "c"] and live.nodes == ["n1", "n2"]
    # the pod's own view agrees
    out = a.exec("ip -j addr show dev eth0").stdout
    info = json.loads(out)[0]
    assert info["address"] == a.mac and info["mtu"] == 1450
    assert any(x["local"] == a.ip for x in info["addr_info"])
    assert a.gateway in a.exec(["ip", "route", "show", "default"]).stdout


def test_same_node_and_cross_node_frames(live):
    a, b, c = live.pod("a"), live.pod("b"), live.pod("c")
    sent = [udp(a, b, b"one"), udp(a, c, b"two")]
    [at_b] = send_and_expect(a, sent[0], b)
    expect_routed(at_b, sent[0], src_mac=b.gateway_mac, dst_mac=b.mac)
    [at_c] = send_and_expect(a, sent[1], c)
    expect_routed(at_c, sent[1], src_mac=c.gateway_mac, dst_mac=c.mac, hops=2)


def test_the_uplink_both_ways(live):
    """What n1 sends to the fabric is captured at its uplink; a VXLAN frame
    sent at n1's uplink (as n2 would send it) reaches pod a."""
    a, c = live.pod("a"), live.pod("c")
    n1, n2 = live.node("n1"), live.node("n2")
    sent = udp(a, c)
    [wire] = send_and_expect(a, sent, n1.uplink)
    inner = expect_vxlan(wire, n1, n2, vni=1)
    expect_routed(inner, sent, src_mac=a.gateway_mac, dst_mac=c.gateway_mac)
    back = (Ether(src=n2.underlay_mac, dst=n1.underlay_mac) / IP(src=n2.underlay_ip, dst=n1.underlay_ip)
            / UDP(sport=50001, dport=4789) / VXLAN(vni=1, flags=0x08)
            / Ether(src=n2.gateway_mac, dst=n1.gateway_mac) / IP(src=c.ip, dst=a.ip, ttl=30) / UDP(dport=9)
            / Raw(marker()))
    [got] = send_and_expect(n1.uplink, back, a)
    expect_routed(got, back[VXLAN].payload, src_mac=a.gateway_mac, dst_mac=a.mac)
    assert n1.counters()["overlay"]["decapsulated"] >= 1


def test_sniff_and_capture_filters(live):
    a, b = live.pod("a"), live.pod("b")
    with b.capture(filter="udp dst port 4000") as cap:
        a.send([udp(a, b, b"x"), Ether(src=a.mac, dst=a.gateway_mac) / IP(src=a.ip, dst=b.ip) / ICMP() / b"y"])
        frames = cap.wait(lambda raw: len(raw) >= 1, timeout=3)
    assert [f[UDP].dport for f in frames] == [4000]                    # the ICMP echo was not captured
    with b.capture(filter=lambda f: ICMP in f and f[ICMP].type == 8) as cap:
        a.send([udp(a, b, b"x"), Ether(src=a.mac, dst=a.gateway_mac) / IP(src=a.ip, dst=b.ip) / ICMP() / b"y"])
        frames = cap.wait(lambda raw: len(raw) >= 1, timeout=3)
    assert len(frames) == 1 and frames[0][ICMP].type == 8
    # b's own kernel answers the echo: what a's eth0 receives, not what it sent
    m = marker()
    got = a.sniff(count=1, timeout=0.2)                                # nothing pending: returns after timeout
    assert got == [] or all(m not in bytes(f) for f in got)
    [reply] = send_and_expect(a, Ether(src=a.mac, dst=a.gateway_mac) / IP(src=a.ip, dst=b.ip) / ICMP(id=7) / m, a,
                              filter="icmp[icmptype] == icmp-echoreply")
    assert (reply[IP].src, reply[ICMP].type, reply[ICMP].id) == (b.ip, 0, 7)
    with pytest.raises(PodnetTestError, match="bad capture filter"):
        b.capture(filter="udp port nonsense-port")


def test_frames_too_long_for_the_pod_mtu_are_refused(live):
    a, b = live.pod("a"), live.pod("b")
    big = udp(a, b, b"x" * (1450 - 28 + 1))
    with pytest.raises(FrameTooLong, match="frame #1 is 1465 bytes; its MTU of 1450"):
        a.send([udp(a, b, b"ok"), big])
    assert b.sniff(timeout=0.3, filter="udp dst port 4000") == []       # not even the first was sent
    with pytest.raises(FrameTooLong):
        send_and_expect(a, big, b)


def test_unknown_names_and_a_dead_namespace(live, tmp_path):
    with pytest.raises(PodnetTestError, match=r"no pod 'zz' in cluster pt\w+; its pods: a, b, c"):
        live.pod("zz")
    with pytest.raises(PodnetTestError, match="no node 'n9'"):
        live.node("n9")
    from dataplane.testing import Endpoint
    with pytest.raises(PodnetTestError, match="no interface eth9"):
        Endpoint(live.pod("a").netns, "eth9", 1500).send(Ether() / IP())
    with pytest.raises(PodnetTestError, match="is the cluster still up"):
        Endpoint("pt-no-such-namespace", "eth0", 1500).send(Ether() / IP())
    with pytest.raises(PodnetTestError, match="exited with 1"):
        live.pod("a").exec("false")


def test_apply_and_the_cli_act_on_the_toolkit_cluster(live):
    live.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "late"}, "spec": {"nodeName": "n2"}})
    late, a = live.pod("late"), live.pod("a")
    assert late.node == "n2"
    send_and_expect(a, udp(a, late), late)
    out = live.podnet("pods", "-o", "json").stdout
    assert "late" in {p["name"] for p in json.loads(out)}
    live.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "late"}, "spec": {"nodeName": "n2"}},
               delete=True)
    assert "late" not in live.pods


def test_two_clusters_of_one_spec_side_by_side(tmp_path):
    from dataplane.testing import require_root
    require_root()
    with Cluster(SPEC, tmp_path / "x") as x, Cluster(SPEC, tmp_path / "y") as y:
        assert x.name != y.name and ours(x.name) and ours(y.name)
        ax, bx, ay = x.pod("a"), x.pod("b"), y.pod("a")
        assert ax.ip == ay.ip and ax.netns != ay.netns                 # the same addresses, apart
        send_and_expect(ax, udp(ax, bx), bx)
        send_and_assert_no_reply(ax, udp(ax, bx), y.pod("b"), timeout=0.5)
    assert not ours(x.name) and not ours(y.name)


def test_the_users_own_cluster_is_never_touched(tmp_path):
    """A cluster brought up by `podnet up` (the user's, in its own run
    directory) keeps running while a toolkit cluster of the same spec comes
    and goes, and `podnet down` of the user's run directory is not called."""
    from dataplane.testing import require_root
    require_root()
    env = {**os.environ, "PODNET_RUN_DIR": str(tmp_path / "user-run"), "PODNET_STATE_DIR": str(tmp_path / "user-state")}
    (tmp_path / "spec.yaml").write_text(SPEC)
    cli = [sys.executable, "-m", "dataplane"]
    subprocess.run(cli + ["up", "-f", str(tmp_path / "spec.yaml")], env=env, check=True, capture_output=True,
                   timeout=120)
    try:
        users = ours("pntk")
        assert users
        with Cluster(SPEC, tmp_path / "t") as c:
            send_and_expect(c.pod("a"), udp(c.pod("a"), c.pod("c")), c.pod("c"))
        assert ours("pntk") == users
        st = json.loads(subprocess.run(cli + ["status", "-o", "json"], env=env, capture_output=True, text=True,
                                       timeout=60, check=True).stdout)
        assert st["cluster"] == "pntk" and all(n["agent"] == "running" for n in st["nodes"])
    finally:
        subprocess.run(cli + ["down"], env=env, capture_output=True, timeout=120)
    assert not ours("pntk")


def test_a_failed_up_leaves_nothing(tmp_path):
    """A namespace in the way (a clash) fails up with one clear error, and
    neither namespaces nor state of the cluster are left."""
    from dataplane.cluster import ClusterError
    from dataplane.testing import require_root
    require_root()
    netns.create("ptclash-pod-b")
    try:
        c = Cluster(SPEC, tmp_path, name="ptclash")
        with pytest.raises(ClusterError, match="already exist: ptclash-pod-b"):
            with c:
                pass
        assert ours("ptclash") == ["ptclash-pod-b"]                    # only the one we made
        assert not (tmp_path / "run" / "state.json").exists()
    finally:
        netns.remove("ptclash-pod-b")


def test_the_readmes_example_runs(tmp_path):
    """The README's packet test, as printed there, passes in a fresh pytest."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Packet tests"):]
    code = section[section.index("```python\n") + 10:section.index("```\n", section.index("```python\n") + 10)]
    (tmp_path / "test_readme_example.py").write_text(code)
    r = run_pytest(tmp_path, ["test_readme_example.py"])
    assert "1 passed" in r.stdout, r.stdout + r.stderr
