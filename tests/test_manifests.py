"""Manifests: parsing Services, EndpointSlices and Pods, precise errors, and the ServiceStore's
apply, delete, resolve and snapshot."""
import json
from ipaddress import IPv4Address

import pytest

from dataplane.manifests import (Endpoint, EndpointPort, EndpointSlice, ManifestError, Pod, Service,
                                 ServicePort, ServiceStore, load_manifests, parse_manifests, split_pods)

REALISTIC = """\
# web: two named ports, backends from its EndpointSlice (one endpoint not ready)
apiVersion: v1
kind: Service
metadata:
  name: web
  labels: {app: web}
  uid: 0c7e-11
  resourceVersion: "42"
spec:
  selector: {app: web}
  ports:
    - {name: http, port: 80, targetPort: http}
    - {name: metrics, port: 9090, targetPort: 9100}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc12
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports:
  - {name: metrics, port: 9100}
  - {name: http, port: 8080, protocol: TCP}
endpoints:
  - addresses: [10.244.1.2]
    conditions: {ready: true}
    nodeName: node-b
  - addresses: [10.244.0.2]
    nodeName: node-a
  - addresses: [10.244.0.3]
    conditions: {ready: false, serving: true, terminating: true}
---
---
apiVersion: v1
kind: Service
metadata: {name: dns, namespace: kube-system}
spec:
  clusterIP: 10.96.0.10
  ports: [{port: 53, protocol: UDP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: dns-1
  namespace: kube-system
  labels: {kubernetes.io/service-name: dns}
addressType: IPv4
ports: [{name: "", port: 5353, protocol: UDP}]
endpoints:
  - addresses: [10.244.1.9]
---
apiVersion: v1
kind: Service
metadata:
  name: api
  annotations: {podnet.io/load-balancing: maglev}
spec:
  selector: {app: api}
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}
  ports: [{port: 443, targetPort: 8443}]
"""

PODS = {
    "api-a": ("10.244.0.5", {"app": "api", "tier": "backend"}),
    "api-b": ("10.244.1.5", {"app": "api"}),
    "web-a": ("10.244.0.2", {"app": "web"}),
    "client": ("10.244.0.9", {"app": "client"}),
}

SVC = """\
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  ports: [{name: http, port: 80, targetPort: 8080}]
"""
MAGLEV = SVC.replace("{name: web}", "{name: web, annotations: {podnet.io/load-balancing: maglev}}")


def slice_doc(endpoints, name="web-1", service="web", ports="[{name: http, port: 8080}]"):
    return f"""\
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}, labels: {{kubernetes.io/service-name: {service}}}}}
addressType: IPv4
ports: {ports}
endpoints: [{", ".join(f"{{addresses: [{a}]}}" for a in endpoints)}]
"""


def applied(*texts, **store_args):
    store = ServiceStore(**store_args)
    for text in texts:
        store.apply(parse_manifests(text))
    return store


def backends(store):
    return {e["key"]: e["backends"] for e in store.resolve()}


def test_realistic_file_parses():
    web, web_slice, dns, dns_slice, api = parse_manifests(REALISTIC, "app.yaml")
    assert web == Service("default", "web", None, {"app": "web"},
                          (ServicePort("http", 80, "http", "TCP"), ServicePort("metrics", 9090, 9100, "TCP")),
                          "None", 10800, "random")
    assert web_slice == EndpointSlice(
        "default", "web-abc12", "web", (EndpointPort("metrics", 9100, "TCP"), EndpointPort("http", 8080, "TCP")),
        (Endpoint(IPv4Address("10.244.1.2"), True, "node-b"), Endpoint(IPv4Address("10.244.0.2"), True, "node-a"),
         Endpoint(IPv4Address("10.244.0.3"), False, None)))
    assert (dns.namespace, dns.cluster_ip, dns.ports) == (
        "kube-system", IPv4Address("10.96.0.10"), (ServicePort("", 53, 53, "UDP"),))
    assert dns_slice.ports == (EndpointPort("", 5353, "UDP"),)
    assert (api.session_affinity, api.affinity_timeout, api.load_balancing) == ("ClientIP", 600, "maglev")


