"""A real runtime (podman 4.3 + runc, tests/runtimes.py) driven by CNI.
First the harness itself: a container with no network, one on a CNI
network of our own (loopback and a recording plugin, nothing in the root
namespace), and teardown leaving nothing behind. Then podnet-cni as podman
runs it: a container gets a podnet address, reaches a pod on another node
and a ClusterIP, backs a Service through its labels, and `podman rm`
releases its address. Needs root and podman: skips on a developer box
without them, fails when CI=true."""
import ipaddress
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from netns_helpers import read_json_line, running_cluster, wait_until
from runtimes import CNI_CACHE, Podman, podman, read_records, require_podman, write_conflist, write_recorder


@pytest.fixture
def cni_dirs(tmp_path):
    conf, bin_ = tmp_path / "net.d", tmp_path / "bin"
    conf.mkdir()
    bin_.mkdir()
    return conf, bin_


def _addrs(ip_o_addr):
    """{ifname: [address/prefix, ...]} from `ip -o addr` (busybox or iproute2)."""
    out = {}
    for line in ip_o_addr.splitlines():
        f = line.split()
        if len(f) >= 4 and f[2] in ("inet", "inet6"):
            out.setdefault(f[1], []).append(f[3])
    return out


def test_network_none_container_has_only_loopback(cni_dirs):
    conf, bin_ = cni_dirs
    with podman(conf, [bin_, "/usr/lib/cni"]) as pm:
        r = pm.run("pnt-none", "ip", "-o", "addr", network="none")
        assert _addrs(r.stdout) == {"lo": ["127.0.0.1/8", "::1/128"]}
        # the container ran in a rootfs of ours: busybox is what answers
        r = pm.run("pnt-none2", "sh", "-c", "readlink /bin/ip; id -u; exit 7", network="none", check=False)
        assert r.returncode == 7 and r.stdout.split() == ["busybox", "0"]


def test_cni_network_of_our_own_is_called_with_our_dirs(cni_dirs, tmp_path):
    """podman finds our conflist in our conf dir and our plugin in our bin
    dir; ADD gets the container's id, eth0 and its netns; rm runs DEL."""
    conf, bin_ = cni_dirs
    log = tmp_path / "cni.log"
    write_recorder(bin_)
    write_conflist(conf, "pntlo", [{"type": "loopback"}, {"type": "pnt-record", "log": str(log)}])
    with podman(conf, [bin_, "/usr/lib/cni"]) as pm:
        pm.run("pnt-lo", "sleep", "60", network="pntlo", detach=True)
        cid, netns = pm.containers["pnt-lo"]["id"], pm.containers["pnt-lo"]["netns"]
        (add,) = [r for r in read_records(log) if r["cmd"] == "ADD"]
        env = add["env"]
        assert env["CNI_CONTAINERID"] == cid and env["CNI_IFNAME"] == "eth0" and env["CNI_NETNS"] == netns
        assert env["CNI_PATH"].split(":")[0] == str(bin_)
        assert env["CNI_ARGS"] == "IgnoreUnknown=1;K8S_POD_NAME=pnt-lo"     # what podman 4.3 sends
        assert add["conf"]["name"] == "pntlo" and add["conf"]["log"] == str(log)
        # loopback ran first in the chain: its result is what we were handed
        assert add["conf"]["prevResult"]["interfaces"][0]["name"] == "lo"
        # CNI_NETNS is the container's network namespace
        pid = pm.pid("pnt-lo")
        assert os.stat(netns).st_ino == os.stat(f"/proc/{pid}/ns/net").st_ino
        assert _addrs(pm.exec("pnt-lo", "ip", "-o", "addr").stdout) == {"lo": ["127.0.0.1/8", "::1/128"]}
        pm.rm("pnt-lo")
        dels = [r for r in read_records(log) if r["cmd"] == "DEL"]
        assert dels and all(r["env"]["CNI_CONTAINERID"] == cid for r in dels)
        assert not os.path.exists(netns)
        assert not list((CNI_CACHE / "results").glob(f"*-{cid}-*"))


