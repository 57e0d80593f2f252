"""podnet-cni for real: a running cluster, network namespaces of our own
standing in for a runtime's containers, the plugin run as a runtime runs it
(its installed launcher, env + stdin, a clean environment). ADD, traffic,
CHECK and drift, DEL (twice, after the netns is gone), GC, a chain with
Debian's reference `loopback` and `tuning` plugins run the way libcni runs a
conflist, and an ADD killed part way. Needs root: skips on a developer box
without it, fails when CI=true."""
import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from netns_helpers import agent, in_pod, pod_ip, podnet, running_cluster

CLUSTER = f"pntcni{os.getpid() % 100000}"
SPEC = f"""
cluster: {{name: {CLUSTER}, podCIDR: 10.252.0.0/16, serviceCIDR: 10.99.0.0/16}}
nodes:
  - {{name: n1}}
  - {{name: n2}}
pods:
  - {{name: a, node: n1}}
  - {{name: d, node: n2}}
"""
REF_PLUGINS = Path("/usr/lib/cni")
_seq = itertools.count()


@pytest.fixture(scope="module")
def cl(tmp_path_factory):
    with running_cluster(tmp_path_factory.mktemp("cl"), SPEC) as state:
        yield state


@pytest.fixture(scope="module")
def installed(cl, tmp_path_factory):
    """podnet cni install into dirs of our own: the conflist and the launcher a runtime would use."""
    from dataplane import cni
    d = tmp_path_factory.mktemp("cni")
    conf_path, bin_path = cni.install(d / "net.d", d / "bin", node="n1")
    yield json.loads(conf_path.read_text()), bin_path
    cni.uninstall(d / "net.d", d / "bin")


class Runtime:
    """What a container runtime does: make a netns per container, run the
    plugin with CNI_* and the config on stdin; teardown DELs what it ADDed
    and removes its namespaces, also when a test failed."""

    def __init__(self, conflist, bin_path):
        self.conflist, self.bin_path = conflist, bin_path
        self.netns, self.attached = [], []

    def new_netns(self):
        name = f"pnt-cni-{os.getpid() % 100000}-{next(_seq)}"
        subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
        self.netns.append(name)
        return f"/run/netns/{name}"

    def config(self, **kw):
        """The request config libcni derives for the podnet plugin of the conflist."""
        c = {"cniVersion": self.conflist["cniVersion"], "name": self.conflist["name"], **self.conflist["plugins"][0]}
        c.update(kw)
        return c

    def env(self, cmd, cid=None, netns=None, ifname="eth0", args=None):
        # a clean environment: runDir/stateDir in the config find the cluster, not PODNET_*
        e = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": cmd,
             "CNI_PATH": f"{self.bin_path.parent}:{REF_PLUGINS}"}
        if cid is not None:                       # an attachment command: ADD, CHECK, DEL
            e.update(CNI_CONTAINERID=cid, CNI_IFNAME=ifname)
        for k, v in (("CNI_NETNS", netns), ("CNI_ARGS", args)):
            if v is not None:
                e[k] = v
        return e

    def exec(self, exe, e, config, timeout=60):
        r = subprocess.run([str(exe)], input=json.dumps(config).encode(), env=e, capture_output=True,
                           timeout=timeout)
        assert b"Traceback" not in r.stderr, r.stderr.decode()
        return r.returncode, (json.loads(r.stdout) if r.stdout.strip() else None)

    def plugin(self, cmd, cid=None, netns=None, ifname="eth0", args=None, config=None):
        if cmd == "ADD":
            self.attached.append((cid, netns, ifname))
        return self.exec(self.bin_path, self.env(cmd, cid, netns, ifname, args), config or self.config())

    def add(self, cid, netns, **kw):
        rc, out = self.plugin("ADD", cid, netns, **kw)
        assert rc == 0, out
        return out

    def cleanup(self):
        for cid, netns, ifname in self.attached:
            self.plugin("DEL", cid, netns, ifname)
        for name in self.netns:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


@pytest.fixture
def rt(installed):
    r = Runtime(*installed)
    try:
        yield r
    finally:
        r.cleanup()