def test_realistic_file_resolves():
    store = ServiceStore(pods=PODS)
    result = store.apply(parse_manifests(REALISTIC, "app.yaml"))
    assert result == {"created": ["service/default/web created", "endpointslice/default/web-abc12 created",
                                  "service/kube-system/dns created", "endpointslice/kube-system/dns-1 created",
                                  "service/default/api created"],
                      "configured": [], "unchanged": []}
    # Automatic addresses start at network+10 and skip 10.96.0.10, taken explicitly in the same file.
    assert store.resolve() == [
        {"key": "default/api:443", "service": "default/api", "vip": "10.96.0.12", "port": 443,
         "protocol": "TCP", "backends": [["10.244.0.5", 8443], ["10.244.1.5", 8443]],
         "affinity_timeout": 600, "load_balancing": "maglev"},
        {"key": "default/web:http", "service": "default/web", "vip": "10.96.0.11", "port": 80,
         "protocol": "TCP", "backends": [["10.244.0.2", 8080], ["10.244.1.2", 8080]],  # 10.244.0.3 not ready
         "affinity_timeout": 0, "load_balancing": "random"},
        {"key": "default/web:metrics", "service": "default/web", "vip": "10.96.0.11", "port": 9090,
         "protocol": "TCP", "backends": [["10.244.0.2", 9100], ["10.244.1.2", 9100]],
         "affinity_timeout": 0, "load_balancing": "random"},
        {"key": "kube-system/dns:53", "service": "kube-system/dns", "vip": "10.96.0.10", "port": 53,
         "protocol": "UDP", "backends": [["10.244.1.9", 5353]],
         "affinity_timeout": 0, "load_balancing": "random"},
    ]


def test_apply_twice_is_unchanged():
    store = ServiceStore(pods=PODS)
    objects = parse_manifests(REALISTIC)
    store.apply(objects)
    before = store.snapshot()
    result = store.apply(parse_manifests(REALISTIC, "again.yaml"))
    assert result["created"] == result["configured"] == [] and len(result["unchanged"]) == 5
    assert store.snapshot() == before


def test_changed_slice_replaces_its_endpoints():
    store = applied(SVC, slice_doc(["10.244.0.2", "10.244.1.2"]), slice_doc(["10.244.2.2"], name="web-2"))
    assert backends(store)["default/web:http"] == [
        ["10.244.0.2", 8080], ["10.244.1.2", 8080], ["10.244.2.2", 8080]]
    result = store.apply(parse_manifests(slice_doc(["10.244.0.7", "10.244.0.2", "10.244.0.7"])))
    assert result == {"created": [], "configured": ["endpointslice/default/web-1 configured"], "unchanged": []}
    assert backends(store)["default/web:http"] == [  # web-1 replaced, web-2 untouched, duplicates merged
        ["10.244.0.2", 8080], ["10.244.0.7", 8080], ["10.244.2.2", 8080]]


def test_not_ready_endpoints_are_kept_but_not_backends():
    text = slice_doc([]).replace("endpoints: []", """endpoints:
  - {addresses: [10.244.0.2], conditions: {ready: false}}
  - {addresses: [10.244.0.3], conditions: {ready: true}}
  - {addresses: [10.244.0.4], conditions: {}}""")
    (sl,) = parse_manifests(text)
    assert [e.ready for e in sl.endpoints] == [False, True, True]
    store = applied(SVC, text)
    assert backends(store)["default/web:http"] == [["10.244.0.3", 8080], ["10.244.0.4", 8080]]


def test_selector_endpoints_come_from_matching_pods():
    pods = dict(PODS)
    store = applied(REALISTIC.split("---\n")[0], pods=pods)  # web without its slice
    svc = """\
apiVersion: v1
kind: Service
metadata: {name: api}
spec:
  selector: {app: api, tier: backend}
  ports: [{name: grpc, port: 81, targetPort: 9000}, {name: named, port: 82, targetPort: grpc}]
"""
    store.apply(parse_manifests(svc))
    got = backends(store)
    assert got["default/web:http"] == []  # a named targetPort needs EndpointSlice ports
    assert got["default/web:metrics"] == [["10.244.0.2", 9100]]
    assert got["default/api:grpc"] == [["10.244.0.5", 9000]]  # api-b lacks tier: backend
    assert got["default/api:named"] == []
    pods["api-c"] = ("10.244.1.6", {"app": "api", "tier": "backend"})  # the store sees pods come and go
    assert backends(store)["default/api:grpc"] == [["10.244.0.5", 9000], ["10.244.1.6", 9000]]


