"""Cluster spec: the YAML that names the nodes, pods and services of a cluster.

Validation collects every problem of a document and raises them together as one
SpecError; each reads `{source}: {path}: {what is wrong}; expected {what}`, with
paths such as `nodes[1].podCIDR` and `(document)` for the top level. A key given
as null counts as absent, as in Kubernetes, so `pods:` with nothing under it is
an empty list.
"""
from __future__ import annotations

import ipaddress
import re
from collections import Counter
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from types import MappingProxyType
from typing import Mapping

import yaml

from .textload import StrictSafeLoader, check_depth, problem

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
LABEL_MAX = 63         # service and port names: a plain DNS-1123 label
MAX_NODES = 64
MAX_PODS_PER_NODE = 253  # a node's /24 less the network, the gateway .1 and the broadcast
MIN_MTU = 576          # every IPv4 host must accept 576-byte datagrams (RFC 791)
MAX_MTU = 9000         # jumbo frames
VXLAN_OVERHEAD = 50    # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
MAX_VNI = 2**24 - 1
DEFAULT_AFFINITY_TIMEOUT = 10800  # kube-proxy's default: 3 hours

_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_KEYS = {
    "(document)": ("cluster", "nodes", "pods", "services"),
    "cluster": ("name", "podCIDR", "serviceCIDR", "fabricCIDR", "mtu", "podMTU", "vni", "vxlanPort", "workers"),
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
class ServicePort:
    name: str | None
    port: int
    target_port: int
    protocol: str = "TCP"


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
                        "podMTU": self.pod_mtu, "vni": self.vni, "vxlanPort": self.vxlan_port,
                        "workers": self.workers},
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


MAX_FILE = 64 << 20          # bytes; 10k services x 10 endpoints as manifests is ~10 MB


