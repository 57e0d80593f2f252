"""Cluster spec: the default spec, defaults, round trips, and precise errors for bad specs."""
import json
from ipaddress import IPv4Address, IPv4Network

import pytest

from dataplane.spec import (DEFAULT_SPEC, ClusterSpec, NodeSpec, PodSpec, ServicePort, SpecError,
                            load_spec, parse_spec)

NODES = "nodes: [{name: a}, {name: b}]\n"


def errors_of(text):
    with pytest.raises(SpecError) as e:
        parse_spec(text)
    return e.value.errors


def test_default_spec_has_the_documented_shape():
    spec = load_spec(None)
    assert isinstance(spec, ClusterSpec) and spec.source == "<default spec>"
    assert (spec.name, spec.pod_cidr, spec.service_cidr) == (
        "podnet", IPv4Network("10.244.0.0/16"), IPv4Network("10.96.0.0/12"))
    assert (spec.mtu, spec.pod_mtu, spec.vni, spec.vxlan_port) == (1500, 1450, 1, 4789)
    assert spec.nodes == (NodeSpec("node-a"), NodeSpec("node-b"))
    assert [p.name for p in spec.pods_on("node-a")] == ["web-a", "client-a"]
    assert [p.name for p in spec.pods_on("node-b")] == ["web-b", "client-b"]
    assert {p.name: dict(p.labels) for p in spec.pods} == {
        "web-a": {"app": "web"}, "client-a": {"app": "client"},
        "web-b": {"app": "web"}, "client-b": {"app": "client"}}
    (web,) = spec.services
    assert (web.name, web.cluster_ip, dict(web.selector)) == ("web", None, {"app": "web"})
    assert (web.session_affinity, web.affinity_timeout) == ("None", 10800)
    assert web.ports == (ServicePort("http", 80, 8080, "TCP"),)
    backends = [p for p in spec.pods if web.selector.items() <= p.labels.items()]
    assert [(p.name, p.node) for p in backends] == [("web-a", "node-a"), ("web-b", "node-b")]
    assert parse_spec(DEFAULT_SPEC) == spec


def test_minimal_spec_gets_the_defaults():
    spec = parse_spec("nodes: [{name: n1}]\npods:\nservices:\n")
    assert (spec.name, str(spec.pod_cidr), str(spec.service_cidr)) == (
        "podnet", "10.244.0.0/16", "10.96.0.0/12")
    assert (spec.mtu, spec.pod_mtu, spec.vni, spec.vxlan_port) == (1500, 1450, 1, 4789)
    assert spec.nodes == (NodeSpec("n1", None),) and spec.pods == () and spec.services == ()


def test_every_field_given():
    spec = parse_spec("""
cluster: {name: lab-1, podCIDR: 10.32.0.0/12, serviceCIDR: 172.16.0.0/16, mtu: 9000, podMTU: 8000,
          vni: 42, vxlanPort: 8472}
nodes:
  - {name: n1, podCIDR: 10.32.7.0/24}
  - {name: n2, podCIDR: auto}
pods:
  - {name: p1, node: n2, labels: {app: db, tier: "1"}}
services:
  - name: db
    clusterIP: 172.16.0.53
    selector: {app: db}
    sessionAffinity: ClientIP
    sessionAffinityTimeout: 60
    ports:
      - {name: dns, port: 53, protocol: UDP}
      - {name: dns-tcp, port: 53, targetPort: 5353}
""")
    assert (spec.name, spec.mtu, spec.pod_mtu, spec.vni, spec.vxlan_port) == ("lab-1", 9000, 8000, 42, 8472)
    assert spec.node("n1").pod_cidr == IPv4Network("10.32.7.0/24") and spec.node("n2").pod_cidr is None
    assert spec.pods == (PodSpec("p1", "n2", {"app": "db", "tier": "1"}),)
    (db,) = spec.services
    assert db.cluster_ip == IPv4Address("172.16.0.53")
    assert (db.session_affinity, db.affinity_timeout) == ("ClientIP", 60)
    assert db.ports == (ServicePort("dns", 53, 53, "UDP"), ServicePort("dns-tcp", 53, 5353, "TCP"))
    assert parse_spec(json.dumps(spec.to_dict())) == spec  # to_dict is JSON and reads back