def test_service_without_selector_or_slices_has_no_backends():
    assert backends(applied(SVC, pods=PODS)) == {"default/web:http": []}


def test_slice_ports_match_by_name_then_protocol_then_target_port():
    two = SVC.replace("ports: [", "ports: [{name: admin, port: 81, targetPort: 9001}, ")
    # A slice's one port serves each service port of its protocol, unless named after another one.
    store = applied(two, slice_doc(["10.244.0.2"], ports="[{port: 7000}]"))
    assert backends(store) == {"default/web:admin": [["10.244.0.2", 7000]], "default/web:http": [["10.244.0.2", 7000]]}
    # A slice's one port named after another service port does not serve this one.
    store = applied(two, slice_doc(["10.244.0.2"], ports="[{name: admin, port: 7001}]"))
    assert backends(store) == {"default/web:admin": [["10.244.0.2", 7001]], "default/web:http": []}
    # No ports: each service port's targetPort.
    store = applied(two, slice_doc(["10.244.0.2"], ports="[]"))
    assert backends(store) == {"default/web:admin": [["10.244.0.2", 9001]], "default/web:http": [["10.244.0.2", 8080]]}
    # Another protocol does not match.
    store = applied(two, slice_doc(["10.244.0.2"], ports="[{name: http, port: 8080, protocol: UDP}]"))
    assert backends(store) == {"default/web:admin": [], "default/web:http": []}


def test_a_list_is_flattened_and_empty_documents_skipped():
    items = (SVC, slice_doc(["10.244.0.2"]))
    text = "---\n---\napiVersion: v1\nkind: List\nmetadata: {resourceVersion: ''}\nitems:\n" + "".join(
        "- " + doc.replace("\n", "\n  ").rstrip() + "\n" for doc in items)
    objects = parse_manifests(text)
    assert [type(o) for o in objects] == [Service, EndpointSlice]
    with pytest.raises(ManifestError) as e:
        parse_manifests(text.replace("port: 8080}]\n  endpoints", "port: 0}]\n  endpoints"), "l.yaml")
    assert e.value.errors == ["l.yaml: document 2, item 2 (EndpointSlice/web-1): ports[0].port: 0 is out of range; "
                              "expected an integer from 1 to 65535"]


def test_cluster_ip_allocation():
    store = applied(SVC, service_cidr="10.100.0.0/24")
    assert str(store.services["default", "web"].cluster_ip) == "10.100.0.10"
    store.apply(parse_manifests(MAGLEV))
    assert str(store.services["default", "web"].cluster_ip) == "10.100.0.10"  # re-applied: keeps it
    store.apply(parse_manifests(SVC.replace("ports:", "clusterIP: 10.100.0.10\n  ports:")))  # the same one: fine
    calls = []

    def ipam(namespace, name):
        calls.append((namespace, name))
        return f"10.96.5.{len(calls)}"

    store = applied(SVC, SVC.replace("web", "db"), allocate_ip=ipam)
    assert calls == [("default", "web"), ("default", "db")]
    assert [e["vip"] for e in store.resolve()] == ["10.96.5.2", "10.96.5.1"]
    with pytest.raises(ManifestError, match=r"spec.clusterIP: the service CIDR 10.100.0.0/29 has no free address"):
        ServiceStore(service_cidr="10.100.0.0/29").apply(parse_manifests(SVC))


def test_apply_result_reports_configured():
    store = applied(REALISTIC, pods=PODS)
    result = store.apply(parse_manifests(MAGLEV))
    assert result == {"created": [], "configured": ["service/default/web configured"], "unchanged": []}


def errors_of(text):
    with pytest.raises(ManifestError) as e:
        parse_manifests(text, "bad.yaml")
    return e.value.errors


