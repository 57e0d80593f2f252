"""IPAM: lowest-free allocation, leases kept across re-plans and processes, release, exhaustion."""
import dataclasses
import json
import os
import re
from ipaddress import IPv4Address as A, IPv4Network as N

import pytest

from dataplane.ipam import Ipam, IpamError, mac_for
from dataplane.spec import PodSpec, load_spec, parse_spec


def spec(nodes, pods=(), services=(), cluster=""):
    """nodes: "a" or "a=10.244.5.0/24"; pods: "name@node"; services: "name" or "name=IP"."""
    def node(n):
        name, _, cidr = n.partition("=")
        return f"{{name: {name}, podCIDR: {cidr or 'auto'}}}"

    def service(s):
        name, _, ip = s.partition("=")
        return f"{{name: {name}, clusterIP: {ip or 'auto'}, ports: [{{port: 80}}]}}"
    return parse_spec(f"cluster: {{{cluster}}}\nnodes: [{', '.join(map(node, nodes))}]\n"
                      f"pods: [{', '.join('{name: %s, node: %s}' % tuple(p.split('@')) for p in pods)}]\n"
                      f"services: [{', '.join(map(service, services))}]\n")


def pod_ips(plan):
    return {name: str(p.ip) for name, p in plan.pods.items()}


@pytest.fixture
def ipam(tmp_path):
    return Ipam(tmp_path / "leases.json")


def test_mac_for():
    assert mac_for("10.244.1.2") == "0a:58:0a:f4:01:02"
    assert mac_for(A("192.168.255.10")) == "0a:58:c0:a8:ff:0a"
    assert re.fullmatch(r"0a:58(:[0-9a-f]{2}){4}", mac_for("1.2.3.4"))


def test_default_spec_plan(ipam):
    plan = ipam.plan(load_spec(None))
    a, b = plan.nodes["node-a"], plan.nodes["node-b"]
    assert (a.index, a.subnet, a.gateway_ip, a.gateway_mac) == (0, N("10.244.0.0/24"), A("10.244.0.1"),
                                                                "0a:58:0a:f4:00:01")
    assert (b.index, b.subnet, b.gateway_ip) == (1, N("10.244.1.0/24"), A("10.244.1.1"))
    assert pod_ips(plan) == {"web-a": "10.244.0.2", "client-a": "10.244.0.3",
                             "web-b": "10.244.1.2", "client-b": "10.244.1.3"}
    web_b = plan.pods["web-b"]
    assert (web_b.node, web_b.prefixlen, web_b.mac, web_b.gateway_ip) == (
        "node-b", 24, "0a:58:0a:f4:01:02", A("10.244.1.1"))
    assert plan.services == {"web": A("10.96.0.10")}
    assert json.loads(json.dumps(plan.to_dict()))["pods"]["web-a"]["ip"] == "10.244.0.2"


def test_plan_is_stable_across_replans_and_ipam_objects(ipam):
    s = load_spec(None)
    first = ipam.plan(s)
    assert ipam.plan(s) == first and Ipam(ipam.path).plan(s) == first
    assert json.loads(ipam.path.read_text()) == {
        "nodes": {"node-a": "10.244.0.0/24", "node-b": "10.244.1.0/24"},
        "pods": {"web-a": "10.244.0.2", "client-a": "10.244.0.3",
                 "web-b": "10.244.1.2", "client-b": "10.244.1.3"},
        "services": {"web": "10.96.0.10"}, "last_reserved": {}}
    assert os.listdir(ipam.path.parent) == ["leases.json"]  # no temporary file left behind


def test_removing_and_adding_pods_moves_no_one(ipam):
    before = pod_ips(ipam.plan(spec(["a"], ["p1@a", "p2@a", "p3@a", "p4@a"])))
    after = pod_ips(ipam.plan(spec(["a"], ["p1@a", "p2@a", "p4@a"])))
    assert after == {k: v for k, v in before.items() if k != "p3"}
    # Newcomers listed first still come after the pods that hold leases; the first fills p3's hole.
    grown = pod_ips(ipam.plan(spec(["a"], ["new1@a", "new2@a", "p4@a", "p2@a", "p1@a"])))
    assert grown == {**after, "new1": "10.244.0.4", "new2": "10.244.0.6"}