def test_spec_is_immutable_and_hashable():
    spec = load_spec(None)
    with pytest.raises(TypeError):
        spec.pods[0].labels["app"] = "evil"
    assert hash(spec) == hash(load_spec(None))
    with pytest.raises(KeyError, match="node-z"):
        spec.node("node-z")


def test_load_spec_from_a_file(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text(DEFAULT_SPEC)
    assert load_spec(str(path)) == load_spec(None) and load_spec(path).source == str(path)
    path.write_text("nodes: [{name: a, podCIDR: 10.244.0.0/23}]\n")
    with pytest.raises(SpecError, match=rf"^{path}: nodes\[0\].podCIDR: 10.244.0.0/23 is not a /24"):
        load_spec(path)


def test_load_spec_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(SpecError) as e:
        load_spec(str(path))
    assert e.value.errors == [f"{path}: (document): cannot read the spec (No such file or directory); "
                              "expected a readable YAML file"]


TOO_MANY_PODS = NODES + "pods:\n" + "".join(f"  - {{name: p{i}, node: a}}\n" for i in range(254))

INVALID = [
    # (id, document, path, phrase in the message)
    ("pod-cidr-syntax", "cluster: {podCIDR: 10.244.0.0/33}\n" + NODES, "cluster.podCIDR", "is not a CIDR"),
    ("pod-cidr-ipv6", "cluster: {podCIDR: 'fd00::/48'}\n" + NODES, "cluster.podCIDR", "is IPv6"),
    ("pod-cidr-host-bits", "cluster: {podCIDR: 10.244.0.1/16}\n" + NODES, "cluster.podCIDR",
     "has host bits set; expected the network address 10.244.0.0/16"),
    ("pod-cidr-too-small", "cluster: {podCIDR: 10.244.0.0/25}\n" + NODES, "cluster.podCIDR",
     "smaller than the /24 each node needs"),
    ("service-cidr-overlaps", "cluster: {serviceCIDR: 10.244.128.0/17}\n" + NODES, "cluster.serviceCIDR",
     "overlaps podCIDR 10.244.0.0/16"),
    ("fabric-cidr-overlaps", "cluster: {fabricCIDR: 10.244.7.0/24}\n" + NODES, "cluster.fabricCIDR",
     "overlaps podCIDR 10.244.0.0/16"),
    ("fabric-cidr-too-small", "cluster: {fabricCIDR: 172.30.0.0/28}\n" + NODES, "cluster.fabricCIDR",
     "too few addresses"),
    ("node-cidrs-overlap", "nodes: [{name: a, podCIDR: 10.244.1.0/24}, {name: b, podCIDR: 10.244.1.0/24}]",
     "nodes[1].podCIDR", "duplicate podCIDR 10.244.1.0/24 (first at nodes[0].podCIDR)"),
    ("node-cidr-outside", "nodes: [{name: a, podCIDR: 10.245.3.0/24}]", "nodes[0].podCIDR",
     "outside podCIDR 10.244.0.0/16"),
    ("node-cidr-not-24", "nodes: [{name: a, podCIDR: 10.244.0.0/23}]", "nodes[0].podCIDR", "is not a /24"),
    ("node-cidr-not-string", "nodes: [{name: a, podCIDR: 24}]", "nodes[0].podCIDR", "got 24 (a number)"),
    ("duplicate-node", "nodes: [{name: a}, {name: a}]", "nodes[1].name",
     "duplicate node name 'a' (first at nodes[0].name)"),
    ("duplicate-pod", NODES + "pods: [{name: p, node: a}, {name: p, node: b}]", "pods[1].name",
     "duplicate pod name 'p'"),
    ("unknown-node", NODES + "pods: [{name: p, node: c}]", "pods[0].node",
     "unknown node 'c'; expected one of a, b"),
    ("pod-without-node", NODES + "pods: [{name: p}]", "pods[0].node", "missing"),
    ("too-many-pods", TOO_MANY_PODS, "pods[253].node", "node 'a' has more than 253 pods"),
    ("port-zero", NODES + "services: [{name: s, ports: [{port: 0}]}]", "services[0].ports[0].port",
     "0 is out of range; expected an integer from 1 to 65535"),
    ("port-too-big", NODES + "services: [{name: s, ports: [{port: 65536}]}]", "services[0].ports[0].port",
     "out of range"),
    ("target-port-too-big", NODES + "services: [{name: s, ports: [{port: 80, targetPort: 70000}]}]",
     "services[0].ports[0].targetPort", "out of range"),
    ("duplicate-port", NODES + "services: [{name: s, ports: [{name: a, port: 80}, {name: b, port: 80}]}]",
     "services[0].ports[1].port", "duplicate port 80/TCP"),
    ("unnamed-port-of-several", NODES + "services: [{name: s, ports: [{name: a, port: 80}, {port: 81}]}]",
     "services[0].ports[1].name", "missing; expected a DNS-1123 label"),
    ("duplicate-port-name",
     NODES + "services: [{name: s, ports: [{name: a, port: 80}, {name: a, port: 81}]}]",
     "services[0].ports[1].name", "duplicate port name 'a'"),
    ("bad-protocol", NODES + "services: [{name: s, ports: [{port: 80, protocol: SCTP}]}]",
     "services[0].ports[0].protocol", "got 'SCTP'; expected 'TCP' or 'UDP'"),
    ("lower-case-protocol", NODES + "services: [{name: s, ports: [{port: 80, protocol: tcp}]}]",
     "services[0].ports[0].protocol", "got 'tcp'"),
    ("no-ports", NODES + "services: [{name: s, ports: []}]", "services[0].ports",
     "got 0 ports; expected a list of ports (at least 1)"),
    ("unknown-top-key", NODES + "pod: []", "(document)", "unknown key 'pod'; expected one of cluster, nodes"),
    ("unknown-node-key", "nodes: [{name: a, cidr: 10.244.0.0/24}]", "nodes[0]",
     "unknown key 'cidr'; expected one of name, podCIDR"),
    ("unknown-port-key", NODES + "services: [{name: s, ports: [{port: 80, nodePort: 30080}]}]",
     "services[0].ports[0]", "unknown key 'nodePort'"),
    ("unknown-cluster-key", "cluster: {mtuu: 1500}\n" + NODES, "cluster", "unknown key 'mtuu'"),
    ("mtu-not-integer", "cluster: {mtu: big}\n" + NODES, "cluster.mtu",
     "got 'big'; expected an integer from 576 to 9000"),
    ("mtu-boolean", "cluster: {mtu: yes}\n" + NODES, "cluster.mtu", "got true (a boolean)"),
    ("mtu-float", "cluster: {mtu: 1500.5}\n" + NODES, "cluster.mtu", "expected an integer"),
    ("mtu-too-big", "cluster: {mtu: 9001}\n" + NODES, "cluster.mtu", "9001 is out of range"),
    ("mtu-too-small", "cluster: {mtu: 575}\n" + NODES, "cluster.mtu", "575 is out of range"),
    ("pod-mtu-too-big", "cluster: {mtu: 1500, podMTU: 1460}\n" + NODES, "cluster.podMTU",
     "expected an integer from 576 to 1450 (at most mtu 1500 less 50 bytes of VXLAN)"),
    ("pod-mtu-too-small", "cluster: {podMTU: 575}\n" + NODES, "cluster.podMTU", "575 is out of range"),
    ("backend-unknown", "cluster: {backend: gre}\n" + NODES, "cluster.backend",
     "must be one of vxlan, ipip, direct, got 'gre'"),
    ("backend-case", "cluster: {backend: VXLAN}\n" + NODES, "cluster.backend", "got 'VXLAN'"),
    ("backend-list", "cluster: {backend: [ipip]}\n" + NODES, "cluster.backend", "got a list"),
    ("backend-number", "cluster: {backend: 4}\n" + NODES, "cluster.backend", "got 4 (a number)"),
    # a bad backend is one error: podMTU is not also reported against some guessed overhead
    ("backend-bad-pod-mtu-too", "cluster: {backend: gre, podMTU: 1500}\n" + NODES, "cluster.backend", "'gre'"),
    ("pod-mtu-ipip-too-big", "cluster: {backend: ipip, podMTU: 1481}\n" + NODES, "cluster.podMTU",
     "expected an integer from 576 to 1480 (at most mtu 1500 less 20 bytes of IPIP)"),
    ("pod-mtu-direct-too-big", "cluster: {backend: direct, mtu: 9000, podMTU: 9001}\n" + NODES, "cluster.podMTU",
     "expected an integer from 576 to 9000 (at most mtu 9000: direct routing adds no header)"),
    ("vni-zero", "cluster: {vni: 0}\n" + NODES, "cluster.vni", "expected an integer from 1 to 16777215"),
    ("vxlan-port", "cluster: {vxlanPort: 65536}\n" + NODES, "cluster.vxlanPort", "out of range"),
    ("cluster-name-chars", "cluster: {name: Pod_Net}\n" + NODES, "cluster.name", "is not a DNS-1123 label"),
    ("cluster-name-long", "cluster: {name: a-very-long-cluster-name}\n" + NODES, "cluster.name",
     "is 24 characters long; expected a DNS-1123 label"),
    ("node-name-dash", "nodes: [{name: -a}]", "nodes[0].name", "is not a DNS-1123 label"),
    ("pod-name-boolean", NODES + "pods: [{name: no, node: a}]", "pods[0].name", "got false (a boolean)"),
    ("service-ip-outside", NODES + "services: [{name: s, clusterIP: 10.112.0.1, ports: [{port: 80}]}]",
     "services[0].clusterIP", "10.112.0.1 is outside serviceCIDR 10.96.0.0/12"),
    ("service-ip-network", NODES + "services: [{name: s, clusterIP: 10.96.0.0, ports: [{port: 80}]}]",
     "services[0].clusterIP", "is the network address"),
    ("service-ip-broadcast", NODES + "services: [{name: s, clusterIP: 10.111.255.255, ports: [{port: 80}]}]",
     "services[0].clusterIP", "is the broadcast address"),
    ("service-ip-garbage", NODES + "services: [{name: s, clusterIP: 10.96.0.300, ports: [{port: 80}]}]",
     "services[0].clusterIP", "is not an IP address"),
    ("service-ip-duplicate", NODES + "services: [{name: s, clusterIP: 10.96.0.5, ports: [{port: 80}]},"
     " {name: t, clusterIP: 10.96.0.5, ports: [{port: 80}]}]",
     "services[1].clusterIP", "duplicate clusterIP 10.96.0.5"),
    ("duplicate-service",
     NODES + "services: [{name: s, ports: [{port: 80}]}, {name: s, ports: [{port: 81}]}]",
     "services[1].name", "duplicate service name 's'"),
    ("affinity", NODES + "services: [{name: s, sessionAffinity: none, ports: [{port: 80}]}]",
     "services[0].sessionAffinity", "expected 'None' or 'ClientIP'"),
    ("affinity-timeout", NODES + "services: [{name: s, sessionAffinityTimeout: 86401, ports: [{port: 80}]}]",
     "services[0].sessionAffinityTimeout", "expected an integer from 1 to 86400"),
    ("label-value-number", NODES + "pods: [{name: p, node: a, labels: {tier: 1}}]", "pods[0].labels.tier",
     "got 1 (a number); expected a string"),
    ("selector-not-mapping", NODES + "services: [{name: s, selector: web, ports: [{port: 80}]}]",
     "services[0].selector", "expected a mapping of strings to strings"),
    ("nodes-missing", "cluster: {name: x}", "nodes", "missing; expected a list of nodes (1 to 64)"),
    ("nodes-empty", "nodes: []", "nodes", "got 0 nodes"),
    ("nodes-too-many", "nodes: [" + ", ".join(f"{{name: n{i}}}" for i in range(65)) + "]", "nodes",
     "got 65 nodes"),
    ("nodes-mapping", "nodes: {a: {}}", "nodes", "got a mapping; expected a list of nodes"),
    ("node-not-mapping", "nodes: [a]", "nodes[0]", "got 'a'; expected a mapping with keys name, podCIDR"),
    ("cluster-list", "cluster: [a]\n" + NODES, "cluster", "got a list; expected a mapping"),
    ("empty-document", "", "(document)", "the spec is empty"),
    ("comment-only", "# nothing\n", "(document)", "the spec is empty"),
    ("document-list", "- nodes: []", "(document)", "got a list; expected a mapping with keys cluster"),
    ("document-scalar", "podnet", "(document)", "got 'podnet'"),
    ("malformed-yaml", NODES + "pods: x: y\n", "line 2, column 8",
     "mapping values are not allowed here; expected valid YAML"),
    ("bad-indent", "nodes:\n  - name: a\n   podCIDR: auto\n", "line 3, column 4",
     "while parsing a block collection"),
    ("unclosed-flow", "nodes: [{name: a}\n", "line 2, column 1", "expected ',' or ']'"),
    ("two-documents", NODES + "---\n" + NODES, "line 2, column 1", "expected a single document"),
]


@pytest.mark.parametrize("text,path,phrase", [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_spec(text, path, phrase):
    (error,) = errors_of(text)  # one mistake, one error: no follow-on noise
    assert error.startswith(f"<spec>: {path}: ")
    assert phrase in error and "; expected " in error


def test_valid_edge_cases():
    spec = parse_spec(NODES + """
cluster: {mtu: 576, podCIDR: 10.0.0.0/24, serviceCIDR: 10.1.0.0/28}
services:
  - {name: dns, clusterIP: 10.1.0.14, ports: [{name: udp, port: 53, protocol: UDP}, {name: tcp, port: 53}]}
  - {name: one, ports: [{port: 65535, targetPort: 1}]}
""")
    assert spec.pod_mtu == 526  # mtu - 50 is allowed below 576: it is the only pod MTU that fits
    assert spec.services[1].ports == (ServicePort(None, 65535, 1, "TCP"),)
    assert parse_spec(NODES + "pods:\n" + "".join(f"  - {{name: p{i}, node: a}}\n" for i in range(253)))


def test_all_errors_of_a_document_are_reported_in_order():
    e = errors_of("""
cluster: {name: Bad, mtu: 100, extra: 1}
nodes: [{name: a}, {name: a}]
pods: [{name: p, node: zz}]
services: [{name: s, ports: [{port: 0, protocol: ICMP}]}]
""")
    paths = [m.split(": ")[1] for m in e]
    assert paths == ["cluster", "cluster.name", "cluster.mtu", "nodes[1].name", "pods[0].node",
                     "services[0].ports[0].port", "services[0].ports[0].protocol"]
    assert all(m.startswith("<spec>: ") and "; expected " in m for m in e)
    with pytest.raises(SpecError) as exc:
        parse_spec("nodes: [{name: A}, {name: B}]", "x.yaml")
    assert str(exc.value) == "\n".join(exc.value.errors) and len(exc.value.errors) == 2
    assert str(exc.value).startswith("x.yaml: nodes[0].name: ")


@pytest.mark.parametrize("backend,pod_mtu", [("vxlan", 1450), ("ipip", 1480), ("direct", 1500)])
def test_backend_sets_the_default_and_largest_pod_mtu(backend, pod_mtu):
    spec = parse_spec(f"cluster: {{backend: {backend}}}\n" + NODES)
    assert (spec.backend, spec.mtu, spec.pod_mtu) == (backend, 1500, pod_mtu)
    assert parse_spec(f"cluster: {{backend: {backend}, podMTU: {pod_mtu}}}\n" + NODES).pod_mtu == pod_mtu
    (err,) = errors_of(f"cluster: {{backend: {backend}, podMTU: {pod_mtu + 1}}}\n" + NODES)
    assert f"{pod_mtu + 1} is out of range; expected an integer from 576 to {pod_mtu} " in err
    # jumbo fabric: the overhead is what the backend adds, whatever the MTU
    assert parse_spec(f"cluster: {{backend: {backend}, mtu: 9000}}\n" + NODES).pod_mtu == 9000 - (1500 - pod_mtu)
    assert parse_spec(json.dumps(spec.to_dict())) == spec                # to_dict carries the backend


def test_backend_defaults_to_vxlan_and_keeps_vni_and_port_in_every_mode():
    assert parse_spec(NODES).backend == "vxlan" and parse_spec("cluster: {backend: null}\n" + NODES).backend == "vxlan"
    assert load_spec(None).backend == "vxlan" and load_spec(None).to_dict()["cluster"]["backend"] == "vxlan"
    for backend in ("ipip", "direct"):     # accepted (and kept) though only vxlan uses them
        spec = parse_spec(f"cluster: {{backend: {backend}, vni: 42, vxlanPort: 8472}}\n" + NODES)
        assert (spec.backend, spec.vni, spec.vxlan_port) == (backend, 42, 8472)
        assert errors_of(f"cluster: {{backend: {backend}, vni: 0}}\n" + NODES)[0].startswith("<spec>: cluster.vni: ")
    assert parse_spec("cluster: {backend: ipip}\n" + NODES) != parse_spec(NODES)


# ---- the backend in the control plane's records (no root, no agents) ---------

def _state(backend=None):
    from dataplane.state import ClusterState, NodeState
    nodes = {n: NodeState(n, i, f"10.244.{i}.0/24", f"10.244.{i}.1", f"0a:58:0a:f4:0{i}:01", f"x-node-{n}",
                          underlay_ip=f"172.30.250.{i + 1}", underlay_mac=f"0a:5a:ac:1e:fa:0{i + 1}")
             for i, n in enumerate(("n1", "n2"))}
    kw = {} if backend is None else {"backend": backend}
    return ClusterState("x", "<test>", {}, nodes, {}, {}, [], {}, 1, 4789, 1450, **kw)


def test_state_records_the_backend_and_old_records_read_as_vxlan(tmp_path):
    from dataplane import state as st
    for backend in ("ipip", "direct", "vxlan"):
        st.save(tmp_path / "state.json", _state(backend))
        assert st.load(tmp_path / "state.json").backend == backend
    d = _state("ipip").to_dict()
    assert d["backend"] == "ipip"
    del d["backend"]                      # written before backends existed
    assert st.ClusterState.from_dict(d).backend == "vxlan"


def test_routes_carry_an_inner_mac_only_in_vxlan():
    from dataplane.cluster import _external_route, _routes_for
    assert _routes_for(_state(), "n1") == [{"name": "n2", "cidr": "10.244.1.0/24", "vtep": "172.30.250.2",
                                            "vni": 1, "inner_mac": "0a:58:0a:f4:01:01"}]
    for backend in ("ipip", "direct"):
        assert _routes_for(_state(backend), "n2") == [{"name": "n1", "cidr": "10.244.0.0/24",
                                                       "vtep": "172.30.250.1", "vni": 1}]
    ext = {"name": "k1", "pod_cidr": "10.244.9.0/24", "vtep": "172.30.250.100", "vtep_mac": "02:00:00:00:00:09"}
    base = {"name": "k1", "cidr": "10.244.9.0/24", "vtep": "172.30.250.100", "vni": 1}
    assert _external_route(_state("vxlan"), ext) == dict(base, inner_mac="02:00:00:00:00:09")
    assert _external_route(_state("ipip"), ext) == dict(base, vtep_mac="02:00:00:00:00:09")   # its underlay MAC
    assert _external_route(_state("direct"), dict(ext, vtep_mac=None)) == base                # ARP finds it
