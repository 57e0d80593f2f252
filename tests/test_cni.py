"""podnet-cni without root: the CNI protocol (environment, config, result
formats per version, chaining, CHECK, GC, STATUS, VERSION, error codes)
against a fake cluster that keeps the contract's API and its state in a JSON
file, so the plugin run as a subprocess (as a runtime runs it) sees it too.
A fake netns is a JSON file naming the interfaces in it."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dataplane import cni

TESTS = str(Path(__file__).resolve().parent)
REPO = str(Path(__file__).resolve().parent.parent)
CID = "0123456789abcdef0123"


class FakeClusterError(RuntimeError):
    def __init__(self, msg, code="invalid"):
        super().__init__(msg)
        self.code = code


class FakeCluster:
    """dataplane.cluster's pod API per contract14; every call reloads the file."""
    ClusterError = FakeClusterError

    def __init__(self, path):
        self.path = Path(path)

    @classmethod
    def create(cls, path):
        Path(path).write_text(json.dumps({"up": True, "nodes": ["n1", "n2"], "agent_up": True, "full": False,
                                          "next": 2, "pods": {}, "calls": []}))
        return cls(path)

    def load(self):
        return json.loads(self.path.read_text())

    def save(self, s):
        self.path.write_text(json.dumps(s))

    def snapshot(self):
        """Everything but the call log: what "left unchanged" compares."""
        s = self.load()
        s.pop("calls")
        return s

    def calls(self, fn=None):
        return [c for c in self.load()["calls"] if fn is None or c[0] == fn]

    def _state(self, call):
        s = self.load()
        s["calls"].append(call)
        self.save(s)
        if not s["up"]:
            raise FakeClusterError("no cluster is up; run `podnet up`", "no_cluster")
        return s

    def set(self, **kw):
        s = self.load()
        s.update(kw)
        self.save(s)

    def add_spec_pod(self, name):
        s = self.load()
        s["pods"][name] = {"name": name, "node": "n1", "ip": "10.250.0.200", "prefixlen": 24,
                           "mac": "0a:58:0a:fa:00:c8", "gateway": "10.250.0.1", "mtu": 1450, "labels": {},
                           "netns": f"pntest-pod-{name}", "ifname": "eth0", "container_id": None,
                           "origin": "spec", "port": 9, "phase": "ready"}
        self.save(s)

    def pod_add(self, name, node=None, labels=None, *, netns=None, ifname="eth0", container_id=None, origin="cli",
                network=None):
        s = self._state(["pod_add", name, node, labels, netns, ifname, container_id, origin])
        if name in s["pods"]:
            raise FakeClusterError(f"pod {name!r} exists", "exists")
        node = node or s["nodes"][0]
        if node not in s["nodes"]:
            raise FakeClusterError(f"no node {node!r}; nodes: {', '.join(s['nodes'])}", "no_node")
        if not s["agent_up"]:
            raise FakeClusterError(f"the agent of node {node} is not running", "agent_down")
        if not os.path.exists(netns):
            raise FakeClusterError(f"network namespace {netns!r} does not exist", "bad_netns")
        if s["full"]:
            raise FakeClusterError(f"no free address in node {node}'s subnet", "ipam_full")
        i, n = s["nodes"].index(node), s["next"]
        rec = {"name": name, "node": node, "ip": f"10.250.{i}.{n}", "prefixlen": 24,
               "mac": f"0a:58:0a:fa:{i:02x}:{n:02x}", "gateway": f"10.250.{i}.1", "mtu": 1450,
               "labels": labels or {}, "netns": netns, "ifname": ifname, "container_id": container_id,
               "origin": origin, "port": n, "phase": "ready", "network": network}
        s["next"] += 1
        s["pods"][name] = rec
        self.save(s)
        # what the agent does: the TAP appears in the namespace
        ns = json.loads(Path(netns).read_text() or "{}")
        ns[ifname] = {"mac": rec["mac"], "up": True, "addrs": [[rec["ip"], 24]], "gateways": [rec["gateway"]]}
        Path(netns).write_text(json.dumps(ns))
        return rec

    def pod_delete(self, name):
        s = self._state(["pod_delete", name])
        rec = s["pods"].pop(name, None)
        if rec is None:
            raise FakeClusterError(f"no pod {name!r}", "not_found")
        self.save(s)
        if os.path.isabs(rec["netns"]) and os.path.exists(rec["netns"]):
            ns = json.loads(Path(rec["netns"]).read_text() or "{}")
            ns.pop(rec["ifname"], None)
            Path(rec["netns"]).write_text(json.dumps(ns))
        return {"name": name, "node": rec["node"], "ip": rec["ip"]}

    def pods(self):
        return list(self._state(["pods"])["pods"].values())

    def attachment(self, container_id, ifname):
        s = self.load()                  # the real one reads state without requiring a cluster
        if not s["up"]:
            return None
        return next((p for p in s["pods"].values()
                     if p["container_id"] == container_id and p["ifname"] == ifname), None)

    def agent_ready(self, node=None):
        s = self.load()
        if not s["up"]:
            return False, "no podnet cluster is up"
        if (node or s["nodes"][0]) not in s["nodes"]:
            return False, f"no node {node!r}"
        if not s["agent_up"]:
            return False, f"the agent of node {node or s['nodes'][0]} is not running"
        return True, ""