def in_netns(path, *cmd, check=True):
    r = subprocess.run(["ip", "netns", "exec", os.path.basename(path), *cmd], capture_output=True, text=True,
                       timeout=20)
    if check:
        assert r.returncode == 0, f"{' '.join(cmd)}: {r.stdout}{r.stderr}"
    return r


def links(path):
    return sorted(line.split()[0].split("@")[0] for line in in_netns(path, "ip", "-br", "link").stdout.splitlines())


def ping(path, dst):
    r = in_netns(path, "ping", "-c", "3", "-i", "0.2", "-W", "2", dst, check=False)
    return "3 packets transmitted, 3 received" in r.stdout


def cluster_pod(name):
    from dataplane import cluster
    return next((p for p in cluster.pods() if p["name"] == name), None)


def gone_everywhere(cl, name, ip):
    """No record, no lease, no port on the agent."""
    from dataplane import cluster
    from dataplane.ipam import Ipam
    assert cluster_pod(name) is None
    assert name not in Ipam(cluster.state_dir() / "ipam.json").pod_leases()
    ports = agent(cl, "n1", "status")["ports"]
    assert name not in {p.get("pod") for p in ports} and ip not in {p.get("ip") for p in ports}


def test_add_traffic_check_drift_del(cl, rt):
    ns = rt.new_netns()
    cid = "c0ffee00" * 8                            # a 64-hex container id, as podman makes
    result = rt.add(cid, ns, args="IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0")
    (iface,), (ip,) = result["interfaces"], result["ips"]
    assert result["cniVersion"] == "1.0.0" and iface["name"] == "eth0" and iface["sandbox"] == ns
    assert ip["interface"] == 0 and result["routes"] == [{"dst": "0.0.0.0/0", "gw": ip["gateway"]}]
    # inside the netns: what the result says
    assert f"inet {ip['address']} " in in_netns(ns, "ip", "-o", "addr", "show", "eth0").stdout
    assert iface["mac"] in in_netns(ns, "ip", "link", "show", "eth0").stdout
    assert in_netns(ns, "ip", "route", "show", "default").stdout.startswith(f"default via {ip['gateway']} dev eth0")
    # a pod like any other: to a pod on its node, one on the other node, and back
    assert ping(ns, pod_ip(cl, "a")) and ping(ns, pod_ip(cl, "d"))
    r = in_pod(cl, "a", "ping", "-c", "2", "-i", "0.2", "-W", "2", ip["address"].split("/")[0])
    assert "2 received" in r.stdout
    # `podnet pods` lists it as the runtime's
    pods = {p["name"]: p for p in json.loads(podnet("pods", "-o", "json").stdout)}
    web = pods["web-0"]
    assert (web["container_id"], web["origin"], web["ifname"], web["namespace"]) == (cid, "cni", "eth0", ns)
    assert web["labels"] == {"io.kubernetes.pod.name": "web-0", "io.kubernetes.pod.namespace": "default"}
    assert web["mac"] == iface["mac"] and f"{web['ip']}/{web['prefixlen']}" == ip["address"]
    args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0"
    assert rt.plugin("CHECK", cid, ns, args=args, config=rt.config(prevResult=result)) == (0, None)
    # ADD again for the same attachment: refused, nothing changed
    rc, out = rt.plugin("ADD", cid, ns, args=args)
    assert (rc, out["code"]) == (1, 100)
    # drift: the address removed inside the netns
    in_netns(ns, "ip", "addr", "del", ip["address"], "dev", "eth0")
    rc, out = rt.plugin("CHECK", cid, ns, args=args, config=rt.config(prevResult=result))
    assert (rc, out["code"]) == (1, 105)
    assert out["details"].endswith(f"address {ip['address']} is missing (has none)")
    # DEL, and DEL again
    for _ in range(2):
        assert rt.plugin("DEL", cid, ns, config=rt.config(prevResult=result)) == (0, None)
    assert links(ns) == ["lo"]
    gone_everywhere(cl, "web-0", web["ip"])