def test_nodes_keep_subnets_when_others_come_and_go(ipam):
    ipam.plan(spec(["a", "b", "c"]))
    plan = ipam.plan(spec(["new", "a", "c"]))  # b released, its /24 is the lowest free one
    assert {n: str(p.subnet) for n, p in plan.nodes.items()} == {
        "new": "10.244.1.0/24", "a": "10.244.0.0/24", "c": "10.244.2.0/24"}
    assert [p.index for p in plan.nodes.values()] == [0, 1, 2]


def test_explicit_pod_cidr_wins_and_auto_nodes_move(ipam):
    ipam.plan(spec(["a", "b"], ["p@a"]))
    plan = ipam.plan(spec(["a", "b=10.244.0.0/24"], ["p@a"]))  # takes a's leased /24
    assert (plan.nodes["b"].subnet, plan.nodes["a"].subnet) == (N("10.244.0.0/24"), N("10.244.1.0/24"))
    assert (plan.pods["p"].ip, plan.pods["p"].gateway_ip) == (A("10.244.1.2"), A("10.244.1.1"))
    plan = ipam.plan(spec(["a", "b=10.244.7.0/24"]))
    assert plan.nodes["a"].subnet == N("10.244.1.0/24")  # keeps its new lease, 10.244.0.0/24 is free again


def test_pod_moving_to_another_node_gets_an_address_there(ipam):
    ipam.plan(spec(["a", "b"], ["p@a", "q@b"]))
    assert pod_ips(ipam.plan(spec(["a", "b"], ["p@b", "q@b"]))) == {"p": "10.244.1.3", "q": "10.244.1.2"}


def test_new_cluster_pod_cidr_reallocates(ipam):
    ipam.plan(spec(["a"], ["p@a"]))
    plan = ipam.plan(spec(["a"], ["p@a"], cluster="podCIDR: 10.32.0.0/16"))
    assert (plan.nodes["a"].subnet, plan.pods["p"].ip) == (N("10.32.0.0/24"), A("10.32.0.2"))


def test_services_keep_leases_and_explicit_ips_win(ipam):
    assert ipam.plan(spec(["a"], services=["s1", "s2", "s3"])).services == {
        "s1": A("10.96.0.10"), "s2": A("10.96.0.11"), "s3": A("10.96.0.12")}
    plan = ipam.plan(spec(["a"], services=["s3", "x=10.96.0.11", "s1", "low=10.96.0.1"]))
    assert plan.services == {"s3": A("10.96.0.12"), "x": A("10.96.0.11"), "s1": A("10.96.0.10"),
                             "low": A("10.96.0.1")}
    plan = ipam.plan(spec(["a"], services=["x=10.96.0.10", "s1", "s3", "s4"]))  # s1 moves to the lowest free
    assert plan.services == {"x": A("10.96.0.10"), "s1": A("10.96.0.11"), "s3": A("10.96.0.12"),
                             "s4": A("10.96.0.13")}


def test_released_leases_leave_the_file(ipam):
    ipam.plan(spec(["a", "b"], ["p@a", "q@b"], ["s", "t"]))
    ipam.plan(spec(["a"], ["p@a"], ["t"]))
    assert json.loads(ipam.path.read_text()) == {
        "nodes": {"a": "10.244.0.0/24"}, "pods": {"p": "10.244.0.2"}, "services": {"t": "10.96.0.11"},
        "last_reserved": {}}


def test_no_free_node_subnet(ipam):
    with pytest.raises(IpamError, match=r"pod CIDR 10\.244\.0\.0/23 has no free /24 left for node 'c'"):
        ipam.plan(spec(["a", "b", "c"], cluster="podCIDR: 10.244.0.0/23"))
    with pytest.raises(IpamError, match="for node 'a'"):  # the explicit node holds the only /24
        ipam.plan(spec(["a", "b=10.244.0.0/24"], cluster="podCIDR: 10.244.0.0/24"))
    assert not ipam.path.exists()


def test_no_free_service_ip(ipam):
    ok = spec(["a"], services=[f"s{i}" for i in range(5)], cluster="serviceCIDR: 10.96.0.0/28")
    assert ipam.plan(ok).services["s4"] == A("10.96.0.14")  # .15 is the broadcast address
    full = spec(["a"], services=[f"s{i}" for i in range(6)], cluster="serviceCIDR: 10.96.0.0/28")
    with pytest.raises(IpamError, match=r"service CIDR 10\.96\.0\.0/28 has no free address left .* 's5'"):
        ipam.plan(full)


