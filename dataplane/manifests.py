"""Kubernetes-style manifests: the Services, EndpointSlices and Pods users `podnet apply -f` to a
running cluster, and the ServiceStore that holds the services and resolves them into what the
dataplane loads (the cluster creates the Pods itself: split_pods parts them from the rest).

Every problem of a file is reported together in one ManifestError; each reads
`{source}: document {i} ({kind}/{name}): {path}: {what is wrong}; expected {what}`, with "?" for a
kind or name that could not be read and `document {i}, item {j}` inside a `kind: List`. As in
spec.py (both use validate.py's checkers), a key given as null counts as absent.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Network
from types import MappingProxyType
from typing import Mapping

import yaml

from .ipam import SERVICE_OFFSET
from .textload import FastStrictSafeLoader, check_depth, json_loads
from .spec import DEFAULT_AFFINITY_TIMEOUT, NAME_MAX
# ServicePort is also imported from here, as before validate.py held it
from .validate import LABEL_MAX, Checker, ServicePort, describe, get, load_problem, message, read_text

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
LOAD_BALANCING = "podnet.io/load-balancing"
MAX_AFFINITY_TIMEOUT = 86400  # Kubernetes' limit for sessionAffinityConfig.clientIP.timeoutSeconds

_API_VERSIONS = {"Service": "v1", "EndpointSlice": "discovery.k8s.io/v1", "Pod": "v1", "List": "v1"}
_FIELDS = {
    "List": ("apiVersion", "kind", "metadata", "items"),
    "Service": ("apiVersion", "kind", "metadata", "spec"),
    "EndpointSlice": ("apiVersion", "kind", "metadata", "addressType", "ports", "endpoints"),
    "Pod": ("apiVersion", "kind", "metadata", "spec", "status"),  # status: as kubectl prints it; not read
    # uid, resourceVersion and creationTimestamp are accepted so `kubectl get -o yaml` output applies
    "metadata": ("name", "namespace", "labels", "annotations", "uid", "resourceVersion",
                 "creationTimestamp"),
    "spec": ("type", "clusterIP", "selector", "ports", "sessionAffinity", "sessionAffinityConfig"),
    # containers are accepted and ignored so a kubectl-style pod applies: podnet's pods run none
    "pod spec": ("nodeName", "containers"),
    "service port": ("name", "port", "targetPort", "protocol"),
    "slice port": ("name", "port", "protocol"),
    "endpoint": ("addresses", "conditions", "nodeName"),
    "conditions": ("ready", "serving", "terminating"),
    "sessionAffinityConfig": ("clientIP",),
    "clientIP": ("timeoutSeconds",),
}
# A named targetPort is an IANA service name: at most 15 characters, with at least one letter.
_PORT_NAME = re.compile(r"(?=.*[a-z])[a-z0-9]([-a-z0-9]*[a-z0-9])?")


class ManifestError(ValueError):
    """Every problem found in one file or one apply/delete; str() gives one per line."""

    def __init__(self, errors):
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


class _Object:
    """What Services, EndpointSlices and Pods share: identity, and where they were read from."""

    @property
    def key(self):
        return self.namespace, self.name

    @property
    def ref(self):  # as kubectl prints it, with the namespace
        return f"{self.kind.lower()}/{self.namespace}/{self.name}"

    def error(self, path, wrong, expected):
        where = self.origin or f"<manifest>: document ? ({self.kind}/{self.name})"
        return message(where, path, wrong, expected)


@dataclass(frozen=True)
class Service(_Object):
    kind = "Service"
    namespace: str
    name: str
    cluster_ip: IPv4Address | None  # None until the store allocates one
    selector: Mapping[str, str] = field(hash=False)
    ports: tuple[ServicePort, ...]
    session_affinity: str = "None"
    affinity_timeout: int = DEFAULT_AFFINITY_TIMEOUT
    load_balancing: str = "random"
    # where it was read, "{source}: document {i} ({kind}/{name})", to begin error messages
    origin: str = field(default="", compare=False, repr=False)

    def __post_init__(self):  # a read-only view keeps the frozen object frozen
        object.__setattr__(self, "selector", MappingProxyType(dict(self.selector)))

    def to_manifest(self):
        return {
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": self.name, "namespace": self.namespace,
                         "annotations": {LOAD_BALANCING: self.load_balancing}},
            "spec": {
                "type": "ClusterIP",
                "clusterIP": str(self.cluster_ip) if self.cluster_ip else "",
                "selector": dict(self.selector),
                "ports": [{"name": p.name, "port": p.port, "targetPort": p.target_port,
                           "protocol": p.protocol} for p in self.ports],
                "sessionAffinity": self.session_affinity,
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": self.affinity_timeout}},
            },
        }


@dataclass(frozen=True)
class EndpointPort:
    name: str  # "" allowed
    port: int
    protocol: str = "TCP"


@dataclass(frozen=True)
class Endpoint:
    address: IPv4Address
    ready: bool = True
    node_name: str | None = None


@dataclass(frozen=True)
class EndpointSlice(_Object):
    kind = "EndpointSlice"
    namespace: str
    name: str
    service_name: str
    ports: tuple[EndpointPort, ...]  # empty: every port of the service, on its targetPort
    endpoints: tuple[Endpoint, ...]
    origin: str = field(default="", compare=False, repr=False)

    def to_manifest(self):
        def endpoint(e):
            return {"addresses": [str(e.address)], "conditions": {"ready": e.ready},
                    **({"nodeName": e.node_name} if e.node_name else {})}
        return {
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": self.name, "namespace": self.namespace,
                         "labels": {SERVICE_NAME_LABEL: self.service_name}},
            "addressType": "IPv4",
            "ports": [{"name": p.name, "port": p.port, "protocol": p.protocol} for p in self.ports],
            "endpoints": [endpoint(e) for e in self.endpoints],
        }


@dataclass(frozen=True)
class Pod(_Object):
    kind = "Pod"
    namespace: str
    name: str
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    node_name: str | None = None  # None: not given; the caller decides (the cluster's first node)
    origin: str = field(default="", compare=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "labels", MappingProxyType(dict(self.labels)))

    def to_manifest(self):
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": self.name, "namespace": self.namespace, "labels": dict(self.labels)},
                "spec": {"nodeName": self.node_name} if self.node_name else {}}


def split_pods(objects):
    """(pods, others) of parsed objects, each in order: the cluster creates the Pods itself and
    hands the rest to a ServiceStore. The same Pod twice is an error, as the same Service twice
    is in ServiceStore.apply."""
    pods, others, seen, errors = [], [], set(), []
    for obj in objects:
        if not isinstance(obj, Pod):
            others.append(obj)
        elif obj.key in seen:
            errors.append(_twice(obj))
        else:
            seen.add(obj.key)
            pods.append(obj)
    if errors:
        raise ManifestError(errors)
    return pods, others


def _twice(obj):
    return obj.error("metadata.name", f"{obj.ref} appears twice", "each object once per apply")


def load_manifests(path):
    return parse_manifests(read_text(path, ManifestError, "(file): cannot read it"), str(path))


def parse_manifests(text, source="<manifest>"):
    """The Services, EndpointSlices and Pods of a multi-document YAML text, in order."""
    docs = []
    if text.lstrip()[:1] == "{":
        # JSON (kubectl -o json) is YAML too, but json parses it ~50x faster
        try:
            doc = json_loads(text)
        except ValueError:
            pass                                   # not JSON after all: YAML reports the error
        else:
            return _parse_documents([doc], source)
    try:
        check_depth(text)
        docs.extend(yaml.load_all(text, Loader=FastStrictSafeLoader))
    except (ValueError, RecursionError, yaml.YAMLError) as exc:
        raise ManifestError([f"{source}: document {len(docs) + 1} (?/?): {load_problem(exc)}; "
                             "expected valid YAML"]) from None
    return _parse_documents(docs, source)


def _parse_documents(docs, source):
    objects, errors = [], []
    for i, doc in enumerate(docs, 1):
        if doc is None:
            continue
        items = [(f"{source}: document {i}", doc)]
        if isinstance(doc, dict) and doc.get("kind") == "List":
            c = _Checker(f"{source}: document {i} ({_label(doc)})")
            c.header(doc, "List")
            items = [(f"{source}: document {i}, item {j}", item)
                     for j, (_, item) in enumerate(c.items("items", doc.get("items"), "objects"), 1)]
            errors += c.errors
        for where, item in items:
            c = _Checker(f"{where} ({_label(item)})")
            obj = c.document(item)
            errors += c.errors
            if not c.errors:
                objects.append(obj)
    if errors:
        raise ManifestError(errors)
    return objects


def _label(doc):
    """kind/name for error messages, read before the document is validated."""
    kind = doc.get("kind") if isinstance(doc, dict) else None
    meta = doc.get("metadata") if isinstance(doc, dict) else None
    name = meta.get("name") if isinstance(meta, dict) else None
    return f"{kind if isinstance(kind, str) else '?'}/{name if isinstance(name, str) else '?'}"


class _Checker(Checker):
    """validate.py's checkers (integer, name, items, labels, ...) plus those of the manifest kinds."""

    def fields(self, path, value, kind):
        """True if value is a mapping; reports each unknown field by its path."""
        keys = _FIELDS[kind]
        if not isinstance(value, dict):
            self.bad(path, value, f"a mapping with fields {', '.join(keys)}")
            return False
        for key in value:
            if key not in keys:
                self.error(f"{path}.{key}" if path else str(key), "unknown field",
                           "one of " + ", ".join(keys))
        return True

    def section(self, path, value, kind):
        """value if it is a mapping of known fields, else {} (after reporting why)."""
        return value if self.fields(path, value, kind) else {}

    def header(self, doc, kind):
        self.fields("", doc, kind)
        version = doc.get("apiVersion")
        if version != _API_VERSIONS[kind]:
            self.bad("apiVersion", version, f"{_API_VERSIONS[kind]!r} for a {kind}")

    def boolean(self, path, value, default):
        if value is None:
            return default
        if not isinstance(value, bool):
            self.bad(path, value, "true or false")
        return value

    def document(self, doc):
        """The Service, EndpointSlice or Pod doc describes; None after recording its errors."""
        if not isinstance(doc, dict):
            return self.bad("(document)", doc, "a mapping with apiVersion, kind, metadata "
                                               "(a Service, EndpointSlice or List, or a Pod)")
        kind = doc.get("kind")
        if kind == "List":
            return self.error("kind", "a List inside a List", "Service, EndpointSlice or Pod items")
        if kind not in ("Service", "EndpointSlice", "Pod"):
            return self.bad("kind", kind, "Service, EndpointSlice or List, or Pod")
        self.header(doc, kind)
        meta = self.section("metadata", doc.get("metadata"), "metadata")
        if kind == "Pod":
            name = self.name("metadata.name", meta.get("name"), NAME_MAX,
                             " (it becomes part of a network namespace name)")
        else:
            name = self.name("metadata.name", meta.get("name"), LABEL_MAX)
        namespace = self.name("metadata.namespace", get(meta, "namespace", "default"), LABEL_MAX)
        labels = self.labels("metadata.labels", get(meta, "labels", {})) or {}
        annotations = self.labels("metadata.annotations", get(meta, "annotations", {})) or {}
        if kind == "Service":
            return self.service(namespace, name, annotations, get(doc, "spec", {}))
        if kind == "Pod":
            return self.pod(namespace, name, labels, get(doc, "spec", {}))
        return self.endpoint_slice(namespace, name, labels, doc)

    def pod(self, namespace, name, labels, spec):
        node = self.section("spec", spec, "pod spec").get("nodeName")
        if node is not None:  # whether the cluster has that node is the cluster's to say
            node = self.name("spec.nodeName", node, NAME_MAX, " (the name of a node)")
        if not self.errors:
            return Pod(namespace, name, labels, node, self.source)

    def service(self, namespace, name, annotations, spec):
        spec = self.section("spec", spec, "spec")
        kind = get(spec, "type", "ClusterIP")
        if kind != "ClusterIP":
            self.error("spec.type", f"{describe(kind)} is not supported", "'ClusterIP' (podnet's only type)")
        ip, expected = get(spec, "clusterIP", ""), "an IPv4 address, or none for one picked automatically"
        if ip == "None":
            self.error("spec.clusterIP", "headless services ('None') are not supported", expected)
        ip = None if ip in ("", "None") else self.address("spec.clusterIP", ip, expected)
        selector = self.labels("spec.selector", get(spec, "selector", {})) or {}
        ports = self.service_ports("spec.ports", spec.get("ports"),
                                   lambda at, item: self.fields(at, item, "service port"), "", self.target_port)
        affinity = self.choice("spec.sessionAffinity", get(spec, "sessionAffinity", "None"),
                               ("None", "ClientIP"))
        path = "spec.sessionAffinityConfig"
        config = self.section(path, get(spec, "sessionAffinityConfig", {}), "sessionAffinityConfig")
        client = self.section(f"{path}.clientIP", get(config, "clientIP", {}), "clientIP")
        timeout = self.integer(f"{path}.clientIP.timeoutSeconds",
                               get(client, "timeoutSeconds", DEFAULT_AFFINITY_TIMEOUT),
                               1, MAX_AFFINITY_TIMEOUT)
        balancing = self.choice(f"metadata.annotations[{LOAD_BALANCING!r}]",
                                annotations.get(LOAD_BALANCING, "random"), ("random", "maglev"))
        if not self.errors:
            return Service(namespace, name, ip, selector, ports, affinity, timeout, balancing, self.source)

    def target_port(self, path, value):
        """A port number, or the name of a port of the service's EndpointSlices."""
        if not isinstance(value, str):
            return self.port(path, value, " or a port name")
        if len(value) > 15 or not _PORT_NAME.fullmatch(value):
            return self.error(path, f"{value!r} is not a port name",
                              "a port number from 1 to 65535, or a port name of at most 15 characters "
                              "(a-z, 0-9 and '-', with a letter)")
        return value

    def endpoint_address(self, path, value):
        """An endpoint's IPv4 address; like Kubernetes' ValidateEndpointIP,
        none that no pod can have (traffic DNATed there would go nowhere)."""
        expected = "a unicast IPv4 address a pod can have"
        addr = self.address(path, value, expected)
        if addr is None:
            return None
        for bad, why in ((addr.is_unspecified, "is unspecified"), (addr.is_loopback, "is loopback (127.0.0.0/8)"),
                         (addr.is_link_local, "is link-local (169.254.0.0/16)"),
                         (addr.is_multicast, "is multicast (224.0.0.0/4)"),
                         (addr == IPv4Address("255.255.255.255"), "is the broadcast address")):
            if bad:
                return self.error(path, f"{value!r} {why}", expected)
        return addr

    def endpoint_slice(self, namespace, name, labels, doc):
        service = labels.get(SERVICE_NAME_LABEL)
        self.name(f"metadata.labels[{SERVICE_NAME_LABEL!r}]", service, LABEL_MAX, " (the slice's Service)")
        self.choice("addressType", doc.get("addressType"), ("IPv4",))
        ports, names = [], {}
        for path, m in self.items("ports", get(doc, "ports", []), "ports"):
            if not self.fields(path, m, "slice port"):
                continue
            port_name = get(m, "name", "")
            if port_name:
                self.name(f"{path}.name", port_name, LABEL_MAX)
            self.unique(names, port_name, f"{path}.name", f"port name {port_name!r}",
                        "port names unique within the slice")
            ports.append(EndpointPort(port_name, self.port(f"{path}.port", m.get("port")),
                                      self.protocol(path, m)))
        endpoints = []
        for path, m in self.items("endpoints", get(doc, "endpoints", []), "endpoints"):
            if not self.fields(path, m, "endpoint"):
                continue
            # Kubernetes allows up to 100 fungible addresses per endpoint; kube-proxy uses the first.
            addresses = [self.endpoint_address(p, a)
                         for p, a in self.items(f"{path}.addresses", m.get("addresses"), "addresses", 1, 100)]
            conditions = self.section(f"{path}.conditions", get(m, "conditions", {}), "conditions")
            ready = self.boolean(f"{path}.conditions.ready", conditions.get("ready"), True)
            for key in ("serving", "terminating"):
                self.boolean(f"{path}.conditions.{key}", conditions.get(key), None)
            node = m.get("nodeName")
            if node is not None and not (isinstance(node, str) and node):
                self.bad(f"{path}.nodeName", node, "the name of a node")
            if addresses:
                endpoints.append(Endpoint(addresses[0], ready, node))
        if not self.errors:
            return EndpointSlice(namespace, name, service, tuple(ports), tuple(endpoints), self.source)