def fake_interfaces(netns):
    return set(json.loads(Path(netns).read_text() or "{}"))


def fake_inspect(netns, ifname):
    seen = json.loads(Path(netns).read_text() or "{}").get(ifname)
    if seen:
        seen["addrs"] = [tuple(a) for a in seen["addrs"]]
    return seen


_real_check_netns = cni._check_netns


def fake_check_netns(path):
    """A fake netns (a JSON file) passes; a missing path gets the real check's error."""
    if not os.path.exists(path):
        _real_check_netns(path)


def use_fake(state_path, setattr=setattr):
    fake = FakeCluster(state_path)
    setattr(cni, "_cluster", lambda: fake)
    setattr(cni, "_inspect", fake_inspect)
    setattr(cni, "_interfaces", fake_interfaces)
    setattr(cni, "_check_netns", fake_check_netns)
    return fake


@pytest.fixture
def fake(tmp_path, monkeypatch):
    f = FakeCluster.create(tmp_path / "cluster.json")
    use_fake(f.path, monkeypatch.setattr)
    return f


@pytest.fixture
def netns(tmp_path):
    p = tmp_path / "netns-c1"
    p.write_text("{}")
    return str(p)


def conf(version="1.0.0", **kw):
    return {"cniVersion": version, "name": "podnet", "type": "podnet-cni", **kw}


def env(cmd, netns=None, cid=CID, ifname="eth0", **kw):
    e = {"CNI_COMMAND": cmd, "CNI_CONTAINERID": cid, "CNI_IFNAME": ifname, "CNI_PATH": "/usr/lib/cni"}
    if netns:
        e["CNI_NETNS"] = netns
    e.update(kw)
    return {k: v for k, v in e.items() if v is not None}


def call(e, config):
    data = config if isinstance(config, bytes) else json.dumps(config).encode()
    return cni.run(e, data)


def add(netns, config=None, **kw):
    rc, out = call(env("ADD", netns, **kw), config or conf())
    assert rc == 0, out
    return out


# ---- bad input: one exact code each, and the cluster untouched ------------------------