def test_no_free_pod_address(ipam):
    s = spec(["a", "b"], [f"p{i}@a" for i in range(253)])
    assert ipam.plan(s).pods["p252"].ip == A("10.244.0.254")
    # The spec refuses a 254th pod on a node; IPAM still checks on its own.
    crowded = dataclasses.replace(s, pods=s.pods + (PodSpec("p253", "a"),))
    with pytest.raises(IpamError, match=r"node 'a' \(subnet 10\.244\.0\.0/24\) has no free address left "
                                        r"for pod 'p253'"):
        Ipam(ipam.path).plan(crowded)


def test_failed_plan_leaves_the_file_untouched(ipam):
    ipam.plan(load_spec(None))
    before = ipam.path.read_bytes()
    with pytest.raises(IpamError):
        ipam.plan(spec(["x", "y", "z"], cluster="podCIDR: 10.244.0.0/23"))
    assert ipam.path.read_bytes() == before and os.listdir(ipam.path.parent) == ["leases.json"]


@pytest.mark.parametrize("content", [
    "{not json", "[]", '{"pods": []}', '{"pods": {"p": "10.244.0.300"}}', '{"nodes": {"a": "10.244.0.1/24"}}',
    '{"services": {"s": 167772170}}', "\xff\xfe",
])
def test_corrupt_lease_file(ipam, content):
    ipam.path.write_text(content, encoding="latin-1")
    with pytest.raises(IpamError, match=rf"^{re.escape(str(ipam.path))}: corrupt lease file"):
        ipam.plan(load_spec(None))
    assert ipam.path.read_text(encoding="latin-1") == content


def test_lease_file_directory_is_created(tmp_path):
    path = tmp_path / "run" / "podnet" / "leases.json"
    Ipam(str(path)).plan(load_spec(None))
    assert json.loads(path.read_text())["services"] == {"web": "10.96.0.10"}


def test_stale_leases_are_ignored(ipam):
    # Leases that no longer fit (not a /24, outside the pool, doubled) are replaced, not trusted.
    ipam.path.write_text(json.dumps({
        "nodes": {"a": "10.244.0.0/23", "b": "10.99.0.0/24"},
        "pods": {"p": "10.244.1.7", "q": "10.244.1.7", "r": "10.244.1.1"},
        "services": {"s": "10.96.0.3"}}))
    plan = ipam.plan(spec(["a", "b"], ["p@b", "q@b", "r@b"], ["s"]))
    assert {n: str(p.subnet) for n, p in plan.nodes.items()} == {"a": "10.244.0.0/24", "b": "10.244.1.0/24"}
    assert pod_ips(plan) == {"p": "10.244.1.7", "q": "10.244.1.2", "r": "10.244.1.3"}
    assert plan.services == {"s": A("10.96.0.10")}


def test_live_pods_get_addresses_after_the_last_reserved_and_wrap(ipam):
    """host-local's rule: a freed address is not handed out again until the
    range wraps, so a new pod does not inherit a dead pod's connections."""
    s = load_spec(None)
    ipam.plan(s)                                        # node-a: web-a .2, client-a .3
    net = "10.244.0.0/24"
    assert ipam.allocate_pod("p1", net) == A("10.244.0.4")
    assert ipam.allocate_pod("p2", net) == A("10.244.0.5")
    assert ipam.release_pod("p1") and not ipam.release_pod("p1")
    assert ipam.allocate_pod("p1", net) == A("10.244.0.6")       # not .4 again
    assert ipam.pod_leases()["p1"] == A("10.244.0.6")
    with pytest.raises(IpamError, match="already holds"):
        ipam.allocate_pod("p2", net)
    for i in range(7, 255):                             # fill up to .254
        ipam.allocate_pod(f"f{i}", net)
    assert ipam.allocate_pod("wrap", net) == A("10.244.0.4")      # wrapped: the first free one
    with pytest.raises(IpamError, match="no free address"):
        ipam.allocate_pod("full", net)
    assert "full" not in ipam.pod_leases()
    assert json.loads(ipam.path.read_text())["last_reserved"] == {net: "10.244.0.4"}


def test_last_reserved_survives_a_replan(ipam):
    s = load_spec(None)
    ipam.plan(s)
    ipam.allocate_pod("p1", "10.244.0.0/24")            # .4
    ipam.release_pod("p1")
    ipam.plan(s)                                        # down, then up: the spec's pods keep theirs
    assert ipam.allocate_pod("p2", "10.244.0.0/24") == A("10.244.0.5")
