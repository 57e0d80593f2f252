"""Every way in, fed bad input: cluster specs, manifests and requests on a
live agent's control socket. Each bad input gets exactly one error that says
what is wrong, and nothing changes: no cluster, the service store as it was,
the agent's services, routes and counters as they were, and the agent still
answering. (test_spec.py and test_manifests.py hold the field-by-field
tables; this one adds what those miss: duplicate keys, deep nesting, huge
numbers, oversized input, addresses no pod can have, mistyped requests.)"""
import json
import os
import shutil
import socket
import stat
import tempfile
import threading

import pytest

from conftest import require_root
from dataplane import cluster
from dataplane.agent import UPLINK_DOMAIN, UPLINK_PORT, Agent
from dataplane.control import MAX_REQUEST
from dataplane.manifests import ManifestError, ServiceStore, parse_manifests
from dataplane.spec import MAX_FILE, SpecError, load_spec, parse_spec
from netns_helpers import cluster_env

NODES = "nodes: [{name: a}, {name: b}]\n"
DEEP = "[" * 5000 + "]" * 5000

# ---- cluster specs -----------------------------------------------------------

SPECS = [
    # (id, spec, fragment of the one error)
    ("bad-cidr", "cluster: {podCIDR: 10.244.0.0/33}\n" + NODES, "cluster.podCIDR: '10.244.0.0/33' is not a CIDR"),
    ("overlapping-node-cidrs", "nodes: [{name: a, podCIDR: 10.244.1.0/24}, {name: b, podCIDR: 10.244.1.0/24}]",
     "nodes[1].podCIDR: duplicate podCIDR 10.244.1.0/24"),
    ("service-cidr-overlaps-pods", "cluster: {serviceCIDR: 10.244.0.0/20}\n" + NODES, "overlaps podCIDR"),
    ("duplicate-node", "nodes: [{name: a}, {name: a}]", "duplicate node name 'a'"),
    ("unknown-node", NODES + "pods: [{name: p, node: zz}]", "unknown node 'zz'; expected one of a, b"),
    ("port-out-of-range", NODES + "services: [{name: s, ports: [{port: 65536}]}]",
     "services[0].ports[0].port: 65536 is out of range"),
    ("port-as-string", NODES + "services: [{name: s, ports: [{port: '80'}]}]", "got '80'; expected an integer"),
    ("malformed-yaml", NODES + "pods: x: y\n", "mapping values are not allowed here"),
    ("duplicate-key", NODES + "nodes: [{name: c}]\n", "found duplicate key 'nodes'"),
    ("duplicate-key-nested", "nodes: [{name: a, name: b}]\n", "found duplicate key 'name'"),
    ("huge-number", "cluster: {mtu: 1" + "0" * 5000 + "}\n" + NODES, "a number with more than 4300 digits"),
    ("deep-nesting", "cluster: " + DEEP + "\n" + NODES, "nested more than 1000 levels deep"),
    ("python-tag", "!!python/object/apply:os.system [true]\n", "could not determine a constructor"),
]


@pytest.mark.parametrize("text,fragment", [s[1:] for s in SPECS], ids=[s[0] for s in SPECS])
def test_bad_spec_one_clear_error(text, fragment):
    with pytest.raises(SpecError) as e:
        parse_spec(text, "bad.yaml")
    [error] = e.value.errors
    assert error.startswith("bad.yaml: ") and fragment in error and "; expected " in error, error


def test_unreadable_spec_files(tmp_path):
    (tmp_path / "latin1.yaml").write_bytes(b"nodes: [{name: \xe9}]\n")
    for path, fragment in [(tmp_path, "Is a directory"), (tmp_path / "latin1.yaml", "not UTF-8 text"),
                           ("/dev/zero", f"larger than {MAX_FILE >> 20} MiB")]:
        with pytest.raises(SpecError) as e:
            load_spec(path)
        [error] = e.value.errors
        assert fragment in error, error