def test_check_reports_a_changed_mac_and_a_lost_route(cl, rt):
    ns = rt.new_netns()
    result = rt.add("feed01", ns)
    in_netns(ns, "ip", "route", "del", "default")
    rc, out = rt.plugin("CHECK", "feed01", ns, config=rt.config(prevResult=result))
    assert out["code"] == 105 and out["details"].endswith(f"no default route via {result['ips'][0]['gateway']}")
    in_netns(ns, "ip", "link", "set", "eth0", "address", "02:00:00:00:00:42")
    rc, out = rt.plugin("CHECK", "feed01", ns, config=rt.config(prevResult=result))
    assert out["code"] == 105 and "MAC is 02:00:00:00:00:42" in out["details"]


def test_del_after_the_netns_is_gone(cl, rt):
    ns = rt.new_netns()
    result = rt.add("feed02", ns)
    rec = cluster_pod("cni-feed02")
    assert rec is not None
    subprocess.run(["ip", "netns", "del", os.path.basename(ns)], check=True, timeout=10)
    rc, out = rt.plugin("CHECK", "feed02", ns, config=rt.config(prevResult=result))
    assert (rc, out["code"]) == (1, 3)
    assert rt.plugin("DEL", "feed02", ns, config=rt.config(prevResult=result)) == (0, None)
    assert rt.plugin("DEL", "feed02", None) == (0, None)                 # no CNI_NETNS at all
    gone_everywhere(cl, "cni-feed02", rec["ip"])


def test_gc_removes_attachments_the_runtime_no_longer_has(cl, rt):
    keep, drop = rt.new_netns(), rt.new_netns()
    rt.add("feed03", keep)
    rt.add("feed04", drop)
    drop_ip = cluster_pod("cni-feed04")["ip"]
    gc = rt.config(cniVersion="1.1.0", **{"cni.dev/valid-attachments": [{"containerID": "feed03", "ifname": "eth0"}]})
    assert rt.exec(rt.bin_path, rt.env("GC"), gc) == (0, None)
    assert cluster_pod("cni-feed03") is not None and cluster_pod("a") is not None      # spec pods stay
    gone_everywhere(cl, "cni-feed04", drop_ip)
    assert links(drop) == ["lo"] and "eth0" in links(keep)
    assert rt.exec(rt.bin_path, rt.env("STATUS"), rt.config(cniVersion="1.1.0")) == (0, None)


def run_chain(rt, cmd, conflist, e, final=None):
    """libcni's way with a conflist: each plugin's config derived from it,
    ADD in order (each gets the previous plugin's result as prevResult, the
    first none), CHECK in order and DEL in reverse with the final ADD result."""
    plugins = conflist["plugins"][::-1] if cmd == "DEL" else conflist["plugins"]
    result = final
    for plugin in plugins:
        conf = {"cniVersion": conflist["cniVersion"], "name": conflist["name"], **plugin}
        if result is not None:
            conf["prevResult"] = result if cmd == "ADD" else final
        exe = next(Path(d) / plugin["type"] for d in e["CNI_PATH"].split(":") if (Path(d) / plugin["type"]).exists())
        rc, out = rt.exec(exe, e, conf)
        if rc != 0:
            return rc, out, plugin["type"]
        if cmd == "ADD":
            result = out
    return 0, result if cmd == "ADD" else None, None