def test_teardown_removes_storage_cgroups_and_leftover_containers(cni_dirs):
    """close() after a test that left a running container (as a failing
    test would): no container process, cgroup, netns or temp dir remains."""
    require_podman()
    conf, bin_ = cni_dirs
    write_conflist(conf, "pntlo", [{"type": "loopback"}])
    pm = Podman(conf, [bin_, "/usr/lib/cni"])
    try:
        pm.run("pnt-left", "sleep", "600", network="pntlo", detach=True)
        pid, netns = pm.pid("pnt-left"), pm.containers["pnt-left"]["netns"]
        assert pm._cgroup_dirs() and os.path.exists(netns)
    finally:
        assert pm.close() == []
    assert not os.path.exists(f"/proc/{pid}") or b"sleep" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    assert not os.path.exists(netns)
    assert not pm.base.exists() and pm._cgroup_dirs() == []


# ---- podnet-cni under podman ---------------------------------------------

SPEC = """
cluster: {name: pnpodman, podCIDR: 10.228.0.0/16, serviceCIDR: 10.82.0.0/16}
nodes: [{name: n1}, {name: n2}]
pods:
  - {name: a, node: n1, labels: {app: client}}
  - {name: b, node: n2, labels: {app: web}}
services:
  - {name: web, selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}
"""

# answers each GET with "<name> <client address>"; prints one JSON line once listening
HTTP_SERVER = """
import http.server, json, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"{sys.argv[1]} {self.client_address[0]}\\n".encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
s = http.server.HTTPServer(("0.0.0.0", 8080), H)
print(json.dumps("listening"), flush=True)
s.serve_forever()
"""

HTTP_GET = """
import sys, urllib.request
print(urllib.request.urlopen(f"http://{sys.argv[1]}:{sys.argv[2]}/", timeout=5).read().decode(), end="")
"""


@pytest.fixture(scope="module")
def pn(tmp_path_factory):
    """A podnet cluster, `podnet cni install` into dirs of the test's own (a
    second network podnet-web: node n2, labels app=podman-web) and podman
    using only those dirs."""
    require_podman()
    from dataplane import cluster, cni
    tmp = tmp_path_factory.mktemp("rt")
    with running_cluster(tmp, SPEC):
        conf, bin_ = tmp / "net.d", tmp / "bin"
        cni.install(conf, bin_)
        web = json.loads((conf / "podnet.conflist").read_text())
        web["name"] = "podnet-web"
        web["plugins"][0].update(node="n2", labels={"app": "podman-web"})
        (conf / "podnet-web.conflist").write_text(json.dumps(web))
        with podman(conf, [bin_]) as pm:
            yield cluster, pm, tmp


def spec_pod(cluster, pod, *cmd, timeout=20):
    """Run cmd in a spec pod's namespace, as `podnet exec POD -- cmd` does."""
    r = subprocess.run(["ip", "netns", "exec", cluster.pod_namespace(pod), *cmd], capture_output=True,
                       text=True, timeout=timeout)
    assert r.returncode == 0, f"{cmd} in {pod}: {r.stdout}{r.stderr}"
    return r.stdout


def pod_ip(cluster, name):
    return next(p["ip"] for p in cluster.pods() if p["name"] == name)


def start_container(cluster, pm, name, *command, network="podnet", files=None):
    pm.run(name, *command, network=network, detach=True, files=files)
    cid = pm.containers[name]["id"]
    rec = cluster.attachment(cid, "eth0")
    assert rec is not None, f"podnet has no pod for container {cid}"
    return cid, rec


@pytest.fixture(scope="module")
def c1(pn):
    cluster, pm, _ = pn
    return start_container(cluster, pm, "pnt-c1", "sleep", "600")