def test_bad_spec_creates_nothing(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text(NODES + "pods: [{name: p, node: zz}]\n")
    with cluster_env(tmp_path):
        with pytest.raises(SpecError, match="unknown node 'zz'"):
            cluster.up(str(spec), progress=lambda *_: None)
        assert cluster.load_state() is None
    run = tmp_path / "run"                                  # at most up's lock file
    assert [p.name for p in run.iterdir()] in ([], ["lock"]) if run.exists() else True
    assert not (tmp_path / "state").exists()                # no addresses leased


# ---- manifests ---------------------------------------------------------------

SVC = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  ports: [{name: http, port: 80, targetPort: 8080}]\n"
SVC_JSON = json.dumps({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                       "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})


def slice_with(address):
    return (SVC + "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
            "metadata: {name: web-1, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\n"
            f"ports: [{{name: http, port: 8080}}]\nendpoints: [{{addresses: ['{address}']}}]\n")


MANIFESTS = [
    ("unknown-kind", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n",
     "kind: got 'Deployment'; expected Service, EndpointSlice or List"),
    ("bad-port", SVC.replace("port: 80", "port: 0"), "spec.ports[0].port: 0 is out of range"),
    ("port-boolean", SVC.replace("port: 80", "port: true"), "got true (a boolean)"),
    ("bad-target-port", SVC.replace("targetPort: 8080", "targetPort: 99999"), "99999 is out of range"),
    ("bad-protocol", SVC.replace("targetPort: 8080", "protocol: ICMP"), "got 'ICMP'; expected 'TCP' or 'UDP'"),
    ("bad-cluster-ip", SVC.replace("ports:", "clusterIP: 10.96.0.300\n  ports:"), "'10.96.0.300' is not an IP address"),
    ("endpoint-garbage", slice_with("ten.0.0.1"), "'ten.0.0.1' is not an IP address"),
    ("endpoint-ipv6", slice_with("fd00::2"), "'fd00::2' is IPv6"),
    ("endpoint-unspecified", slice_with("0.0.0.0"), "'0.0.0.0' is unspecified"),
    ("endpoint-loopback", slice_with("127.0.0.1"), "'127.0.0.1' is loopback"),
    ("endpoint-multicast", slice_with("224.0.0.5"), "'224.0.0.5' is multicast"),
    ("endpoint-link-local", slice_with("169.254.169.254"), "is link-local"),
    ("endpoint-broadcast", slice_with("255.255.255.255"), "is the broadcast address"),
    ("duplicate-key", SVC + "kind: EndpointSlice\n", "found duplicate key 'kind'"),
    ("duplicate-key-json", SVC_JSON.replace('"kind"', '"kind": "List", "kind"'), "found duplicate key 'kind'"),
    ("huge-number", SVC.replace("port: 80", "port: 1" + "0" * 5000), "a number with more than 4300 digits"),
    ("huge-number-json", SVC_JSON.replace('"port": 80', '"port": 1' + "0" * 5000), "more than 4300 digits"),
    ("deep-nesting-yaml", "apiVersion: v1\nkind: " + DEEP + "\n", "nested more than 1000 levels deep"),
    ("deep-nesting-json", '{"kind": ' + "[" * 200000 + "]" * 200000 + "}", "nested more than 1000 levels deep"),
    ("truncated-json", SVC_JSON[:-3], "expected valid YAML"),
    ("not-an-object", "[1, 2, 3]\n", "got a list; expected a mapping"),
]


@pytest.mark.parametrize("text,fragment", [m[1:] for m in MANIFESTS], ids=[m[0] for m in MANIFESTS])
def test_bad_manifest_one_clear_error_store_unchanged(text, fragment):
    store = ServiceStore(pods={"w": ("10.244.0.2", {"app": "web"})})
    store.apply(parse_manifests(SVC.replace("{name: web}", "{name: db}")))
    before, resolved = store.snapshot(), store.resolve()
    with pytest.raises(ManifestError) as e:
        store.apply(parse_manifests(text, "bad.yaml"))
    [error] = e.value.errors
    assert error.startswith("bad.yaml: document ") and fragment in error and "; expected " in error, error
    assert store.snapshot() == before and store.resolve() == resolved


# ---- requests on a live agent ------------------------------------------------

GW = {"ip": "10.244.0.1", "mac": "0a:58:0a:f4:00:01", "subnet": "10.244.0.0/24"}
ROUTE = {"name": "n2", "cidr": "10.244.1.0/24", "vtep": "172.30.250.2", "inner_mac": "0a:58:0a:f4:01:01",
         "vtep_mac": "0a:5a:ac:1e:fa:02"}          # static: the agent never ARPs, counters stay put
SERVICE = {"vip": "10.96.0.10", "port": 80, "protocol": "TCP", "backends": [["10.244.0.2", 8080]]}
SERVICE_CAPACITY = 16


class NullUplink:
    """The uplink's TAP, for an agent without namespaces: solicitations go nowhere."""

    def __init__(self):
        self.fd = os.open(os.devnull, os.O_WRONLY)

    def fileno(self):
        return self.fd

    def close(self):
        os.close(self.fd)


@pytest.fixture(scope="module")
def live():
    """The real Agent serving its real control socket from its own loop (in a
    thread), with a gateway, an overlay route and a service; no pods, so no
    namespaces. The socket's directory is world-searchable so only the
    socket's own mode keeps others out."""
    d = tempfile.mkdtemp(prefix="pnhd-ctl-")
    os.chmod(d, 0o755)
    cfg = {"node": "n1", "netns": "-", "socket": os.path.join(d, "n1.sock"), "vnet": False, "gateway": GW,
           "pods": [], "service_cidr": "10.96.0.0/12", "service_capacity": SERVICE_CAPACITY}
    agent = Agent(cfg)
    agent.setup()
    agent.dp.add_port(UPLINK_PORT, domain=UPLINK_DOMAIN)
    agent.dp.overlay.configure(UPLINK_PORT, "172.30.250.1", "0a:5a:ac:1e:fa:01")
    agent.uplink_tap = NullUplink()
    agent.dp.overlay.set_routes([ROUTE], local=GW["subnet"])
    agent.services_apply([SERVICE], [])
    crashed = []

    def run():
        try:
            agent.run()
        except BaseException as e:       # the test fails below if the loop ever dies
            crashed.append(e)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield agent, cfg["socket"], crashed
    finally:
        agent.stop = True
        t.join(5)
        agent.close()
        shutil.rmtree(d)                 # the socket is gone; a snapshot may be left


def exchange(path, payload, timeout=10):
    """Send raw bytes, close our side, read every reply line until the agent closes."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        buf = bytearray()
        while chunk := s.recv(65536):
            buf += chunk
    finally:
        s.close()
    return [json.loads(line) for line in buf.splitlines()]


def req(op, **args):
    return json.dumps({"op": op, **args}).encode() + b"\n"


def upsert(**entry):
    return req("services_apply", upsert=[{**SERVICE, "vip": "10.96.0.50", **entry}])


POD_X = {"name": "p", "port": 3, "netns": "pnt-none", "ip": "10.244.0.9", "mac": "0a:58:0a:f4:00:09",
         "prefixlen": 24, "mtu": 1450}
ROUTE_X = {"name": "x", "cidr": "10.244.2.0/24", "vtep": "172.30.250.3", "inner_mac": "0a:58:0a:f4:02:01"}
REQUESTS = [
    # (id, raw request line(s), fragment of the one error)
    ("truncated-json", b'{"op": "services", \n', "malformed JSON request"),
    ("not-an-object", b"[1, 2]\n", 'request must be a JSON object with a string "op"'),
    ("bare-string", b'"ping"\n', 'request must be a JSON object with a string "op"'),
    ("op-not-string", b'{"op": 5}\n', 'request must be a JSON object with a string "op"'),
    ("not-utf8", b'{"op": "\xff\xfe"}\n', "malformed JSON request"),
    ("duplicate-key", b'{"op": "ping", "op": "route_remove", "name": "n2"}\n', "duplicate key 'op'"),
    ("deep-nesting", b'{"op": "ping", "x": ' + b"[" * 100000 + b"]" * 100000 + b"}\n", "nested too deeply"),
    ("huge-number", b'{"op": "ping", "x": 1' + b"0" * 5000 + b"}\n", "a number with more than 4300 digits"),
    ("unknown-op", req("reboot"), "reboot: unknown operation; expected one of ping"),
    ("upsert-not-list", req("services_apply", upsert={}), "upsert and delete must be lists"),
    ("port-zero", upsert(port=0), "service port must be 1..65535, got 0"),
    ("port-boolean", upsert(port=True), "service port must be 1..65535, got True"),
    ("port-string", upsert(port="80"), "service port must be 1..65535, got '80'"),
    ("vip-outside-cidr", upsert(vip="10.244.0.9"), "service VIP 10.244.0.9 is outside the service CIDR"),
    ("vip-missing", req("services_apply", upsert=[{"port": 80}]), "service VIP must be an IPv4 address"),
    ("bad-protocol", upsert(protocol="SCTP"), "protocol must be TCP or UDP, got 'SCTP'"),
    ("backends-not-list", upsert(backends=5), "upsert[0].backends must be a list"),
    ("backend-port", upsert(backends=[["10.244.0.2", 70000]]), "port must be 1..65535, got 70000"),
    ("backend-garbage", upsert(backends=[["10.244.0.300", 80]]), "expected (IPv4 address, port)"),
    ("backend-loopback", upsert(backends=[["127.0.0.1", 80]]), "not a unicast address a pod can have"),
    ("misspelt-key", upsert(protocl="UDP"), "upsert[0]: unknown key 'protocl'"),
    ("bad-load-balancing", upsert(load_balancing="rr"), "load balancing must be random or maglev"),
    ("second-entry-bad", req("services_apply", upsert=[dict(SERVICE, vip="10.96.0.51"), dict(SERVICE, port=0)]),
     "service port must be 1..65535, got 0"),
    ("over-capacity", req("services_apply", upsert=[dict(SERVICE, port=p) for p in range(1000, 1000 + SERVICE_CAPACITY)]),
     f"new service ports would overflow the service map (1 of {SERVICE_CAPACITY} used); nothing changed"),
    ("delete-not-object", req("services_apply", delete=["web"]), "each delete entry must be an object"),
    ("route-without-name", req("route_add", cidr="10.244.2.0/24"), "route_add needs a node name"),
    ("route-overlaps-node", req("route_add", **dict(ROUTE_X, cidr="10.244.0.0/24")),
     "route to 'x': 10.244.0.0/24 overlaps this node's pod subnet"),
    ("route-bad-cidr", req("route_add", **dict(ROUTE_X, cidr="10.244.2.0/33")), "route to 'x': '33' is not a valid netmask"),
    ("route-cidr-not-string", req("route_add", **dict(ROUTE_X, cidr=["10.244.2.0/24"])), "cidr must be a string"),
    ("route-vni-string", req("route_add", **dict(ROUTE_X, vni="1")), "vni must be an integer, got '1'"),
    ("route-broadcast-mac", req("route_add", **dict(ROUTE_X, inner_mac="ff:ff:ff:ff:ff:ff")), "is not a unicast MAC"),
    ("route-misspelt-key", req("route_add", **dict(ROUTE_X, vtepmac="0a:5a:ac:1e:fa:03")), "unknown key 'vtepmac'"),
    ("route-remove-unknown", req("route_remove", name="zz"), "no route to a node named 'zz'"),
    ("trace-bad-port", req("trace", port=7, frame="00"), "port must be one of this node's ports"),
    ("capture-buffer-string", req("capture_start", port=UPLINK_PORT, buffer="big"), "must be an integer number of bytes"),
    ("pod-add-missing", req("pod_add", name="p", port=3), "pod_add: missing netns, ip, mac, prefixlen, mtu"),
    ("pod-add-misspelt", req("pod_add", **dict(POD_X, ifnmae="eth0")), "pod_add: unknown key 'ifnmae'"),
    ("pod-add-uplink-port", req("pod_add", **dict(POD_X, port=UPLINK_PORT)), "port must be 0..254, got 255"),
    ("pod-add-port-bool", req("pod_add", **dict(POD_X, port=True)), "port must be 0..254, got True"),
    ("pod-add-no-netns", req("pod_add", **dict(POD_X, netns="/run/netns/pnt-none")),
     "network namespace '/run/netns/pnt-none' does not exist"),
    ("pod-remove-unknown", req("pod_remove", name="zz"), "no pod 'zz' on node"),
    ("pod-remove-destroy-string", req("pod_remove", name="zz", destroy="yes"), "destroy must be true or false"),
]


def observable(agent_path):
    from dataplane.control import request
    counters = request(agent_path, "counters")
    counters.pop("io")                   # the loop's own wakeups: control traffic moves them
    return request(agent_path, "services"), request(agent_path, "routes"), counters


@pytest.mark.parametrize("payload,fragment", [r[1:] for r in REQUESTS], ids=[r[0] for r in REQUESTS])
def test_bad_request_one_clear_error_nothing_changes(live, payload, fragment):
    agent, path, crashed = live
    before = observable(path)
    [reply] = exchange(path, payload)
    assert reply["ok"] is False and fragment in reply["error"], reply
    assert observable(path) == before
    assert exchange(path, req("ping")) == [{"ok": True, "result": "pong"}] and not crashed


def test_oversized_request_is_refused_and_the_agent_serves_on(live):
    agent, path, crashed = live
    before = observable(path)
    replies = exchange(path, b'{"op": "ping", "x": "' + b"a" * (MAX_REQUEST - 20), timeout=60)
    assert replies == [{"ok": False, "error": f"request longer than {MAX_REQUEST} bytes"}]
    assert observable(path) == before
    assert exchange(path, req("ping")) == [{"ok": True, "result": "pong"}] and not crashed


def test_a_good_request_after_bad_ones_still_works(live):
    """The table above refused everything; the same agent still takes a change."""
    agent, path, crashed = live
    [reply] = exchange(path, req("services_apply", upsert=[dict(SERVICE, vip="10.96.0.77")]))
    assert reply == {"ok": True, "result": {"service_ports": 2, "conntrack_deleted": 0, "conntrack_reset": 0}}
    [reply] = exchange(path, req("services_apply", delete=[{"vip": "10.96.0.77", "port": 80, "protocol": "TCP"}]))
    assert reply["ok"] and reply["result"]["service_ports"] == 1


def _connect_as(uid, path):
    """Fork, drop to uid, try to connect; the child's exit code says how it went."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            code = 0
        except PermissionError:
            code = 13
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_control_socket_is_root_only(live):
    require_root()               # root owns the socket and drops to another uid; CI=true: fails, never skips
    agent, path, crashed = live
    st = os.stat(path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0
    assert _connect_as(65534, path) == 13                # nobody: permission denied
    os.chmod(path, 0o666)                                # the check itself can tell the difference
    try:
        assert _connect_as(65534, path) == 0
    finally:
        os.chmod(path, 0o600)
    assert exchange(path, req("ping")) == [{"ok": True, "result": "pong"}]