def test_chain_with_reference_loopback_and_tuning(cl, rt):
    for p in ("loopback", "tuning"):
        assert (REF_PLUGINS / p).exists(), f"{REF_PLUGINS / p} missing: apt install containernetworking-plugins"
    conflist = dict(rt.conflist, plugins=[{"type": "loopback"}, rt.conflist["plugins"][0],
                                          {"type": "tuning", "sysctl": {"net.core.somaxconn": "321",
                                                                        "net.ipv4.conf.eth0.arp_ignore": "1"}}])
    ns = rt.new_netns()
    rt.attached.append(("feed05", ns, "eth0"))
    e = rt.env("ADD", "feed05", ns)
    rc, result, failed = run_chain(rt, "ADD", conflist, e)
    assert rc == 0, (failed, result)
    # loopback's lo first, podnet's eth0 appended as interface 1, tuning passed it through
    assert [i["name"] for i in result["interfaces"]] == ["lo", "eth0"]
    mine = next(ip for ip in result["ips"] if ip.get("interface") == 1)
    assert mine["address"] == cluster_pod("cni-feed05")["ip"] + "/24"
    assert in_netns(ns, "sysctl", "-n", "net.core.somaxconn").stdout.strip() == "321"
    assert in_netns(ns, "sysctl", "-n", "net.ipv4.conf.eth0.arp_ignore").stdout.strip() == "1"
    assert ping(ns, pod_ip(cl, "a"))
    assert run_chain(rt, "CHECK", conflist, dict(e, CNI_COMMAND="CHECK"), result) == (0, None, None)
    # tuning's CHECK sees its sysctl changed; podnet's still passes
    in_netns(ns, "sysctl", "-qw", "net.core.somaxconn=100")
    rc, out, failed = run_chain(rt, "CHECK", conflist, dict(e, CNI_COMMAND="CHECK"), result)
    assert rc != 0 and failed == "tuning"
    assert run_chain(rt, "DEL", conflist, dict(e, CNI_COMMAND="DEL"), result) == (0, None, None)
    assert links(ns) == ["lo"] and cluster_pod("cni-feed05") is None


KILLER = """
import os, signal, sys
sys.path.insert(0, {repo!r})
from dataplane import cluster, cni
when = {when!r}
real_request, real_pod_add = cluster.request, cluster.pod_add


def request(sock, op, *a, **k):
    if op == "pod_add" and when == "before-agent":
        os.kill(os.getpid(), signal.SIGKILL)      # the record is saved, "adding"; the agent knows nothing
    out = real_request(sock, op, *a, **k)
    if op == "pod_add" and when == "after-agent":
        os.kill(os.getpid(), signal.SIGKILL)      # the agent has the port and the TAP; the record is "adding"
    return out


def pod_add(*a, **k):
    rec = real_pod_add(*a, **k)
    os.kill(os.getpid(), signal.SIGKILL)          # all done but the runtime never hears of it
    return rec


cluster.request = request
if when == "after-pod-add":
    cluster.pod_add = pod_add
sys.exit(cni.main())
"""


@pytest.mark.parametrize("cleanup", ["DEL", "GC"])
@pytest.mark.parametrize("when", ["before-agent", "after-agent", "after-pod-add"])
def test_add_killed_midway_is_cleaned_by_del_or_gc(cl, rt, tmp_path, when, cleanup):
    from dataplane import cluster
    ns = rt.new_netns()
    cid = f"dead{next(_seq):04d}"
    rt.attached.append((cid, ns, "eth0"))
    killer = tmp_path / "killer.py"
    killer.write_text(KILLER.format(repo=str(Path(__file__).resolve().parent.parent), when=when))
    r = subprocess.run([sys.executable, str(killer)], input=json.dumps(rt.config()).encode(),
                       env=rt.env("ADD", cid, ns), capture_output=True, timeout=60)
    assert r.returncode == -9 and r.stdout == b"", r.stderr.decode()
    rec = cluster.attachment(cid, "eth0")
    assert rec is not None and rec["phase"] == ("ready" if when == "after-pod-add" else "adding")
    if cleanup == "DEL":                               # what a runtime does after a failed ADD
        assert rt.plugin("DEL", cid, ns) == (0, None)
    else:
        gc = rt.config(cniVersion="1.1.0", **{"cni.dev/valid-attachments": []})
        assert rt.exec(rt.bin_path, rt.env("GC"), gc) == (0, None)
    assert links(ns) == ["lo"]
    gone_everywhere(cl, rec["name"], rec["ip"])
    # and the container can be attached again
    result = rt.add(cid, ns)
    assert ping(ns, pod_ip(cl, "a")), result