SLICE = slice_doc(["10.244.0.2"])
BAD = [
    # (manifest, path, phrase)
    ("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n", "kind",
     "got 'Deployment'; expected Service, EndpointSlice or List, or Pod"),
    (SVC.replace("apiVersion: v1", "apiVersion: v2"), "apiVersion", "got 'v2'; expected 'v1' for a Service"),
    (SLICE.replace("discovery.k8s.io/v1", "discovery.k8s.io/v1beta1"), "apiVersion",
     "expected 'discovery.k8s.io/v1' for a EndpointSlice"),
    (SVC.replace("ports:", "type: NodePort\n  ports:"), "spec.type", "'NodePort' is not supported"),
    (SVC.replace("ports:", "clusterIP: None\n  ports:"), "spec.clusterIP", "headless services ('None') are not supported"),
    (SVC.replace("ports:", "clusterIP: 10.96.0\n  ports:"), "spec.clusterIP", "'10.96.0' is not an IP address"),
    (SVC.replace("port: 80", "port: 70000"), "spec.ports[0].port", "70000 is out of range"),
    (SVC.replace("targetPort: 8080", "targetPort: 0"), "spec.ports[0].targetPort", "0 is out of range"),
    (SVC.replace("targetPort: 8080", "targetPort: '8080'"), "spec.ports[0].targetPort", "'8080' is not a port name"),
    (SVC.replace("ports: [", "ports: [{name: dup, port: 80}, "), "spec.ports[1].port", "duplicate port 80/TCP"),
    (SVC.replace("ports: [", "ports: [{name: http, port: 81}, "), "spec.ports[1].name", "duplicate port name 'http'"),
    (SVC.replace("ports: [", "ports: [{port: 81}, "), "spec.ports[0].name",
     "missing; expected a DNS-1123 label (a-z, 0-9 and '-', alphanumeric at both ends) of at most 63 characters, "
     "required when a service has several ports"),
    (SVC.replace("name: http", "name: 0"), "spec.ports[0].name", "got 0 (a number); expected a DNS-1123 label"),
    (SVC.replace("ports: [{name: http, port: 80, targetPort: 8080}]", "ports: []"), "spec.ports",
     "got 0 ports; expected a list of ports (at least 1)"),
    (SVC.replace("targetPort: 8080", "protocol: SCTP"), "spec.ports[0].protocol", "got 'SCTP'; expected 'TCP' or 'UDP'"),
    (SVC.replace("ports:", "sessionAffinity: Cookie\n  ports:"), "spec.sessionAffinity",
     "got 'Cookie'; expected 'None' or 'ClientIP'"),
    (SVC.replace("ports:", "sessionAffinityConfig: {clientIP: {timeoutSeconds: 86401}}\n  ports:"),
     "spec.sessionAffinityConfig.clientIP.timeoutSeconds", "86401 is out of range; expected an integer from 1 to 86400"),
    (SVC.replace("{name: web}", "{name: web, annotations: {podnet.io/load-balancing: rr}}"),
     "metadata.annotations['podnet.io/load-balancing']", "got 'rr'; expected 'random' or 'maglev'"),
    (SVC.replace("{name: web}", "{name: Web_1}"), "metadata.name", "'Web_1' is not a DNS-1123 label"),
    (SVC.replace("{name: web}", "{namespace: x}"), "metadata.name", "missing"),
    (SVC.replace("{name: web}", "{name: web, generateName: w-}"), "metadata.generateName",
     "unknown field; expected one of name, namespace, labels, annotations"),
    (SVC.replace("ports:", "externalIPs: [1.2.3.4]\n  ports:"), "spec.externalIPs", "unknown field"),
    (SVC.replace("targetPort: 8080", "nodePort: 30080"), "spec.ports[0].nodePort", "unknown field"),
    (SVC + "status: {}\n", "status", "unknown field"),
    (SVC.replace("ports:", "selector: {app: 1}\n  ports:"),
     "spec.selector.app", "got 1 (a number); expected a string"),
    (SLICE.replace("IPv4", "IPv6"), "addressType", "got 'IPv6'; expected 'IPv4'"),
    (SLICE.replace("[10.244.0.2]", "['fd00::2']"), "endpoints[0].addresses[0]", "'fd00::2' is IPv6"),
    (SLICE.replace("[10.244.0.2]", "[]"), "endpoints[0].addresses", "got 0 addresses"),
    (SLICE.replace("{addresses:", "{hostname: a, addresses:"), "endpoints[0].hostname", "unknown field"),
    (SLICE.replace("[10.244.0.2]}", "[10.244.0.2], conditions: {ready: 'yes'}}"), "endpoints[0].conditions.ready",
     "got 'yes'; expected true or false"),
    (SLICE.replace("port: 8080}", "port: 8080, appProtocol: http}"), "ports[0].appProtocol", "unknown field"),
    (SLICE.replace("[{name: http, port: 8080}]", "[{name: http, port: 8080}, {name: http, port: 8081}]"),
     "ports[1].name", "duplicate port name 'http'"),
    (SLICE.replace("labels: {kubernetes.io/service-name: web}", "labels: {app: web}"),
     "metadata.labels['kubernetes.io/service-name']", "missing"),
    ("- apiVersion: v1\n", "(document)", "got a list; expected a mapping"),
    ("just text\n", "(document)", "got 'just text'"),
    ("apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: List, items: []}\n", "kind", "a List inside a List"),
]


