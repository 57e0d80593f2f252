"""Cluster spec: the YAML that names the nodes, pods and services of a cluster.

Validation (with validate.py's checkers) collects every problem of a document and
raises them together as one SpecError; each reads `{source}: {path}: {what is wrong};
expected {what}`, with paths such as `nodes[1].podCIDR` and `(document)` for the top
level. A key given as null counts as absent, as in Kubernetes, so `pods:` with nothing
under it is an empty list.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from types import MappingProxyType
from typing import Mapping

import yaml

from .textload import StrictSafeLoader, check_depth
# MAX_FILE, ServicePort and read_text are also imported from here, as before validate.py held them
from .validate import LABEL_MAX, MAX_FILE, Checker, ServicePort, describe, get, load_problem, read_text

DEFAULT_SPEC = """\
# podnet default cluster: two nodes with a web and a client pod each, and a
# ClusterIP service "web" whose backends are the two web pods, one per node.
cluster:
  name: podnet
  podCIDR: 10.244.0.0/16
  serviceCIDR: 10.96.0.0/12
  mtu: 1500
nodes:
  - name: node-a
  - name: node-b
pods:
  - {name: web-a, node: node-a, labels: {app: web}}
  - {name: client-a, node: node-a, labels: {app: client}}
  - {name: web-b, node: node-b, labels: {app: web}}
  - {name: client-b, node: node-b, labels: {app: client}}
services:
  - name: web
    selector: {app: web}
    ports:
      - {name: http, port: 80, targetPort: 8080, protocol: TCP}