BAD = [
    # (id, command, env changes, config (dict, bytes or a function of netns), code)
    ("malformed-json", "ADD", {}, b'{"cniVersion": "1.0.0", "name": ', 6),
    ("json-not-object", "ADD", {}, b'["podnet"]', 6),
    ("json-not-utf8", "ADD", {}, b'\xff\xfe{', 6),
    ("version-0.3.1", "ADD", {}, conf("0.3.1"), 1),
    ("version-2.0.0", "ADD", {}, conf("2.0.0"), 1),
    ("version-missing", "ADD", {}, {"name": "podnet", "type": "podnet-cni"}, 1),
    ("version-number", "DEL", {}, conf(1.0), 1),
    ("gc-needs-1.1.0", "GC", {}, conf("1.0.0", **{"cni.dev/valid-attachments": []}), 1),
    ("status-needs-1.1.0", "STATUS", {}, conf("0.4.0"), 1),
    ("no-command", None, {"CNI_COMMAND": None}, conf(), 4),
    ("unknown-command", "ATTACH", {}, conf(), 4),
    ("lowercase-command", "add", {}, conf(), 4),
    ("add-no-containerid", "ADD", {"CNI_CONTAINERID": None}, conf(), 4),
    ("add-no-netns", "ADD", {"CNI_NETNS": None}, conf(), 4),
    ("add-no-ifname", "ADD", {"CNI_IFNAME": None}, conf(), 4),
    ("check-no-containerid", "CHECK", {"CNI_CONTAINERID": None}, conf(), 4),
    ("check-no-netns", "CHECK", {"CNI_NETNS": None}, conf(), 4),
    ("check-no-ifname", "CHECK", {"CNI_IFNAME": None}, conf(), 4),
    ("del-no-containerid", "DEL", {"CNI_CONTAINERID": None}, conf(), 4),
    ("del-no-ifname", "DEL", {"CNI_IFNAME": None}, conf(), 4),
    ("gc-no-path", "GC", {"CNI_PATH": None}, conf("1.1.0", **{"cni.dev/valid-attachments": []}), 4),
    ("containerid-bad-char", "ADD", {"CNI_CONTAINERID": "-abc"}, conf(), 4),
    ("containerid-space", "DEL", {"CNI_CONTAINERID": "ab c"}, conf(), 4),
    ("ifname-slash", "ADD", {"CNI_IFNAME": "eth/0"}, conf(), 4),
    ("ifname-16-chars", "ADD", {"CNI_IFNAME": "e" * 16}, conf(), 4),
    ("ifname-dotdot", "DEL", {"CNI_IFNAME": ".."}, conf(), 4),
    ("netns-relative", "ADD", {"CNI_NETNS": "run/netns/x"}, conf(), 4),
    ("args-no-equals", "ADD", {"CNI_ARGS": "K8S_POD_NAME"}, conf(), 4),
    ("args-empty-pair", "ADD", {"CNI_ARGS": "K8S_POD_NAME=web;;"}, conf(), 4),
    ("args-two-equals", "ADD", {"CNI_ARGS": "K8S_POD_NAME=a=b"}, conf(), 4),
    ("args-unknown-key", "ADD", {"CNI_ARGS": "FOO=bar"}, conf(), 4),
    ("args-ignoreunknown-bad", "ADD", {"CNI_ARGS": "IgnoreUnknown=maybe;FOO=bar"}, conf(), 4),
    ("args-pod-name-too-long", "ADD", {"CNI_ARGS": "K8S_POD_NAME=" + "a" * 64}, conf(), 4),
    ("args-pod-name-bad-char", "ADD", {"CNI_ARGS": "K8S_POD_NAME=web/1"}, conf(), 4),
    ("check-args-unknown-key", "CHECK", {"CNI_ARGS": "FOO=bar"}, conf(), 4),
    ("name-missing", "ADD", {}, {"cniVersion": "1.0.0", "type": "podnet-cni"}, 7),
    ("name-bad-char", "ADD", {}, conf(name="pod net"), 7),
    ("type-missing", "DEL", {}, {"cniVersion": "1.0.0", "name": "podnet"}, 7),
    ("labels-list", "ADD", {}, conf(labels=["app=web"]), 7),
    ("labels-int-value", "ADD", {}, conf(labels={"app": 1}), 7),
    ("node-not-string", "ADD", {}, conf(node=1), 7),
    ("rundir-relative", "ADD", {}, conf(runDir="run/podnet"), 7),
    ("statedir-not-string", "DEL", {}, conf(stateDir=5), 7),
    ("prevresult-not-object", "ADD", {}, conf(prevResult=[]), 7),
    ("prevresult-bad-address", "ADD", {}, conf(prevResult={"ips": [{"address": "10.0.0.300/24"}]}), 7),
    ("prevresult-interfaces-not-list", "CHECK", {}, conf(prevResult={"interfaces": {"name": "eth0"}}), 7),
    ("gc-no-valid-attachments", "GC", {}, conf("1.1.0"), 7),
    ("gc-valid-attachments-wrong", "GC", {}, conf("1.1.0", **{"cni.dev/valid-attachments": [{"id": "x"}]}), 7),
    ("node-does-not-exist", "ADD", {}, conf(node="n9"), 7),
    ("netns-missing", "ADD", {"CNI_NETNS": "/nonexistent/pnt-netns"}, conf(), 3),
    ("check-netns-missing", "CHECK", {"CNI_NETNS": "/nonexistent/pnt-netns"}, conf(), 3),
    ("agent-down", "ADD", {"_fake": {"agent_up": False}}, conf(), 11),
    ("no-cluster", "ADD", {"_fake": {"up": False}}, conf(), 11),
    ("existing-attachment", "ADD", {"_existing": (CID, "eth0")}, conf(), 100),
    ("pod-name-exists", "ADD", {"CNI_ARGS": "K8S_POD_NAME=web", "_spec_pod": "web"}, conf(), 101),
    ("default-name-exists", "ADD", {"_spec_pod": "cni-" + CID[:12]}, conf(), 101),
    ("interface-in-netns", "ADD", {"_netns_has": "eth0"}, conf(), 102),
    ("addresses-exhausted", "ADD", {"_fake": {"full": True}}, conf(), 103),
    ("check-no-attachment", "CHECK", {}, conf(), 104),
]