@pytest.mark.parametrize("text,path,phrase", BAD, ids=[f"{i:02}-{b[1]}" for i, b in enumerate(BAD)])
def test_invalid_manifests(text, path, phrase):
    errors = errors_of(text)
    assert any(f": {path}: " in e and phrase in e for e in errors), errors
    assert all(e.startswith("bad.yaml: document 1") for e in errors), errors


def test_malformed_yaml_names_line_and_column():
    [err] = errors_of(SVC + "---\n" + SVC.replace("spec:", "spec: ["))
    # libyaml and the pure-Python loader word the rest differently
    assert err.startswith("bad.yaml: document 2 (?/?): line 12, column 1: while parsing a flow sequence")
    assert err.endswith("; expected valid YAML")
    [err] = errors_of("a: b: c\n")
    assert err.startswith("bad.yaml: document 1 (?/?): line 1, column 5: mapping values are not allowed")


def test_every_error_of_a_file_is_reported_with_its_document():
    text = SVC.replace("port: 80", "port: 0") + "---\n" + SLICE.replace("IPv4", "FQDN") + "---\n42\n"
    assert errors_of(text) == [
        "bad.yaml: document 1 (Service/web): spec.ports[0].port: 0 is out of range; expected an integer from 1 to 65535",
        "bad.yaml: document 2 (EndpointSlice/web-1): addressType: got 'FQDN'; expected 'IPv4'",
        "bad.yaml: document 3 (?/?): (document): got 42 (a number); expected a mapping with apiVersion, kind, "
        "metadata (a Service, EndpointSlice or List, or a Pod)",
    ]


DNS = REALISTIC.split("---\n---\n")[1].rsplit("---\n", 1)[0]  # kube-system/dns and its slice
BAD_APPLY = [
    # (what the store holds, what is applied, error)
    ("", SLICE.replace("service-name: web", "service-name: nope"),
     "document 1 (EndpointSlice/web-1): metadata.labels['kubernetes.io/service-name']: "
     "no service 'nope' in namespace 'default'; expected a Service in the cluster or in the same apply"),
    ("", SVC.replace("ports:", "clusterIP: 10.0.0.1\n  ports:"),
     "document 1 (Service/web): spec.clusterIP: 10.0.0.1 is outside the service CIDR 10.96.0.0/12; "
     "expected an unused address inside the service CIDR 10.96.0.0/12"),
    ("", SVC.replace("ports:", "clusterIP: 10.111.255.255\n  ports:"),
     "spec.clusterIP: 10.111.255.255 is the network or broadcast address of 10.96.0.0/12"),
    (SVC.replace("ports:", "clusterIP: 10.96.0.1\n  ports:"),
     SVC.replace("web", "db").replace("ports:", "clusterIP: 10.96.0.1\n  ports:"),
     "document 1 (Service/db): spec.clusterIP: 10.96.0.1 is already used by service/default/web"),
    ("", SVC.replace("ports:", "clusterIP: 10.96.0.1\n  ports:") + "---\n"
     + SVC.replace("web", "db").replace("ports:", "clusterIP: 10.96.0.1\n  ports:"),
     "document 2 (Service/db): spec.clusterIP: 10.96.0.1 is already used by service/default/web"),
    (SVC, SVC.replace("ports:", "clusterIP: 10.96.0.99\n  ports:"),
     "spec.clusterIP: clusterIP is immutable (service/default/web has 10.96.0.11); expected 10.96.0.11 or no clusterIP"),
    ("", SVC + "---\n" + SVC, "document 2 (Service/web): metadata.name: service/default/web appears twice"),
    ("", SVC.replace("targetPort: 8080", "targetPort: web") + "---\n" + slice_doc(["10.244.0.2"], ports="[]"),
     "document 2 (EndpointSlice/web-1): ports: no port for targetPort 'web' of service/default/web; "
     "expected a TCP port named 'http' or 'web'"),
    (SVC.replace("targetPort: 8080", "targetPort: web") + "---\n"
     + slice_doc(["10.244.0.2"], ports="[{name: web, port: 8080}, {name: admin, port: 9000}]"),
     SVC.replace("targetPort: 8080", "targetPort: www"),
     "document 1 (Service/web): spec.ports[0].targetPort: 'www' matches no port of endpointslice/default/web-1"),
]