class ServiceStore:
    """What the cluster holds: services and endpoint slices by (namespace, name), plus the pods
    (name -> (ip, labels), kept by reference so the cluster can update them) used for
    selector-based endpoints."""

    def __init__(self, pods=None, service_cidr="10.96.0.0/12", allocate_ip=None):
        self.pods = {} if pods is None else pods
        self.service_cidr = IPv4Network(service_cidr)
        self.allocate_ip = allocate_ip  # (namespace, name) -> address: the cluster's IPAM, if any
        self.services = {}
        self.slices = {}

    def apply(self, objects):
        """Creates or replaces objects, all or none: every check runs before anything changes."""
        _no_pods(objects)
        services, slices = dict(self.services), dict(self.slices)
        applied = {}  # ref -> (the dict it goes in, its key, the object it replaces or None)
        errors, holders = [], {s.cluster_ip: s.ref for s in self.services.values()}
        for obj in objects:
            if obj.ref in applied:
                errors.append(_twice(obj))
                continue
            store = services if isinstance(obj, Service) else slices
            old = store.get(obj.key)
            applied[obj.ref] = store, obj.key, old
            if isinstance(obj, Service):
                if old and obj.cluster_ip is None:
                    obj = replace(obj, cluster_ip=old.cluster_ip)  # re-applied without one: keeps its address
                elif old and obj.cluster_ip != old.cluster_ip:
                    errors.append(obj.error("spec.clusterIP",
                                            f"clusterIP is immutable ({obj.ref} has {old.cluster_ip})",
                                            f"{old.cluster_ip} or no clusterIP"))
                elif obj.cluster_ip and not old:
                    errors += self._check_ip(obj, obj.cluster_ip, holders)
            store[obj.key] = obj
        errors += self._check_slices(services, slices, applied)
        if errors:
            raise ManifestError(errors)
        # Addresses are allocated only once everything else is valid, so a failed apply takes none.
        for key, svc in services.items():
            if svc.cluster_ip is None:
                services[key] = replace(svc, cluster_ip=self._allocate(svc, holders))
        self.services, self.slices = services, slices
        result = {"created": [], "configured": [], "unchanged": []}
        for ref, (store, key, old) in applied.items():
            verb = "created" if old is None else "unchanged" if old == store[key] else "configured"
            result[verb].append(f"{ref} {verb}")
        return result

    def _check_ip(self, svc, ip, holders):
        """Errors for svc taking ip; records svc as its holder if there are none."""
        net, expected = self.service_cidr, f"an unused address inside the service CIDR {self.service_cidr}"
        if ip not in net:
            return [svc.error("spec.clusterIP", f"{ip} is outside the service CIDR {net}", expected)]
        if ip in (net.network_address, net.broadcast_address):
            return [svc.error("spec.clusterIP", f"{ip} is the network or broadcast address of {net}",
                              expected)]
        if holders.get(ip, svc.ref) != svc.ref:
            return [svc.error("spec.clusterIP", f"{ip} is already used by {holders[ip]}", expected)]
        holders[ip] = svc.ref
        return []

    def _allocate(self, svc, holders):
        net = self.service_cidr
        if self.allocate_ip:
            try:
                ip = IPv4Address(self.allocate_ip(svc.namespace, svc.name))
            except ValueError as exc:
                raise ManifestError([svc.error("spec.clusterIP", f"cannot allocate an address ({exc})",
                                               "a free address in the service CIDR")]) from None
            errors = self._check_ip(svc, ip, holders)
            if errors:
                raise ManifestError(errors)
            return ip
        pool = range(int(net.network_address) + SERVICE_OFFSET, int(net.broadcast_address))
        ip = next((IPv4Address(a) for a in pool if IPv4Address(a) not in holders), None)
        if ip is None:
            raise ManifestError([svc.error(
                "spec.clusterIP", f"the service CIDR {net} has no free address left",
                f"a free address (automatic ones start at network+{SERVICE_OFFSET})")])
        holders[ip] = svc.ref
        return ip

    @staticmethod
    def _check_slices(services, slices, applied):
        """Each applied slice needs its service; named targetPorts must resolve in every slice
        of their service (reported on the slice if it was applied, else on the service)."""
        errors = []
        for sl in slices.values():
            svc = services.get((sl.namespace, sl.service_name))
            if svc is None:  # only applied slices can lack one: deleting a service deletes its slices
                errors.append(sl.error(f"metadata.labels[{SERVICE_NAME_LABEL!r}]",
                                       f"no service {sl.service_name!r} in namespace {sl.namespace!r}",
                                       "a Service in the cluster or in the same apply"))
                continue
            if sl.ref not in applied and svc.ref not in applied:
                continue
            for i, sp in enumerate(svc.ports):
                if not isinstance(sp.target_port, str) or _slice_port(sl, svc, sp) is not None:
                    continue
                if sl.ref in applied:
                    errors.append(sl.error("ports", f"no port for targetPort {sp.target_port!r} of {svc.ref}",
                                           f"a {sp.protocol} port named {sp.name or sp.target_port!r}"
                                           + (f" or {sp.target_port!r}" if sp.name else "")))
                else:
                    errors.append(svc.error(f"spec.ports[{i}].targetPort",
                                            f"{sp.target_port!r} matches no port of {sl.ref}",
                                            "a port name every EndpointSlice of the service has"))
        return errors

    def delete(self, objects):
        """Deletes objects by kind, namespace and name, all or none; a Service takes its slices along."""
        _no_pods(objects)
        errors, doomed = [], {}  # ref -> (dict, key), in order
        by_service = {}          # one pass over the slices, not one per deleted Service
        for sl in self.slices.values():
            by_service.setdefault((sl.namespace, sl.service_name), []).append(sl)
        for obj in objects:
            store = self.services if isinstance(obj, Service) else self.slices
            if obj.key not in store:
                errors.append(obj.error("metadata.name", f"{obj.ref} not found",
                                        f"a {obj.kind} in the cluster"))
                continue
            doomed[obj.ref] = store, obj.key
            if isinstance(obj, Service):
                for sl in by_service.get(obj.key, ()):
                    doomed[sl.ref] = self.slices, sl.key
        if errors:
            raise ManifestError(errors)
        for store, key in doomed.values():
            del store[key]
        return [f"{ref} deleted" for ref in doomed]

    def resolve(self):
        """One entry per (service, port), with its ready backends sorted."""
        entries = []
        by_service = {}                   # one pass over the slices, not one per service
        for sl in self.slices.values():
            by_service.setdefault((sl.namespace, sl.service_name), []).append(sl)
        for svc in sorted(self.services.values(), key=lambda s: s.key):
            slices = by_service.get(svc.key, [])
            for sp in svc.ports:
                if slices:
                    backends = {(e.address, port) for sl in slices
                                if (port := _slice_port(sl, svc, sp)) is not None
                                for e in sl.endpoints if e.ready}
                elif svc.selector and isinstance(sp.target_port, int):
                    backends = {(IPv4Address(ip), sp.target_port) for ip, labels in self.pods.values()
                                if ip and svc.selector.items() <= labels.items()}
                else:
                    backends = set()
                entries.append({
                    "key": f"{svc.namespace}/{svc.name}:{sp.name or sp.port}",
                    "service": f"{svc.namespace}/{svc.name}",
                    "vip": str(svc.cluster_ip), "port": sp.port, "protocol": sp.protocol,
                    "backends": [[str(ip), port] for ip, port in sorted(backends)],
                    "affinity_timeout": svc.affinity_timeout if svc.session_affinity == "ClientIP" else 0,
                    "load_balancing": svc.load_balancing,
                })
        return entries

    def snapshot(self):
        """Everything applied, as one `kind: List` manifest of plain dicts (JSON-ready)."""
        return {"apiVersion": "v1", "kind": "List", "items": [
            o.to_manifest() for store in (self.services, self.slices) for _, o in sorted(store.items())]}

    def restore(self, snapshot):
        """Replaces the services and slices with those of a snapshot() (pods are left as they are)."""
        objects = _parse_documents([snapshot], "<snapshot>")
        self.services = {o.key: o for o in objects if isinstance(o, Service)}
        self.slices = {o.key: o for o in objects if isinstance(o, EndpointSlice)}


def _no_pods(objects):
    """The store holds no Pods: handing it one is the caller's mistake, reported as one."""
    errors = [o.error("kind", f"{o.ref} is a Pod, which the service store does not hold",
                      "Services and EndpointSlices (the cluster creates Pods: split them out with split_pods)")
              for o in objects if isinstance(o, Pod)]
    if errors:
        raise ManifestError(errors)


def _slice_port(sl, svc, sp):
    """The port on which slice sl's endpoints serve service port sp, or None if they do not."""
    if not sl.ports:  # a slice without ports serves every port of its service on its targetPort
        return sp.target_port if isinstance(sp.target_port, int) else None
    same = [p for p in sl.ports if p.protocol == sp.protocol]
    for wanted in (sp.name, sp.target_port):  # Kubernetes names slice ports after the service port
        for p in same:
            if p.name == wanted:
                return p.port
    # A hand-written slice with one port may name it differently, unless it names another service port.
    if len(sl.ports) == 1 and same and same[0].name not in {q.name for q in svc.ports if q is not sp}:
        return same[0].port
    return None