@pytest.mark.parametrize("cmd,changes,config,code", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_gets_its_code_and_changes_nothing(fake, netns, tmp_path, cmd, changes, config, code):
    changes = dict(changes)
    fake.set(**changes.pop("_fake", {}))
    if "_spec_pod" in changes:
        fake.add_spec_pod(changes.pop("_spec_pod"))
    if "_existing" in changes:
        other = tmp_path / "netns-other"
        other.write_text("{}")
        cid, ifname = changes.pop("_existing")
        add(str(other), cid=cid, ifname=ifname)
    if "_netns_has" in changes:
        Path(netns).write_text(json.dumps({changes.pop("_netns_has"): {"mac": "02:00:00:00:00:01", "up": True,
                                                                       "addrs": [], "gateways": []}}))
    before, netns_before = fake.snapshot(), Path(netns).read_text()
    rc, out = call(env(cmd, netns, **changes), config)
    assert rc == 1
    assert out["code"] == code, out
    assert set(out) == {"cniVersion", "code", "msg", "details"} and out["msg"]
    assert fake.snapshot() == before
    assert Path(netns).read_text() == netns_before


def test_error_names_every_missing_variable(fake):
    rc, out = call({"CNI_COMMAND": "ADD"}, conf())
    assert (rc, out["code"]) == (1, 4)
    assert out["msg"] == "required environment variables missing: CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME"


def test_error_is_in_the_configs_version(fake):
    rc, out = call(env("ADD", "/nonexistent/x"), conf("0.4.0"))
    assert out == {"cniVersion": "0.4.0", "code": 3, "msg": "CNI_NETNS does not exist", "details": "/nonexistent/x"}
    rc, out = call(env("ADD", "/nonexistent/x"), conf("0.2.0"))
    assert out["cniVersion"] == "1.1.0" and out["code"] == 1       # not a version it could answer in


def test_real_netns_check_codes(tmp_path):
    """No root needed: a missing path, a plain file and the plugin's own namespace."""
    with pytest.raises(cni.CniError) as e:
        cni._check_netns(str(tmp_path / "gone"))
    assert e.value.code == 3
    (tmp_path / "file").write_text("")
    with pytest.raises(cni.CniError) as e:
        cni._check_netns(str(tmp_path / "file"))
    assert (e.value.code, e.value.msg) == (4, "CNI_NETNS is not a network namespace")
    with pytest.raises(cni.CniError) as e:
        cni._check_netns("/proc/self/ns/uts")
    assert e.value.code == 4
    with pytest.raises(cni.CniError) as e:
        cni._check_netns(f"/proc/{os.getpid()}/ns/net")
    assert (e.value.code, e.value.msg) == (4, "CNI_NETNS is the plugin's own or the host's network namespace")


def test_bug_is_one_json_error_not_a_traceback(fake, netns, monkeypatch):
    def broken(*a, **k):
        raise KeyError("ip")
    monkeypatch.setattr(FakeCluster, "pod_add", broken)
    rc, out = call(env("ADD", netns), conf())
    assert (rc, out["code"], out["details"]) == (1, 999, "KeyError: 'ip'")


# ---- ADD results per version ----------------------------------------------------------

def test_add_calls_pod_add_per_contract(fake, netns):
    add(netns, conf(labels={"app": "web"}),
        CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=x;X=1")
    add_call = fake.calls("pod_add")
    assert add_call == [["pod_add", "web-0", None,
                         {"app": "web", "io.kubernetes.pod.name": "web-0", "io.kubernetes.pod.namespace": "default"},
                         netns, "eth0", CID, "cni"]]
    # without K8S_POD_NAME: the container id names the pod; a node from the config
    other = netns + "-2"
    Path(other).write_text("{}")
    add(other, conf(node="n2"), cid="ffffeeeeddddcccc")
    assert fake.calls("pod_add")[1] == ["pod_add", "cni-ffffeeeedddd", "n2", {}, other, "eth0", "ffffeeeeddddcccc",
                                        "cni"]


def test_add_result_1_0_0(fake, netns):
    assert add(netns, conf("1.0.0")) == {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "mac": "0a:58:0a:fa:00:02", "sandbox": netns}],
        "ips": [{"address": "10.250.0.2/24", "gateway": "10.250.0.1", "interface": 0}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.250.0.1"}],
        "dns": {}}


def test_add_result_1_1_0_has_interface_mtu(fake, netns):
    out = add(netns, conf("1.1.0"), ifname="net1")
    assert out["cniVersion"] == "1.1.0"
    assert out["interfaces"] == [{"name": "net1", "mac": "0a:58:0a:fa:00:02", "sandbox": netns, "mtu": 1450}]
    assert out["ips"] == [{"address": "10.250.0.2/24", "gateway": "10.250.0.1", "interface": 0}]


def test_add_result_0_4_0_has_ip_version(fake, netns):
    out = add(netns, conf("0.4.0", node="n2"))
    assert out == {
        "cniVersion": "0.4.0",
        "interfaces": [{"name": "eth0", "mac": "0a:58:0a:fa:01:02", "sandbox": netns}],
        "ips": [{"address": "10.250.1.2/24", "gateway": "10.250.1.1", "interface": 0, "version": "4"}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.250.1.1"}],
        "dns": {}}


PREV = {"cniVersion": "0.4.0",
        "interfaces": [{"name": "lo", "mac": "00:00:00:00:00:00", "sandbox": "/x"}],
        "ips": [{"version": "4", "address": "127.0.0.1/8", "interface": 0}],
        "dns": {"nameservers": ["10.96.0.10"]}}


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0", "1.1.0"])
def test_add_appends_to_prev_result(fake, netns, version):
    out = add(netns, conf(version, prevResult=PREV))
    assert out["cniVersion"] == version
    assert [i["name"] for i in out["interfaces"]] == ["lo", "eth0"]
    assert out["interfaces"][0] == PREV["interfaces"][0]
    lo_ip, pod_ip = out["ips"]
    assert (lo_ip["address"], pod_ip["address"], pod_ip["interface"]) == ("127.0.0.1/8", "10.250.0.2/24", 1)
    # 1.0.0 removed ips[].version; 0.4.0 has it on every entry
    assert [ip.get("version") for ip in out["ips"]] == (["4", "4"] if version == "0.4.0" else [None, None])
    assert out["dns"] == PREV["dns"]
    assert out["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.250.0.1"}]


def test_second_interface_of_a_container_is_its_own_attachment(fake, netns):
    add(netns, ifname="eth0", CNI_ARGS="K8S_POD_NAME=p-eth0")
    out = add(netns, ifname="net1", CNI_ARGS="K8S_POD_NAME=p-net1")
    assert out["interfaces"][0]["name"] == "net1"
    assert sorted(json.loads(Path(netns).read_text())) == ["eth0", "net1"]


# ---- DEL --------------------------------------------------------------------------------

def test_del_removes_and_is_idempotent(fake, netns):
    result = add(netns)
    rc, out = call(env("DEL", netns), conf(prevResult=result))
    assert (rc, out) == (0, None)
    assert fake.load()["pods"] == {} and json.loads(Path(netns).read_text()) == {}
    for e in (env("DEL", netns), env("DEL")):                # again; and without CNI_NETNS
        assert call(e, conf(prevResult=result)) == (0, None)
    assert [c[0] for c in fake.calls()].count("pod_delete") == 1


def test_del_without_netns_after_netns_is_gone(fake, netns):
    add(netns)
    os.unlink(netns)
    assert call(env("DEL"), conf()) == (0, None)
    assert fake.load()["pods"] == {}


def test_del_only_its_own_attachment(fake, netns):
    fake.add_spec_pod("web")
    add(netns, cid="aaaa", CNI_ARGS="K8S_POD_NAME=a")
    other = netns + "-b"
    Path(other).write_text("{}")
    add(other, cid="bbbb", CNI_ARGS="K8S_POD_NAME=b")
    assert call(env("DEL", netns, cid="aaaa", ifname="net9"), conf()) == (0, None)   # not an attachment
    assert call(env("DEL", netns, cid="aaaa"), conf()) == (0, None)
    assert sorted(fake.load()["pods"]) == ["b", "web"]


def test_del_with_no_cluster_succeeds(fake, netns):
    fake.set(up=False)
    assert call(env("DEL", netns), conf(runDir="/nonexistent/run", stateDir="/nonexistent/state")) == (0, None)


def test_del_error_from_cluster_is_reported(fake, netns, monkeypatch):
    add(netns)

    def busy(self, name):
        raise FakeClusterError("another podnet command holds the lock", "busy")
    monkeypatch.setattr(FakeCluster, "pod_delete", busy)
    rc, out = call(env("DEL", netns), conf())
    assert (rc, out["code"], out["details"]) == (1, 11, "another podnet command holds the lock")


# ---- CHECK ------------------------------------------------------------------------------

def edit_netns(netns, **kw):
    ns = json.loads(Path(netns).read_text())
    ns["eth0"].update(kw)
    Path(netns).write_text(json.dumps(ns))


def check(netns, prev):
    return call(env("CHECK", netns), conf(prevResult=prev))


def test_check_ok_after_add(fake, netns):
    result = add(netns)
    assert check(netns, result) == (0, None)
    assert check(netns, None) == (0, None)          # no prevResult: podnet's records alone


@pytest.mark.parametrize("edit,drift", [
    ({"addrs": []}, "address 10.250.0.2/24 is missing (has none)"),
    ({"addrs": [["10.250.0.9", 24]]}, "address 10.250.0.2/24 is missing (has 10.250.0.9/24)"),
    ({"mac": "02:00:00:00:00:99"}, "MAC is 02:00:00:00:00:99, podnet forwards for 0a:58:0a:fa:00:02"),
    ({"gateways": []}, "no default route via 10.250.0.1"),
    ({"up": False}, "interface is down"),
    (None, "interface is missing"),
])
def test_check_names_the_drift(fake, netns, edit, drift):
    result = add(netns)
    if edit is None:
        Path(netns).write_text("{}")
    else:
        edit_netns(netns, **edit)
    rc, out = check(netns, result)
    assert (rc, out["code"], out["msg"]) == (1, 105, "attachment drifted")
    assert out["details"] == f"pod cni-{CID[:12]}: eth0 in {netns}: {drift}"


def test_check_adding_record_is_drift(fake, netns):
    result = add(netns)
    s = fake.load()
    s["pods"]["cni-" + CID[:12]]["phase"] = "adding"
    fake.save(s)
    rc, out = check(netns, result)
    assert out["code"] == 105 and "'adding'" in out["details"]


@pytest.mark.parametrize("change,why", [
    (lambda r: r["interfaces"][0].update(mac="0a:58:0a:fa:00:09"), "prevResult MAC 0a:58:0a:fa:00:09"),
    (lambda r: r["interfaces"][0].update(name="net1"), "prevResult lists no interface eth0"),
    (lambda r: r["ips"][0].update(address="10.250.0.3/24"), "prevResult has no address 10.250.0.2/24 on eth0"),
])
def test_check_compares_prev_result(fake, netns, change, why):
    result = add(netns)
    change(result)
    rc, out = check(netns, result)
    assert (rc, out["code"]) == (1, 106) and why in out["details"], out


def test_check_prev_result_from_a_chain(fake, netns):
    result = add(netns, conf(prevResult=PREV))
    assert check(netns, result) == (0, None)       # podnet's interface is index 1 there


def test_check_agent_down(fake, netns):
    result = add(netns)
    fake.set(agent_up=False)
    rc, out = check(netns, result)
    assert (out["code"], out["details"]) == (11, "the agent of node n1 is not running")


# ---- GC, STATUS, VERSION ----------------------------------------------------------------

def test_gc_removes_cni_pods_not_listed(fake, tmp_path):
    fake.add_spec_pod("web")                      # not a CNI pod: GC never touches it
    for cid in ("c1", "c2", "c3"):
        p = tmp_path / f"ns-{cid}"
        p.write_text("{}")
        add(str(p), cid=cid, CNI_ARGS=f"K8S_POD_NAME=pod-{cid}")
    valid = [{"containerID": "c1", "ifname": "eth0"}, {"containerID": "c3", "ifname": "net1"}]
    rc, out = call({"CNI_COMMAND": "GC", "CNI_PATH": "/usr/lib/cni"},
                   conf("1.1.0", **{"cni.dev/valid-attachments": valid}))
    assert (rc, out) == (0, None)
    assert sorted(fake.load()["pods"]) == ["pod-c1", "web"]
    assert sorted(c[1] for c in fake.calls("pod_delete")) == ["pod-c2", "pod-c3"]


def test_gc_leaves_another_networks_attachments_alone(fake, tmp_path):
    """Two conflists over one cluster: a runtime's GC of network podnet
    lists only podnet's containers, so the other network's must stay."""
    for cid, net in (("c1", "podnet"), ("c2", "podnet-web")):
        p = tmp_path / f"ns-{cid}"
        p.write_text("{}")
        add(str(p), config=conf(name=net), cid=cid, CNI_ARGS=f"K8S_POD_NAME=pod-{cid}")
    assert {p["name"]: p["network"] for p in fake.load()["pods"].values()} == {"pod-c1": "podnet", "pod-c2": "podnet-web"}
    rc, _ = call({"CNI_COMMAND": "GC", "CNI_PATH": "/x"}, conf("1.1.0", **{"cni.dev/valid-attachments": []}))
    assert rc == 0 and sorted(fake.load()["pods"]) == ["pod-c2"]


def test_gc_null_list_removes_every_cni_pod(fake, netns):
    fake.add_spec_pod("web")
    add(netns)
    rc, _ = call({"CNI_COMMAND": "GC", "CNI_PATH": "/x"}, conf("1.1.0", **{"cni.dev/valid-attachments": None}))
    assert rc == 0 and sorted(fake.load()["pods"]) == ["web"]


def test_gc_old_key_and_no_cluster(fake, netns):
    add(netns)
    rc, _ = call({"CNI_COMMAND": "GC", "CNI_PATH": "/x"},
                 conf("1.1.0", **{"cni.dev/attachments": [{"containerID": CID, "ifname": "eth0"}]}))
    assert rc == 0 and len(fake.load()["pods"]) == 1
    fake.set(up=False)
    gc = conf("1.1.0", **{"cni.dev/valid-attachments": []})
    assert call({"CNI_COMMAND": "GC", "CNI_PATH": "/x"}, gc) == (0, None)


def test_gc_continues_past_a_failure_and_reports_it(fake, tmp_path, monkeypatch):
    for cid in ("c1", "c2"):
        p = tmp_path / f"ns-{cid}"
        p.write_text("{}")
        add(str(p), cid=cid, CNI_ARGS=f"K8S_POD_NAME=pod-{cid}")
    real = FakeCluster.pod_delete

    def flaky(self, name):
        if name == "pod-c1":
            raise FakeClusterError("pod pod-c1 not deleted: agent said no")
        return real(self, name)
    monkeypatch.setattr(FakeCluster, "pod_delete", flaky)
    rc, out = call({"CNI_COMMAND": "GC", "CNI_PATH": "/x"}, conf("1.1.0", **{"cni.dev/valid-attachments": []}))
    assert (rc, out["code"], out["details"]) == (1, 107, "pod-c1: pod pod-c1 not deleted: agent said no")
    assert sorted(fake.load()["pods"]) == ["pod-c1"]


@pytest.mark.parametrize("state,node,code,details", [
    ({}, None, None, None),
    ({}, "n2", None, None),
    ({"agent_up": False}, None, 50, "the agent of node n1 is not running"),
    ({"up": False}, None, 50, "no podnet cluster is up"),
    ({}, "n9", 50, "no node 'n9'"),
])
def test_status(fake, state, node, code, details):
    fake.set(**state)
    rc, out = call({"CNI_COMMAND": "STATUS"}, conf("1.1.0", node=node))
    if code is None:
        assert (rc, out) == (0, None)
    else:
        assert (rc, out) == (1, {"cniVersion": "1.1.0", "code": 50, "msg": "plugin not available",
                                 "details": details})


def test_version_needs_nothing_and_reads_no_stdin():
    assert cni.run({"CNI_COMMAND": "VERSION"}, b"not json") == (
        0, {"cniVersion": "1.1.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]})


def test_run_dir_from_config_reaches_the_cluster(fake, netns, monkeypatch):
    monkeypatch.setenv("PODNET_RUN_DIR", "/elsewhere")
    monkeypatch.setenv("PODNET_STATE_DIR", "/elsewhere")
    add(netns, conf(runDir="/srv/podnet/run", stateDir="/srv/podnet/state"))
    assert (os.environ["PODNET_RUN_DIR"], os.environ["PODNET_STATE_DIR"]) == ("/srv/podnet/run", "/srv/podnet/state")


# ---- as a runtime runs it: a subprocess, env + stdin ------------------------------------

DRIVER = """
import sys
sys.path.insert(0, {tests!r})
import test_cni
test_cni.use_fake({state!r})
from dataplane import cni
sys.exit(cni.main())
"""


def run_plugin(argv, e, stdin, extra_env=None):
    full = {"PATH": os.environ["PATH"], **(extra_env or {}), **e}
    return subprocess.run(argv, input=stdin, env=full, capture_output=True, timeout=60)


def fake_plugin(fake, e, config):
    argv = [sys.executable, "-c", DRIVER.format(tests=TESTS, state=str(fake.path))]
    r = run_plugin(argv, e, json.dumps(config).encode(), {"PYTHONPATH": REPO})
    assert b"Traceback" not in r.stderr, r.stderr.decode()
    return r.returncode, (json.loads(r.stdout) if r.stdout else None)


def test_subprocess_add_check_del(fake, netns):
    rc, result = fake_plugin(fake, env("ADD", netns, CNI_ARGS="K8S_POD_NAME=web-1"), conf("1.0.0"))
    assert rc == 0 and result["ips"][0]["address"] == "10.250.0.2/24"
    assert fake_plugin(fake, env("CHECK", netns, CNI_ARGS="K8S_POD_NAME=web-1"), conf(prevResult=result)) == (0, None)
    rc, out = fake_plugin(fake, env("ADD", netns, CNI_ARGS="K8S_POD_NAME=web-1"), conf())
    assert (rc, out["code"]) == (1, 100)
    assert fake_plugin(fake, env("DEL", netns), conf(prevResult=result)) == (0, None)
    assert fake_plugin(fake, env("DEL", netns), conf(prevResult=result)) == (0, None)
    assert fake.load()["pods"] == {}


def test_subprocess_stdout_is_only_the_result(fake, netns, tmp_path):
    """podnet (or a tool it runs) writing to stdout must not corrupt the JSON a runtime parses."""
    noisy = tmp_path / "noisy.py"
    noisy.write_text(
        "import subprocess, sys\n"
        f"sys.path.insert(0, {TESTS!r})\n"
        "import test_cni\n"
        f"fake = test_cni.use_fake({str(fake.path)!r})\n"
        "real = fake.pod_add\n"
        "def pod_add(*a, **k):\n"
        "    print('progress: adding pod')\n"
        "    subprocess.run(['echo', 'from a child'])\n"
        "    return real(*a, **k)\n"
        "fake.pod_add = pod_add\n"
        "from dataplane import cni\n"
        "sys.exit(cni.main())\n")
    r = run_plugin([sys.executable, str(noisy)], env("ADD", netns), json.dumps(conf()).encode(), {"PYTHONPATH": REPO})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["interfaces"][0]["name"] == "eth0"
    assert b"progress: adding pod" in r.stderr and b"from a child" in r.stderr


# ---- install / uninstall ----------------------------------------------------------------

def test_install_writes_conflist_and_launcher(tmp_path, monkeypatch):
    monkeypatch.setenv("PODNET_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("PODNET_STATE_DIR", str(tmp_path / "state"))
    conf_path, bin_path = cni.install(tmp_path / "net.d", tmp_path / "bin", node="n2")
    assert (conf_path, bin_path) == (tmp_path / "net.d" / "podnet.conflist", tmp_path / "bin" / "podnet-cni")
    conflist = json.loads(conf_path.read_text())
    assert conflist == {"cniVersion": "1.0.0", "name": "podnet", "podnet": {"managedBy": "podnet cni install"},
                        "plugins": [{"type": "podnet-cni", "node": "n2", "runDir": str(tmp_path / "run"),
                                     "stateDir": str(tmp_path / "state")}]}
    assert bin_path.stat().st_mode & 0o777 == 0o755
    # the launcher is the plugin as a runtime finds it: from a clean environment, in another directory
    r = subprocess.run([str(bin_path)], env={"CNI_COMMAND": "VERSION", "PATH": "/usr/bin:/bin"}, cwd="/",
                       capture_output=True, timeout=60)
    assert json.loads(r.stdout) == {"cniVersion": "1.1.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]}
    # the conflist's plugin entry, as libcni derives it, reaches the plugin: no cluster there -> 11 on ADD
    plugin = {"cniVersion": conflist["cniVersion"], "name": conflist["name"], **conflist["plugins"][0]}
    r = subprocess.run([str(bin_path)], input=json.dumps(plugin).encode(), capture_output=True, timeout=60,
                       env={"PATH": "/usr/bin:/bin", "CNI_COMMAND": "ADD", "CNI_CONTAINERID": CID,
                            "CNI_NETNS": "/nonexistent/ns", "CNI_IFNAME": "eth0"})
    assert (r.returncode, json.loads(r.stdout)["code"]) == (1, 3)
    r = subprocess.run([str(bin_path)], input=json.dumps(plugin).encode(), capture_output=True, timeout=60,
                       env={"PATH": "/usr/bin:/bin", "CNI_COMMAND": "DEL", "CNI_CONTAINERID": CID,
                            "CNI_IFNAME": "eth0"})
    assert (r.returncode, r.stdout) == (0, b"")          # no cluster, nothing to delete
    # installing again (new node) replaces podnet's own files
    cni.install(tmp_path / "net.d", tmp_path / "bin")
    assert "node" not in json.loads(conf_path.read_text())["plugins"][0]
    assert cni.uninstall(tmp_path / "net.d", tmp_path / "bin") == [conf_path, bin_path]
    assert not conf_path.exists() and not bin_path.exists()
    assert cni.uninstall(tmp_path / "net.d", tmp_path / "bin") == []


@pytest.mark.parametrize("which", ["conflist", "launcher"])
def test_install_and_uninstall_refuse_foreign_files(tmp_path, which):
    (tmp_path / "net.d").mkdir()
    (tmp_path / "bin").mkdir()
    foreign = (tmp_path / "net.d" / "podnet.conflist" if which == "conflist" else tmp_path / "bin" / "podnet-cni")
    foreign.write_text('{"cniVersion": "0.4.0", "name": "podnet", "plugins": []}\n' if which == "conflist"
                       else "#!/bin/sh\nexec /usr/local/bin/someone-elses-plugin\n")
    text = foreign.read_text()
    with pytest.raises(ValueError, match="was not written by podnet"):
        cni.install(tmp_path / "net.d", tmp_path / "bin")
    assert foreign.read_text() == text
    assert sorted(p.name for p in tmp_path.glob("*/*")) == [foreign.name]    # nothing else written either
    with pytest.raises(ValueError, match="was not written by podnet"):
        cni.uninstall(tmp_path / "net.d", tmp_path / "bin")
    assert foreign.read_text() == text


def test_uninstall_checks_both_before_removing_either(tmp_path):
    conf_path, bin_path = cni.install(tmp_path / "net.d", tmp_path / "bin")
    bin_path.write_text("#!/bin/sh\n# someone replaced it\n")
    with pytest.raises(ValueError):
        cni.uninstall(tmp_path / "net.d", tmp_path / "bin")
    assert conf_path.exists() and bin_path.exists()


def test_python_dash_m_runs_the_plugin():
    r = subprocess.run([sys.executable, "-m", "dataplane.cni"], env={"CNI_COMMAND": "VERSION", "PYTHONPATH": REPO},
                       capture_output=True, timeout=60)
    assert r.returncode == 0 and json.loads(r.stdout)["supportedVersions"] == ["0.4.0", "1.0.0", "1.1.0"]


def test_console_script_entry_point():
    import importlib
    import tomllib
    target = tomllib.loads((Path(REPO) / "pyproject.toml").read_text())["project"]["scripts"]["podnet-cni"]
    module, func = target.split(":")
    assert getattr(importlib.import_module(module), func) is cni.main