@pytest.mark.parametrize("held,text,error", BAD_APPLY, ids=range(len(BAD_APPLY)))
def test_invalid_apply_changes_nothing(held, text, error):
    store = applied(DNS, held, pods=PODS) if held else applied(DNS, pods=PODS)
    before, resolved = store.snapshot(), store.resolve()
    objects = parse_manifests(text, "new.yaml")
    with pytest.raises(ManifestError) as e:
        store.apply(objects)
    assert any(error in line for line in e.value.errors), e.value.errors
    assert all(line.startswith("new.yaml: document ") for line in e.value.errors)
    assert store.snapshot() == before and store.resolve() == resolved


def test_failed_apply_creates_nothing_even_when_most_is_valid():
    store = ServiceStore(allocate_ip=lambda ns, name: pytest.fail("allocated before validation"))
    orphan = SLICE.replace("web-1", "web-2").replace("service-name: web", "service-name: x")
    text = SVC + "---\n" + SLICE + "---\n" + orphan
    with pytest.raises(ManifestError) as e:
        store.apply(parse_manifests(text))
    assert len(e.value.errors) == 1
    assert store.snapshot() == ServiceStore().snapshot() and store.resolve() == []


def test_delete():
    store = applied(REALISTIC, pods=PODS)
    web_svc, web_slice, dns, dns_slice, api = parse_manifests(REALISTIC)
    assert store.delete([web_slice]) == ["endpointslice/default/web-abc12 deleted"]
    assert backends(store)["default/web:metrics"] == [["10.244.0.2", 9100]]  # falls back to the selector
    store.apply([web_slice])
    # Deleting a service takes its slices along; naming a slice too reports it once.
    assert store.delete([dns, dns_slice, web_svc]) == [
        "service/kube-system/dns deleted", "endpointslice/kube-system/dns-1 deleted",
        "service/default/web deleted", "endpointslice/default/web-abc12 deleted"]
    assert [e["key"] for e in store.resolve()] == ["default/api:443"] and store.slices == {}
    before = store.snapshot()
    with pytest.raises(ManifestError) as e:
        store.delete([api, dns])
    assert e.value.errors == ["<manifest>: document 4 (Service/dns): metadata.name: service/kube-system/dns not found; "
                              "expected a Service in the cluster"]
    assert store.snapshot() == before  # api is still there
    assert store.delete(parse_manifests(REALISTIC.split("---\n---\n")[1].split("---\n")[-1])) == [
        "service/default/api deleted"]


def test_snapshot_round_trips_through_json():
    store = applied(REALISTIC, pods=PODS)
    snap = json.loads(json.dumps(store.snapshot()))
    copy = ServiceStore(pods=PODS)
    copy.restore(snap)
    assert copy.services == store.services and copy.slices == store.slices
    assert copy.resolve() == store.resolve() and copy.snapshot() == snap
    assert len(copy.apply(parse_manifests(REALISTIC))["unchanged"]) == 5
    copy.restore(ServiceStore().snapshot())
    assert copy.services == {} and copy.slices == {}


def test_load_manifests(tmp_path):
    path = tmp_path / "app.yaml"
    path.write_text(REALISTIC)
    assert [o.name for o in load_manifests(path)] == ["web", "web-abc12", "dns", "dns-1", "api"]
    with pytest.raises(ManifestError) as e:
        load_manifests(tmp_path / "missing.yaml")
    assert e.value.errors == [f"{tmp_path / 'missing.yaml'}: (file): cannot read it (No such file or directory); "
                              "expected a readable YAML file"]
    path.write_text(SVC.replace("port: 80", "port: -1"))
    with pytest.raises(ManifestError, match=rf"^{path}: document 1 \(Service/web\): spec.ports\[0\].port: -1"):
        load_manifests(path)


# ---- pods --------------------------------------------------------------------