def test_plugin_errors_against_the_real_cluster(cl, rt):
    ns = rt.new_netns()
    rc, out = rt.plugin("ADD", "feed06", ns, config=rt.config(node="n7"))
    assert (rc, out["code"]) == (1, 7) and "n7" in out["details"]
    rt.add("feed07", ns, args="K8S_POD_NAME=a-twin")
    other = rt.new_netns()
    rc, out = rt.plugin("ADD", "feed08", other, args="K8S_POD_NAME=a")           # the spec pod's name
    assert (rc, out["code"]) == (1, 101)
    rc, out = rt.plugin("ADD", "feed09", ns, ifname="eth0")                      # eth0 is taken there
    assert (rc, out["code"]) == (1, 102)
    assert links(other) == ["lo"] and cluster_pod("cni-feed08") is None and cluster_pod("cni-feed09") is None
    for own in (f"/proc/{os.getpid()}/ns/net", "/proc/self/ns/net"):  # the host's; the answering process's
        rc, out = rt.plugin("ADD", "feed10", own)
        assert (rc, out["code"]) == (1, 4) and out["msg"] == "CNI_NETNS is the plugin's own or the host's network namespace"
    assert re.fullmatch(r"\d+\.\d+\.\d+", rt.exec(rt.bin_path, rt.env("VERSION"), {})[1]["cniVersion"])


def test_the_installed_plugin_is_a_client_of_the_agents_cni_server(cl, rt, installed):
    """`cni install` compiles cni_client.c: calls go to the first node's
    agent over RUN_DIR/cni.sock (no Python start-up per call), and when that
    socket does not answer the client runs the Python plugin instead."""
    from dataplane import cluster
    _, bin_path = installed
    assert bin_path.read_bytes()[:4] == b"\x7fELF"
    sock = cluster.cni_socket()
    assert sock.exists() and f"{sock}" in json.loads(Path(cl.nodes["n1"].config).read_text())["cni"]["socket"]
    ns = rt.new_netns()
    before = agent(cl, "n1", "status")["cni_server"]
    assert rt.add("feed20", ns)["ips"][0]["gateway"] == cl.nodes["n1"].gateway_ip
    after = agent(cl, "n1", "status")["cni_server"]
    assert (after["served"], after["errors"]) == (before["served"] + 1, before["errors"])   # n1's agent ran it
    moved = sock.with_name("cni.sock.away")
    os.rename(sock, moved)                                               # the server unreachable
    try:
        rc, out = rt.plugin("CHECK", "feed20", ns)
        assert (rc, out) == (0, None)                                    # answered by the Python plugin
    finally:
        os.rename(moved, sock)
    assert agent(cl, "n1", "status")["cni_server"]["served"] == after["served"]    # CHECK did not reach it
    rc, out = rt.plugin("DEL", "feed20", ns)
    assert (rc, out) == (0, None) and cluster_pod("cni-feed20") is None


def test_down_refuses_while_containers_are_attached_unless_force(tmp_path):
    """`podnet down` would pull the network from under a runtime's
    containers: it refuses while CNI attachments exist; --force detaches
    them (their TAPs leave the runtime's netns, which stays the runtime's)
    and then removes the cluster."""
    from dataplane import cluster, cni
    from netns_helpers import cluster_env
    name = f"{CLUSTER}d"
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.replace(CLUSTER, name))
    with cluster_env(tmp_path):
        try:
            cluster.up(str(spec), progress=lambda *_: None)
            conf, launcher = cni.install(tmp_path / "net.d", tmp_path / "bin")
            r = Runtime(json.loads(conf.read_text()), launcher)
            try:
                ns = r.new_netns()
                r.add("c0ffee" * 4, ns)
                assert "eth0" in links(ns)
                down = podnet("down", check=False)
                assert down.returncode == 1 and "1 container is attached through CNI (c0ffeec0ffee)" in down.stderr
                assert "--force" in down.stderr and len(down.stderr.strip().splitlines()) == 1
                assert cluster.load_state() is not None and "eth0" in links(ns)      # nothing changed
                forced = podnet("down", "--force")
                assert "detached container c0ffeec0ffee" in forced.stdout and f"cluster {name} down" in forced.stdout
                assert cluster.load_state() is None
                assert "eth0" not in links(ns) and os.path.exists(ns)              # the runtime's netns stays
                assert not [n for n in os.listdir("/run/netns") if n.startswith(f"{name}-")]
                r.attached.clear()                                                  # nothing left to DEL
            finally:
                r.cleanup()
        finally:
            cluster.down(quiet=True, force=True)