def read_text(path, error, what):
    """A UTF-8 file's text, or error([f"{path}: {what} (why); expected ..."]).
    Reads at most MAX_FILE bytes, so /dev/zero or a stray image is refused."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(MAX_FILE + 1)
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise error([f"{path}: {what} ({why}); expected a readable YAML file"]) from None
    if len(text) > MAX_FILE:
        raise error([f"{path}: {what} (larger than {MAX_FILE >> 20} MiB); expected a readable YAML file"])
    return text


def parse_spec(text, source="<spec>"):
    try:
        check_depth(text)
        doc = yaml.load(text, Loader=StrictSafeLoader)
    except (ValueError, RecursionError) as exc:     # not YAMLErrors: huge numbers, deep nesting
        raise SpecError([f"{source}: (document): {problem(exc)}; expected valid YAML"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(document)"
        # context, problem: "expected a single document in the stream, but found another document"
        what = ", ".join(filter(None, [getattr(exc, "context", None), getattr(exc, "problem", None)]))
        what = what or " ".join(str(exc).split())
        raise SpecError([f"{source}: {where}: {what}; expected valid YAML"]) from None
    return _Parser(source).document(doc)


def _describe(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, (int, float)):
        return f"{value} (a number)"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list" if value else "an empty list"
    return f"{value} (a {type(value).__name__})"  # e.g. a YAML date


def _get(mapping, key, default):
    value = mapping.get(key)
    return default if value is None else value


class _Parser:
    def __init__(self, source):
        self.source = source
        self.errors = []

    def error(self, path, wrong, expected):
        self.errors.append(f"{self.source}: {path}: {wrong}; expected {expected}")

    def bad(self, path, value, expected):
        """Reports a value of the wrong type, or a missing one (None)."""
        self.error(path, "missing" if value is None else f"got {_describe(value)}", expected)

    # -- checkers: each returns the checked value, or None after recording an error

    def mapping(self, path, value, kind):
        """True if value is a mapping; reports its unknown keys."""
        keys = _KEYS[kind]
        if not isinstance(value, dict):
            self.bad(path, value, "a mapping with keys " + ", ".join(keys))
            return False
        for key in value:
            if key not in keys:
                self.error(path, f"unknown key {key!r}", "one of " + ", ".join(keys))
        return True

    def items(self, path, value, what, lo=0, hi=None):
        """(path, item) for each item of a list; reports a wrong length but still yields the items."""
        expected = f"a list of {what}" + (f" ({lo} to {hi})" if hi else f" (at least {lo})" if lo else "")
        if not isinstance(value, list):
            self.bad(path, value, expected)
            return []
        if len(value) < lo or (hi and len(value) > hi):
            self.error(path, f"got {len(value)} {what}", expected)
        return [(f"{path}[{i}]", item) for i, item in enumerate(value)]

    def integer(self, path, value, lo, hi, why=""):
        expected = f"an integer from {lo} to {hi}{why}"
        if type(value) is not int:  # not isinstance: bool is an int
            return self.bad(path, value, expected)
        if not lo <= value <= hi:
            return self.error(path, f"{value} is out of range", expected)
        return value

    def name(self, path, value, maxlen, why=""):
        expected = (f"a DNS-1123 label (a-z, 0-9 and '-', alphanumeric at both ends) "
                    f"of at most {maxlen} characters{why}")
        if not isinstance(value, str):
            return self.bad(path, value, expected)
        if len(value) > maxlen:
            return self.error(path, f"{value!r} is {len(value)} characters long", expected)
        if not _LABEL.fullmatch(value):
            return self.error(path, f"{value!r} is not a DNS-1123 label", expected)
        return value

    def unique(self, seen, key, path, what, expected):
        """Reports key if seen before; seen maps each key to the path that had it first."""
        if key in seen:
            self.error(path, f"duplicate {what} (first at {seen[key]})", expected)
        elif key is not None:
            seen[key] = path

    def choice(self, path, value, choices):
        if value not in choices:
            return self.bad(path, value, " or ".join(map(repr, choices)))
        return value

    def labels(self, path, value):
        expected = "a mapping of strings to strings (quote values YAML would read as numbers or booleans)"
        if not isinstance(value, dict):
            return self.bad(path, value, expected)
        for key, val in value.items():
            if not isinstance(key, str):
                self.error(path, f"key {_describe(key)} is not a string", expected)
            elif not isinstance(val, str):
                self.bad(f"{path}.{key}", val, "a string")
        return value

    def cidr(self, path, value, expected):
        if not isinstance(value, str):
            return self.bad(path, value, expected)
        try:
            iface = ipaddress.ip_interface(value)
        except ValueError:
            return self.error(path, f"{value!r} is not a CIDR", expected)
        if iface.version != 4:
            return self.error(path, f"{value!r} is IPv6", expected)
        if iface.ip != iface.network.network_address:
            return self.error(path, f"{value!r} has host bits set", f"the network address {iface.network}")
        return iface.network

    def address(self, path, value, expected):
        if not isinstance(value, str):
            return self.bad(path, value, expected)
        try:
            addr = ipaddress.ip_address(value)
        except ValueError:
            return self.error(path, f"{value!r} is not an IP address", expected)
        if addr.version != 4:
            return self.error(path, f"{value!r} is IPv6", expected)
        return addr

    # -- sections

    def document(self, doc):
        if doc is None:
            self.error("(document)", "the spec is empty",
                       "a mapping with keys " + ", ".join(_KEYS["(document)"]))
            raise SpecError(self.errors)
        if not self.mapping("(document)", doc, "(document)"):
            raise SpecError(self.errors)
        c = self.cluster(_get(doc, "cluster", {}))
        nodes, node_names = self.nodes(doc.get("nodes"), c.get("pod_cidr"))
        pods = self.pods(_get(doc, "pods", []), node_names)
        services = self.services(_get(doc, "services", []), c.get("service_cidr"))
        if self.errors:
            raise SpecError(self.errors)
        return ClusterSpec(**c, nodes=nodes, pods=pods, services=services, source=self.source)

    def cluster(self, m):
        if not self.mapping("cluster", m, "cluster"):
            return {}
        c = {"name": self.name("cluster.name", _get(m, "name", "podnet"), NAME_MAX)}
        pod_cidr = self.cidr("cluster.podCIDR", _get(m, "podCIDR", "10.244.0.0/16"),
                             "an IPv4 CIDR such as 10.244.0.0/16")
        if pod_cidr and pod_cidr.prefixlen > 24:
            self.error("cluster.podCIDR", f"{pod_cidr} is smaller than the /24 each node needs",
                       "a prefix of /24 or shorter")
            pod_cidr = None
        svc_cidr = self.cidr("cluster.serviceCIDR", _get(m, "serviceCIDR", "10.96.0.0/12"),
                             "an IPv4 CIDR such as 10.96.0.0/12")
        if svc_cidr and pod_cidr and svc_cidr.overlaps(pod_cidr):
            self.error("cluster.serviceCIDR", f"{svc_cidr} overlaps podCIDR {pod_cidr}",
                       "a CIDR disjoint from podCIDR")
        # The simulated datacenter network: node underlay IPs are .1, .2, ... of it.
        fab = self.cidr("cluster.fabricCIDR", _get(m, "fabricCIDR", "172.30.250.0/24"),
                        "an IPv4 CIDR such as 172.30.250.0/24")
        if fab and fab.prefixlen > 25:
            self.error("cluster.fabricCIDR", f"{fab} leaves too few addresses for nodes",
                       "a prefix of /25 or shorter (room for 64 nodes)")
            fab = None
        for other, key in ((pod_cidr, "podCIDR"), (svc_cidr, "serviceCIDR")):
            if fab and other and fab.overlaps(other):
                self.error("cluster.fabricCIDR", f"{fab} overlaps {key} {other}", f"a CIDR disjoint from {key}")
        c.update(pod_cidr=pod_cidr, service_cidr=svc_cidr, fabric_cidr=fab)
        c["mtu"] = mtu = self.integer("cluster.mtu", _get(m, "mtu", 1500), MIN_MTU, MAX_MTU)
        if mtu is not None:
            # Pods may use less than the fabric allows, down to 576 (unless mtu - 50 is already lower).
            hi = mtu - VXLAN_OVERHEAD
            c["pod_mtu"] = self.integer("cluster.podMTU", _get(m, "podMTU", hi), min(MIN_MTU, hi), hi,
                                        f" (at most mtu {mtu} less {VXLAN_OVERHEAD} bytes of VXLAN)")
        c["vni"] = self.integer("cluster.vni", _get(m, "vni", 1), 1, MAX_VNI)
        c["vxlan_port"] = self.integer("cluster.vxlanPort", _get(m, "vxlanPort", 4789), 1, 65535)
        w = _get(m, "workers", "auto")
        c["workers"] = w if w == "auto" else self.integer("cluster.workers", w, 1, MAX_WORKERS,
                                                          ' (or "auto")')
        return c

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
            cidr, given = None, _get(m, "podCIDR", "auto")
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
            labels = self.labels(f"{path}.labels", _get(m, "labels", {}))
            pods.append(PodSpec(name, node, labels or {}))
        return tuple(pods)

    def services(self, value, svc_cidr):
        services, names, ips = [], {}, {}
        for path, m in self.items("services", value, "services"):
            if not self.mapping(path, m, "service"):
                continue
            name = self.name(f"{path}.name", m.get("name"), LABEL_MAX)
            self.unique(names, name, f"{path}.name", f"service name {name!r}", "unique service names")
            ip, given = None, _get(m, "clusterIP", "auto")
            if given != "auto":
                ip = self.cluster_ip(f"{path}.clusterIP", given, svc_cidr, ips)
            selector = self.labels(f"{path}.selector", _get(m, "selector", {}))
            affinity = self.choice(f"{path}.sessionAffinity", _get(m, "sessionAffinity", "None"),
                                   ("None", "ClientIP"))
            timeout = self.integer(f"{path}.sessionAffinityTimeout",
                                   _get(m, "sessionAffinityTimeout", DEFAULT_AFFINITY_TIMEOUT), 1, 86400)
            ports = self.ports(f"{path}.ports", m.get("ports"))
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

    def ports(self, path, value):
        items = self.items(path, value, "ports", 1)
        several = len(items) > 1
        ports, names, keys = [], {}, {}
        for p, m in items:
            if not self.mapping(p, m, "port"):
                continue
            name = m.get("name")
            if name is not None or several:
                name = self.name(f"{p}.name", name, LABEL_MAX,
                                 ", required when a service has several ports" if several else "")
                self.unique(names, name, f"{p}.name", f"port name {name!r}",
                            "port names unique within the service")
            port = self.integer(f"{p}.port", m.get("port"), 1, 65535)
            target = m.get("targetPort")
            target = port if target is None else self.integer(f"{p}.targetPort", target, 1, 65535)
            protocol = self.choice(f"{p}.protocol", _get(m, "protocol", "TCP"), ("TCP", "UDP"))
            if port and protocol:
                self.unique(keys, (port, protocol), f"{p}.port", f"port {port}/{protocol}",
                            "each port and protocol once per service")
            ports.append(ServicePort(name, port, target, protocol))
        return tuple(ports)