def test_container_gets_a_podnet_address(pn, c1):
    cluster, pm, _ = pn
    cid, rec = c1
    # podman 4.3 passes CNI_ARGS K8S_POD_NAME=<container name> (no namespace): the pod's name
    assert rec["name"] == "pnt-c1" and rec["origin"] == "cni" and rec["container_id"] == cid
    assert rec["node"] == "n1" and rec["phase"] == "ready" and rec["labels"] == {"io.kubernetes.pod.name": "pnt-c1"}
    assert rec["netns"] == pm.containers["pnt-c1"]["netns"]          # podman's netns, not one podnet made
    assert ipaddress.ip_address(rec["ip"]) in ipaddress.ip_network("10.228.0.0/16")
    assert rec["name"] in [p["name"] for p in cluster.pods()]
    # inside the container: the address, MAC, MTU and default route podnet forwards for
    assert _addrs(pm.exec("pnt-c1", "ip", "-o", "-4", "addr").stdout) == {
        "lo": ["127.0.0.1/8"], "eth0": [f"{rec['ip']}/{rec['prefixlen']}"]}
    link = pm.exec("pnt-c1", "ip", "link", "show", "eth0").stdout
    assert rec["mac"] in link and f"mtu {rec['mtu']}" in link
    assert f"default via {rec['gateway']} dev eth0" in pm.exec("pnt-c1", "ip", "route").stdout
    # podman understood podnet-cni's result
    assert pm.inspect("pnt-c1")["NetworkSettings"]["Networks"]["podnet"]["IPAddress"] == rec["ip"]


def test_container_pings_a_pod_on_another_node(pn, c1):
    cluster, pm, _ = pn
    _, rec = c1
    out = pm.exec("pnt-c1", "ping", "-c", "3", "-W", "2", pod_ip(cluster, "b"), timeout=30).stdout
    assert "3 packets transmitted, 3 packets received" in out, out
    out = spec_pod(cluster, "b", "ping", "-c", "3", "-i", "0.2", "-W", "2", rec["ip"])
    assert "3 packets transmitted, 3 received" in out, out


def test_container_reaches_a_clusterip(pn, c1):
    cluster, pm, _ = pn
    _, rec = c1
    (vip,) = [e["vip"] for e in cluster.services() if e["service"] == "default/web"]
    server = subprocess.Popen(["ip", "netns", "exec", cluster.pod_namespace("b"), sys.executable, "-c",
                               textwrap.dedent(HTTP_SERVER), "b"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert read_json_line(server) == "listening"
        # nc, not wget: busybox-static's wget dies of SIGSEGV here even on an address literal
        out = pm.exec("pnt-c1", "sh", "-c", f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {vip} 80",
                      timeout=30).stdout
        assert out.startswith("HTTP/1.0 200 ") and out.endswith(f"\n\nb {rec['ip']}\n"), out
        # backend b answered, and it saw the container's own address
    finally:
        server.kill()
        server.wait()
        server.stdout.close()
        server.stderr.close()


def test_container_backs_a_service_by_its_labels(pn):
    cluster, pm, tmp = pn
    cid, rec = start_container(cluster, pm, "pnt-web", "httpd", "-f", "-p", "8080", "-h", "/www",
                               network="podnet-web", files={"www/index.html": "served by podman\n"})
    assert rec["node"] == "n2" and rec["labels"] == {"app": "podman-web", "io.kubernetes.pod.name": "pnt-web"}
    svc = tmp / "pmweb.yaml"
    svc.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: pmweb}\n"
                   "spec:\n  selector: {app: podman-web}\n  ports: [{port: 80, targetPort: 8080}]\n")
    cluster.apply_file(str(svc))
    try:
        (entry,) = [e for e in cluster.services() if e["service"] == "default/pmweb"]
        assert entry["backends"] == [[rec["ip"], 8080]]
        wait_until(lambda: ":8080 " in pm.exec("pnt-web", "netstat", "-ltn").stdout, 10, "httpd listening")
        # a spec pod on n1 -> ClusterIP -> the container on n2
        assert spec_pod(cluster, "a", sys.executable, "-c", HTTP_GET, entry["vip"], "80") == "served by podman\n"
        pm.rm("pnt-web")
        (entry,) = [e for e in cluster.services() if e["service"] == "default/pmweb"]
        assert entry["backends"] == []                 # the selector no longer matches anything
    finally:
        cluster.apply_file(str(svc), delete=True)


def test_podman_rm_releases_the_address(pn):
    cluster, pm, _ = pn
    cid, rec = start_container(cluster, pm, "pnt-gone", "sleep", "600")
    leases = cluster.state_dir() / "ipam.json"
    assert json.loads(leases.read_text())["pods"][rec["name"]] == rec["ip"]
    pm.rm("pnt-gone")
    assert rec["name"] not in [p["name"] for p in cluster.pods()]
    assert cluster.attachment(cid, "eth0") is None
    held = json.loads(leases.read_text())["pods"]
    assert rec["name"] not in held and rec["ip"] not in held.values()