"""

NAME_MAX = 20          # cluster, node and pod names end up inside namespace and device names
MAX_WORKERS = 16       # forwarding threads per node (fastpath/ioloop.pyx MAX_WORKERS)
MAX_NODES = 64
MAX_PODS_PER_NODE = 253  # a node's /24 less the network, the gateway .1 and the broadcast
MIN_MTU = 576          # every IPv4 host must accept 576-byte datagrams (RFC 791)
MAX_MTU = 9000         # jumbo frames
VXLAN_OVERHEAD = 50    # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
# cluster.backend: how pod traffic crosses between nodes, and the bytes each adds to a packet
BACKENDS = ("vxlan", "ipip", "direct")
OVERHEAD = {"vxlan": VXLAN_OVERHEAD,   # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
            "ipip": 20,                # an outer IPv4 header (RFC 2003)
            "direct": 0}               # none: the pods' own packets on the fabric
MAX_VNI = 2**24 - 1
DEFAULT_AFFINITY_TIMEOUT = 10800  # kube-proxy's default: 3 hours

_KEYS = {
    "(document)": ("cluster", "nodes", "pods", "services"),
    "cluster": ("name", "podCIDR", "serviceCIDR", "fabricCIDR", "mtu", "podMTU", "backend", "vni", "vxlanPort",
                "workers"),
    "node": ("name", "podCIDR"),
    "pod": ("name", "node", "labels"),
    "service": ("name", "clusterIP", "selector", "sessionAffinity", "sessionAffinityTimeout", "ports"),
    "port": ("name", "port", "targetPort", "protocol"),
}


class SpecError(ValueError):
    """Every problem found in one spec; str() gives one per line."""

    def __init__(self, errors):
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


@dataclass(frozen=True)
class NodeSpec:
    name: str
    pod_cidr: IPv4Network | None = None  # None: IPAM picks a /24


@dataclass(frozen=True)
class PodSpec:
    name: str
    node: str
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self):  # a read-only view keeps the frozen spec frozen
        object.__setattr__(self, "labels", MappingProxyType(dict(self.labels)))


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    cluster_ip: IPv4Address | None  # None: IPAM picks one
    selector: Mapping[str, str] = field(hash=False)
    ports: tuple[ServicePort, ...]
    session_affinity: str = "None"
    affinity_timeout: int = DEFAULT_AFFINITY_TIMEOUT

    def __post_init__(self):
        object.__setattr__(self, "selector", MappingProxyType(dict(self.selector)))


@dataclass(frozen=True)
class ClusterSpec:
    name: str
    pod_cidr: IPv4Network
    service_cidr: IPv4Network
    fabric_cidr: IPv4Network
    mtu: int
    pod_mtu: int
    vni: int
    vxlan_port: int
    nodes: tuple[NodeSpec, ...]
    workers: object = "auto"      # forwarding threads per node: an integer, or "auto" (cluster.workers_for)
    backend: str = "vxlan"        # vxlan | ipip | direct (BACKENDS)
    pods: tuple[PodSpec, ...] = ()
    services: tuple[ServiceSpec, ...] = ()
    source: str = field(default="<spec>", compare=False)

    def node(self, name):
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"{self.source}: no node named {name!r}")

    def pods_on(self, node_name):
        return [p for p in self.pods if p.node == node_name]

    def to_dict(self):
        """The spec as a document in the YAML format, defaults filled in: parse_spec reads it back."""
        return {
            "cluster": {"name": self.name, "podCIDR": str(self.pod_cidr),
                        "serviceCIDR": str(self.service_cidr), "fabricCIDR": str(self.fabric_cidr),
                        "mtu": self.mtu,
                        "podMTU": self.pod_mtu, "backend": self.backend, "vni": self.vni,
                        "vxlanPort": self.vxlan_port, "workers": self.workers},
            "nodes": [{"name": n.name, "podCIDR": str(n.pod_cidr) if n.pod_cidr else "auto"}
                      for n in self.nodes],
            "pods": [{"name": p.name, "node": p.node, "labels": dict(p.labels)} for p in self.pods],
            "services": [{
                "name": s.name,
                "clusterIP": str(s.cluster_ip) if s.cluster_ip else "auto",
                "selector": dict(s.selector),
                "sessionAffinity": s.session_affinity,
                "sessionAffinityTimeout": s.affinity_timeout,
                "ports": [{"name": p.name, "port": p.port, "targetPort": p.target_port,
                           "protocol": p.protocol} for p in s.ports],
            } for s in self.services],
        }


def load_spec(path=None):
    """The spec in the file at path, or the built-in DEFAULT_SPEC when path is None."""
    if path is None:
        return parse_spec(DEFAULT_SPEC, "<default spec>")
    return parse_spec(read_text(path, SpecError, "(document): cannot read the spec"), str(path))


def parse_spec(text, source="<spec>"):
    try:
        check_depth(text)
        doc = yaml.load(text, Loader=StrictSafeLoader)
    except (ValueError, RecursionError, yaml.YAMLError) as exc:
        raise SpecError([f"{source}: {load_problem(exc)}; expected valid YAML"]) from None
    return _Parser(source).document(doc)


class _Parser(Checker):
    """The spec's sections, each checked by validate.Checker's checkers."""

    KEYS = _KEYS

    def document(self, doc):
        if doc is None:
            self.error("(document)", "the spec is empty",
                       "a mapping with keys " + ", ".join(_KEYS["(document)"]))
            raise SpecError(self.errors)
        if not self.mapping("(document)", doc, "(document)"):
            raise SpecError(self.errors)
        c = self.cluster(get(doc, "cluster", {}))
        nodes, node_names = self.nodes(doc.get("nodes"), c.get("pod_cidr"))
        pods = self.pods(get(doc, "pods", []), node_names)
        services = self.services(get(doc, "services", []), c.get("service_cidr"))
        if self.errors:
            raise SpecError(self.errors)
        return ClusterSpec(**c, nodes=nodes, pods=pods, services=services, source=self.source)

    def cluster(self, m):
        if not self.mapping("cluster", m, "cluster"):
            return {}
        c = {"name": self.name("cluster.name", get(m, "name", "podnet"), NAME_MAX)}
        pod_cidr = self.cidr("cluster.podCIDR", get(m, "podCIDR", "10.244.0.0/16"),
                             "an IPv4 CIDR such as 10.244.0.0/16")
        if pod_cidr and pod_cidr.prefixlen > 24:
            self.error("cluster.podCIDR", f"{pod_cidr} is smaller than the /24 each node needs",
                       "a prefix of /24 or shorter")
            pod_cidr = None
        svc_cidr = self.cidr("cluster.serviceCIDR", get(m, "serviceCIDR", "10.96.0.0/12"),
                             "an IPv4 CIDR such as 10.96.0.0/12")
        if svc_cidr and pod_cidr and svc_cidr.overlaps(pod_cidr):
            self.error("cluster.serviceCIDR", f"{svc_cidr} overlaps podCIDR {pod_cidr}",
                       "a CIDR disjoint from podCIDR")
        # The simulated datacenter network: node underlay IPs are .1, .2, ... of it.
        fab = self.cidr("cluster.fabricCIDR", get(m, "fabricCIDR", "172.30.250.0/24"),
                        "an IPv4 CIDR such as 172.30.250.0/24")
        if fab and fab.prefixlen > 25:
            self.error("cluster.fabricCIDR", f"{fab} leaves too few addresses for nodes",
                       "a prefix of /25 or shorter (room for 64 nodes)")
            fab = None
        for other, key in ((pod_cidr, "podCIDR"), (svc_cidr, "serviceCIDR")):
            if fab and other and fab.overlaps(other):
                self.error("cluster.fabricCIDR", f"{fab} overlaps {key} {other}", f"a CIDR disjoint from {key}")
        c.update(pod_cidr=pod_cidr, service_cidr=svc_cidr, fabric_cidr=fab)
        c["mtu"] = mtu = self.integer("cluster.mtu", get(m, "mtu", 1500), MIN_MTU, MAX_MTU)
        c["backend"] = backend = self.backend("cluster.backend", get(m, "backend", "vxlan"))
        if mtu is not None and backend is not None:
            # Pods may use less than the fabric allows, down to 576 (unless mtu - overhead is already lower).
            over = OVERHEAD[backend]
            hi = mtu - over
            why = (f" (at most mtu {mtu} less {over} bytes of {backend.upper()})" if over
                   else f" (at most mtu {mtu}: direct routing adds no header)")
            c["pod_mtu"] = self.integer("cluster.podMTU", get(m, "podMTU", hi), min(MIN_MTU, hi), hi, why)
        c["vni"] = self.integer("cluster.vni", get(m, "vni", 1), 1, MAX_VNI)
        c["vxlan_port"] = self.integer("cluster.vxlanPort", get(m, "vxlanPort", 4789), 1, 65535)
        w = get(m, "workers", "auto")
        c["workers"] = w if w == "auto" else self.integer("cluster.workers", w, 1, MAX_WORKERS,
                                                          ' (or "auto")')
        return c

    def backend(self, path, value):
        if value not in BACKENDS:     # a list or a mapping is not in it either (and unhashable is fine)
            shown = repr(value) if isinstance(value, str) else describe(value)
            return self.error(path, f"must be one of {', '.join(BACKENDS)}, got {shown}",
                              "vxlan (the default), ipip or direct")
        return value

    def nodes(self, value, pod_cidr):
        """The NodeSpecs, and every node name given (valid or not, so pods naming an invalid
        node are not reported twice); None instead of names when there is no list of nodes."""
        nodes, names, cidrs = [], {}, {}
        given_names = None if not isinstance(value, list) else list(dict.fromkeys(
            m["name"] for m in value if isinstance(m, dict) and isinstance(m.get("name"), str)))
        expected = '"auto" or a /24 inside podCIDR' + (f" {pod_cidr}" if pod_cidr else "")
        for path, m in self.items("nodes", value, "nodes", 1, MAX_NODES):
            if not self.mapping(path, m, "node"):
                continue
            name = self.name(f"{path}.name", m.get("name"), NAME_MAX)
            self.unique(names, name, f"{path}.name", f"node name {name!r}", "unique node names")
            cidr, given = None, get(m, "podCIDR", "auto")
            if given != "auto":
                cidr = self.cidr(f"{path}.podCIDR", given, expected)
                cidr = cidr and self.node_cidr(f"{path}.podCIDR", cidr, pod_cidr, cidrs, expected)
            nodes.append(NodeSpec(name, cidr))
        return tuple(nodes), given_names

    def node_cidr(self, path, cidr, pod_cidr, seen, expected):
        if cidr.prefixlen != 24:
            return self.error(path, f"{cidr} is not a /24", expected)
        if pod_cidr and not cidr.subnet_of(pod_cidr):
            return self.error(path, f"{cidr} is outside podCIDR {pod_cidr}", expected)
        self.unique(seen, cidr, path, f"podCIDR {cidr}", "a /24 that no other node has")
        return cidr

    def pods(self, value, node_names):
        pods, names, per_node = [], {}, Counter()
        for path, m in self.items("pods", value, "pods"):
            if not self.mapping(path, m, "pod"):
                continue
            name = self.name(f"{path}.name", m.get("name"), NAME_MAX)
            self.unique(names, name, f"{path}.name", f"pod name {name!r}",
                        "pod names unique across the cluster")
            node = m.get("node")
            if not isinstance(node, str):
                self.bad(f"{path}.node", node, "the name of a node")
            elif node_names is not None and node not in node_names:
                self.error(f"{path}.node", f"unknown node {node!r}", "one of " + ", ".join(node_names))
            else:
                per_node[node] += 1
                if per_node[node] == MAX_PODS_PER_NODE + 1:  # report each full node once
                    self.error(f"{path}.node", f"node {node!r} has more than {MAX_PODS_PER_NODE} pods",
                               f"at most {MAX_PODS_PER_NODE} pods per node (its /24 less network, "
                               "gateway .1 and broadcast)")
            labels = self.labels(f"{path}.labels", get(m, "labels", {}))
            pods.append(PodSpec(name, node, labels or {}))
        return tuple(pods)

    def services(self, value, svc_cidr):
        services, names, ips = [], {}, {}
        for path, m in self.items("services", value, "services"):
            if not self.mapping(path, m, "service"):
                continue
            name = self.name(f"{path}.name", m.get("name"), LABEL_MAX)
            self.unique(names, name, f"{path}.name", f"service name {name!r}", "unique service names")
            ip, given = None, get(m, "clusterIP", "auto")
            if given != "auto":
                ip = self.cluster_ip(f"{path}.clusterIP", given, svc_cidr, ips)
            selector = self.labels(f"{path}.selector", get(m, "selector", {}))
            affinity = self.choice(f"{path}.sessionAffinity", get(m, "sessionAffinity", "None"),
                                   ("None", "ClientIP"))
            timeout = self.integer(f"{path}.sessionAffinityTimeout",
                                   get(m, "sessionAffinityTimeout", DEFAULT_AFFINITY_TIMEOUT), 1, 86400)
            ports = self.service_ports(f"{path}.ports", m.get("ports"),
                                       lambda at, item: self.mapping(at, item, "port"), None, self.port)
            services.append(ServiceSpec(name, ip, selector or {}, ports, affinity, timeout))
        return tuple(services)

    def cluster_ip(self, path, value, svc_cidr, seen):
        expected = '"auto" or an IPv4 address inside serviceCIDR' + (f" {svc_cidr}" if svc_cidr else "")
        ip = self.address(path, value, expected)
        if ip is None or svc_cidr is None:
            return ip
        if ip not in svc_cidr:
            return self.error(path, f"{ip} is outside serviceCIDR {svc_cidr}", expected)
        if ip in (svc_cidr.network_address, svc_cidr.broadcast_address):
            which = "network" if ip == svc_cidr.network_address else "broadcast"
            return self.error(path, f"{ip} is the {which} address of serviceCIDR {svc_cidr}", expected)
        self.unique(seen, ip, path, f"clusterIP {ip}", "a clusterIP no other service has")
        return ip