POD = """\
apiVersion: v1
kind: Pod
metadata: {name: web-a, labels: {app: web}}
spec:
  nodeName: node-a
"""
# as `kubectl get pod -o yaml` prints one, trimmed: server fields, containers and status
KUBECTL_POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: nginx
  namespace: shop
  uid: 5f0c-11
  resourceVersion: "812"
  creationTimestamp: "2024-05-01T10:00:00Z"
  labels: {app: nginx, tier: front}
  annotations: {note: hello}
spec:
  containers:
    - name: nginx
      image: nginx:1.14.2
      ports: [{containerPort: 80}]
  nodeName: node-b
status:
  phase: Running
  podIP: 10.244.1.7
"""


def test_pods_parse():
    (pod,) = parse_manifests(POD, "pod.yaml")
    assert pod == Pod("default", "web-a", {"app": "web"}, "node-a")
    assert (pod.kind, pod.key, pod.ref) == ("Pod", ("default", "web-a"), "pod/default/web-a")
    assert pod.origin == "pod.yaml: document 1 (Pod/web-a)"
    (pod,) = parse_manifests(KUBECTL_POD)
    assert (pod.namespace, pod.name, dict(pod.labels), pod.node_name) == (
        "shop", "nginx", {"app": "nginx", "tier": "front"}, "node-b")
    # nodeName, spec and labels may all be left out (or null): the caller picks the node
    for text in ("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n",
                 "apiVersion: v1\nkind: Pod\nmetadata: {name: p, labels: null}\nspec: {nodeName: null}\n",
                 '{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {}}'):
        assert parse_manifests(text) == [Pod("default", "p", {}, None)], text
    name = "p" * 20  # NAME_MAX exactly
    assert parse_manifests(POD.replace("web-a", name))[0].name == name


def test_pod_is_frozen_and_round_trips():
    (pod,) = parse_manifests(KUBECTL_POD)
    with pytest.raises(TypeError):
        pod.labels["app"] = "x"
    with pytest.raises(AttributeError):
        pod.node_name = "node-a"
    for p in (pod, Pod("default", "p", {}, None)):
        manifest = json.loads(json.dumps(p.to_manifest()))
        assert parse_manifests(json.dumps(manifest)) == [p]
    assert Pod("default", "p").to_manifest() == {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default", "labels": {}},
        "spec": {}}


NAME_EXPECTED = ("expected a DNS-1123 label (a-z, 0-9 and '-', alphanumeric at both ends) of at most 20 "
                 "characters (it becomes part of a network namespace name)")
BAD_POD = [
    # (manifest, path, error after the path)
    (POD.replace("web-a", "p" * 21), "metadata.name", f"'{'p' * 21}' is 21 characters long; {NAME_EXPECTED}"),
    (POD.replace("web-a", "Web_A"), "metadata.name", f"'Web_A' is not a DNS-1123 label; {NAME_EXPECTED}"),
    (POD.replace("name: web-a, ", ""), "metadata.name", f"missing; {NAME_EXPECTED}"),
    (POD.replace("name: web-a", "name: 7"), "metadata.name", f"got 7 (a number); {NAME_EXPECTED}"),
    (POD.replace("apiVersion: v1", "apiVersion: apps/v1"), "apiVersion", "got 'apps/v1'; expected 'v1' for a Pod"),
    (POD.replace("apiVersion: v1\n", ""), "apiVersion", "missing; expected 'v1' for a Pod"),
    (POD.replace("{name: web-a,", "{name: web-a, namespace: Shop,"), "metadata.namespace",
     "'Shop' is not a DNS-1123 label"),
    (POD.replace("{app: web}", "{app: 1}"), "metadata.labels.app", "got 1 (a number); expected a string"),
    (POD.replace("{app: web}", "[app]"), "metadata.labels", "got a list; expected a mapping of strings"),
    (POD.replace("labels:", "annotations: {a: true}, labels:"), "metadata.annotations.a",
     "got true (a boolean); expected a string"),
    (POD.replace("{name: web-a,", "{name: web-a, generateName: w-,"), "metadata.generateName",
     "unknown field; expected one of name, namespace, labels, annotations, uid, resourceVersion, "
     "creationTimestamp"),
    (POD.replace("metadata: {name: web-a, labels: {app: web}}", "metadata: web-a"), "metadata",
     "got 'web-a'; expected a mapping with fields name, namespace"),
    (POD + "hostname: x\n", "hostname", "unknown field; expected one of apiVersion, kind, metadata, spec, status"),
    (POD.replace("spec:\n  nodeName: node-a\n", "spec: [node-a]\n"), "spec",
     "got a list; expected a mapping with fields nodeName, containers"),
    (POD + "  restartPolicy: Always\n", "spec.restartPolicy", "unknown field; expected one of nodeName, containers"),
    (POD.replace("node-a", "Node_A"), "spec.nodeName", "'Node_A' is not a DNS-1123 label; expected a DNS-1123 "
     "label (a-z, 0-9 and '-', alphanumeric at both ends) of at most 20 characters (the name of a node)"),
    (POD.replace("node-a", "n" * 21), "spec.nodeName", f"'{'n' * 21}' is 21 characters long"),
    (POD.replace("node-a", "3"), "spec.nodeName", "got 3 (a number)"),
    (POD.replace("node-a", "''"), "spec.nodeName", "'' is not a DNS-1123 label"),
]


@pytest.mark.parametrize("text,path,error", BAD_POD, ids=[f"{i:02}-{b[1]}" for i, b in enumerate(BAD_POD)])
def test_invalid_pods(text, path, error):
    errors = errors_of(text)
    assert any(f": {path}: {error}" in line for line in errors), errors
    assert all(line.startswith("bad.yaml: document 1 (Pod/") for line in errors), errors


def test_pods_in_a_list_and_beside_services():
    items = (SVC, POD, POD.replace("web-a", "web-b").replace("node-a", "node-b"))
    text = "apiVersion: v1\nkind: List\nitems:\n" + "".join(
        "- " + doc.replace("\n", "\n  ").rstrip() + "\n" for doc in items)
    svc, a, b = parse_manifests(text + "---\n" + SLICE)[:3]
    assert (type(svc), a, b) == (Service, Pod("default", "web-a", {"app": "web"}, "node-a"),
                                 Pod("default", "web-b", {"app": "web"}, "node-b"))
    assert errors_of(text.replace("node-b", "node_b")) == [
        "bad.yaml: document 1, item 3 (Pod/web-b): spec.nodeName: 'node_b' is not a DNS-1123 label; expected a "
        "DNS-1123 label (a-z, 0-9 and '-', alphanumeric at both ends) of at most 20 characters (the name of a node)"]


def test_split_pods():
    objects = parse_manifests(POD + "---\n" + SVC + "---\n" + KUBECTL_POD + "---\n" + SLICE)
    pods, others = split_pods(objects)
    assert [p.ref for p in pods] == ["pod/default/web-a", "pod/shop/nginx"]
    assert [o.ref for o in others] == ["service/default/web", "endpointslice/default/web-1"]
    assert split_pods([]) == ([], [])
    # the same name in another namespace is another pod; the same pod twice is an error, like a Service twice
    pods, _ = split_pods(parse_manifests(POD + "---\n" + POD.replace("{name: web-a,", "{name: web-a, namespace: x,")))
    assert [p.ref for p in pods] == ["pod/default/web-a", "pod/x/web-a"]
    twice = parse_manifests(POD + "---\n" + SVC + "---\n" + POD.replace("node-a", "node-b"), "p.yaml")
    with pytest.raises(ManifestError) as e:
        split_pods(twice)
    assert e.value.errors == ["p.yaml: document 3 (Pod/web-a): metadata.name: pod/default/web-a appears twice; "
                              "expected each object once per apply"]


def test_store_rejects_pods_and_changes_nothing():
    store = applied(SVC, SLICE, pods=PODS)
    before, resolved = store.snapshot(), store.resolve()
    objects = parse_manifests(SVC.replace("web", "db") + "---\n" + POD, "p.yaml")
    expected = ["p.yaml: document 2 (Pod/web-a): kind: pod/default/web-a is a Pod, which the service store does "
                "not hold; expected Services and EndpointSlices (the cluster creates Pods: split them out with "
                "split_pods)"]
    for change in (store.apply, store.delete):
        with pytest.raises(ManifestError) as e:
            change(objects)
        assert e.value.errors == expected
        assert store.snapshot() == before and store.resolve() == resolved
    _, others = split_pods(objects)
    assert store.apply(others)["created"] == ["service/default/db created"]
