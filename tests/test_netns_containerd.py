"""A real containerd (1.6 + runc, tests/containerd.py) driven by CNI through
`ctr run --cni`, which only reads /etc/cni/net.d and /opt/cni/bin: the
daemon and ctr run in a private mount namespace with the test's own dirs
mounted there. First the harness: the mount plan, a loopback network of our
own (the host's paths untouched), teardown leaving nothing. Then podnet-cni
as ctr runs it: a container gets a podnet address, pings a pod on another
node, is listed with its container id, and its removal releases the
address. Needs root, containerd and busybox-static: skips on a developer
box without them, fails when CI=true."""
import ipaddress
import json
import os
import subprocess
from pathlib import Path

import pytest

from containerd import Containerd, containerd, host_view, mount_plan, require_containerd
from netns_helpers import running_cluster
from runtimes import read_records, write_conflist, write_recorder
from test_netns_runtimes import _addrs, pod_ip, spec_pod


@pytest.fixture
def cni_dirs(tmp_path):
    """Our conf dir with a loopback-only network, our bin dir with Debian's loopback."""
    conf, bin_ = tmp_path / "net.d", tmp_path / "bin"
    conf.mkdir()
    bin_.mkdir()
    (bin_ / "loopback").symlink_to("/usr/lib/cni/loopback")
    return conf, bin_


def test_mount_plan_binds_existing_paths_and_overlays_the_parent_of_missing_ones(tmp_path):
    (tmp_path / "there").mkdir()
    (tmp_path / "p").mkdir()
    src, scratch = tmp_path / "src", tmp_path / "scratch"
    plan = mount_plan([(tmp_path / "there", src), (tmp_path / "p/q/r", src), (tmp_path / "p/s", src)], scratch)
    overlay = ["mount", "-n", "-t", "overlay", "pnt-ovl", "-o",
               f"lowerdir={tmp_path}/p,upperdir={scratch}/0-upper,workdir={scratch}/0-work", f"{tmp_path}/p"]
    assert plan == [
        ["mount", "-n", "-t", "tmpfs", "pnt-ctrd", str(scratch)],
        ["mount", "-n", "--bind", str(src), f"{tmp_path}/there"],
        ["mkdir", f"{scratch}/0-upper", f"{scratch}/0-work"], overlay,       # once for both paths under p
        ["mkdir", "-p", f"{tmp_path}/p/q/r"], ["mount", "-n", "--bind", str(src), f"{tmp_path}/p/q/r"],
        ["mkdir", "-p", f"{tmp_path}/p/s"], ["mount", "-n", "--bind", str(src), f"{tmp_path}/p/s"]]
    with pytest.raises(ValueError, match="only / could be overlaid"):
        mount_plan([(Path("/pnt-no-such-dir/x"), src)], scratch)


def test_loopback_network_of_our_own_through_the_fixed_paths(cni_dirs, tmp_path):
    """ctr finds our conflist at /etc/cni/net.d and our plugins at
    /opt/cni/bin inside its namespace only; ADD gets the container's id,
    eth0 and its netns; killing the task runs DEL."""
    conf, bin_ = cni_dirs
    log = tmp_path / "cni.log"
    write_recorder(bin_)
    write_conflist(conf, "pntlo", [{"type": "loopback"}, {"type": "pnt-record", "log": str(log)}])
    with containerd(conf, bin_) as ct:
        pid = ct.start("lo1", "sleep", "60")
        (add,) = [r for r in read_records(log) if r["cmd"] == "ADD"]
        env = add["env"]
        assert env["CNI_CONTAINERID"] == "pnt-lo1" and env["CNI_IFNAME"] == "eth0"
        # Debian's go-cni searches its /usr/lib/cni after the fixed dir (read only, never written)
        assert env["CNI_NETNS"] == f"/proc/{pid}/ns/net" and env["CNI_PATH"].split(":")[0] == "/opt/cni/bin"
        assert env.get("CNI_ARGS", "") == ""                # go-cni sends no pod name: podnet names it
        assert add["conf"]["name"] == "pntlo" and add["conf"]["prevResult"]["interfaces"][0]["name"] == "lo"
        assert _addrs(ct.exec("lo1", "ip", "-o", "addr").stdout) == {"lo": ["127.0.0.1/8", "::1/128"]}
        # libcni's result cache went to our dir; inside, the fixed paths are ours
        assert (ct.base / "cni-cache" / "results" / "pntlo-pnt-lo1-eth0").is_file()
        inside = subprocess.run(["nsenter", f"--mount=/proc/{ct.daemon.pid}/ns/mnt", "ls", "/etc/cni/net.d",
                                 "/opt/cni/bin"], capture_output=True, text=True, timeout=10, check=True).stdout
        assert inside.split() == ["/etc/cni/net.d:", "pntlo.conflist", "/opt/cni/bin:", "loopback", "pnt-record"]
        assert host_view() == ct.host_before                # and outside nothing changed
        ct.remove("lo1")
        dels = [r for r in read_records(log) if r["cmd"] == "DEL"]
        assert dels and all(r["env"]["CNI_CONTAINERID"] == "pnt-lo1" for r in dels)
        assert not (ct.base / "cni-cache" / "results" / "pntlo-pnt-lo1-eth0").exists()
        assert "lo1" not in ct.tasks() and ct("container", "ls", "--quiet").stdout.split() == []
        # a foreground run: the command's exit status, in a rootfs of ours (busybox answers)
        r = ct.run("lo2", "sh", "-c", "readlink /bin/ip; id -u; exit 7", check=False)
        assert r.returncode == 7 and r.stdout.split() == ["busybox", "0"], r.stderr


def test_teardown_removes_daemon_shims_cgroups_and_leftover_containers(cni_dirs):
    """close() after a test that left a background and a detached container
    running (as a failing test would): no process of ours, cgroup, mount
    namespace or temp dir remains, and the host's fixed paths are as before."""
    require_containerd()
    conf, bin_ = cni_dirs
    write_conflist(conf, "pntlo", [{"type": "loopback"}])
    ct = Containerd(conf, bin_)
    try:
        ct.start_daemon()
        pids = [ct.start("left1", "sleep", "600"), ct.run_detached("left2", "sleep", "600")]
        shims = [p for p in ct.ns_pids() if Path(f"/proc/{p}/comm").read_text().startswith("containerd-shim")]
        assert len(shims) == 2 and ct._cgroup_dirs()
    finally:
        assert ct.close() == []
    for p in [*pids, *shims, ct.daemon.pid]:
        assert not os.path.exists(f"/proc/{p}") or b"sleep" not in Path(f"/proc/{p}/cmdline").read_bytes() \
            and b"containerd" not in Path(f"/proc/{p}/cmdline").read_bytes()
    assert ct.daemon.returncode is not None and ct.ns_pids() == []
    assert not ct.base.exists() and ct._cgroup_dirs() == [] and host_view() == ct.host_before


# ---- podnet-cni under containerd -----------------------------------------

SPEC = """
cluster: {name: pnctrd, podCIDR: 10.229.0.0/16, serviceCIDR: 10.84.0.0/16}
nodes: [{name: n1}, {name: n2}]
pods:
  - {name: a, node: n1}
  - {name: b, node: n2}
"""


@pytest.fixture(scope="module")
def pn(tmp_path_factory):
    """A podnet cluster, `podnet cni install` into dirs of the test's own,
    and a containerd that sees them as /etc/cni/net.d and /opt/cni/bin."""
    require_containerd()
    from dataplane import cluster, cni
    tmp = tmp_path_factory.mktemp("ctrd")
    with running_cluster(tmp, SPEC):
        conf, bin_ = tmp / "net.d", tmp / "bin"
        cni.install(conf, bin_)
        with containerd(conf, bin_) as ct:
            yield cluster, ct


def start_container(cluster, ct, cid, *command, detach=False):
    pid = ct.run_detached(cid, *command) if detach else ct.start(cid, *command)
    rec = cluster.attachment(f"pnt-{cid}", "eth0")
    assert rec is not None, f"podnet has no pod for container pnt-{cid}"
    return pid, rec


@pytest.fixture(scope="module")
def c1(pn):
    cluster, ct = pn
    return start_container(cluster, ct, "c1", "sleep", "600")


def test_container_gets_a_podnet_address(pn, c1):
    cluster, ct = pn
    pid, rec = c1
    # no CNI_ARGS from go-cni: the pod is named after CNI_CONTAINERID "pnt-c1"
    assert rec["name"] == "cni-pnt-c1" and rec["origin"] == "cni" and rec["container_id"] == "pnt-c1"
    assert rec["node"] == "n1" and rec["phase"] == "ready" and rec["labels"] == {}
    assert rec["netns"] == f"/proc/{pid}/ns/net"                    # the task's own netns, no file
    assert ipaddress.ip_address(rec["ip"]) in ipaddress.ip_network("10.229.0.0/16")
    assert [(p["name"], p["ip"]) for p in cluster.pods() if p["container_id"] == "pnt-c1"] == [
        ("cni-pnt-c1", rec["ip"])]
    # inside the container: the address, MAC, MTU and default route podnet forwards for
    assert _addrs(ct.exec("c1", "ip", "-o", "-4", "addr").stdout) == {
        "lo": ["127.0.0.1/8"], "eth0": [f"{rec['ip']}/{rec['prefixlen']}"]}
    link = ct.exec("c1", "ip", "link", "show", "eth0").stdout
    assert rec["mac"] in link and f"mtu {rec['mtu']}" in link
    assert f"default via {rec['gateway']} dev eth0" in ct.exec("c1", "ip", "route").stdout


def test_container_pings_a_pod_on_another_node(pn, c1):
    cluster, ct = pn
    _, rec = c1
    out = ct.exec("c1", "ping", "-c", "3", "-W", "2", pod_ip(cluster, "b"), timeout=30).stdout
    assert "3 packets transmitted, 3 packets received" in out, out
    out = spec_pod(cluster, "b", "ping", "-c", "3", "-i", "0.2", "-W", "2", rec["ip"])
    assert "3 packets transmitted, 3 received" in out, out


def test_killing_the_task_of_ctr_run_rm_releases_the_address(pn):
    """ctr run --rm: the task exits, ctr runs DEL, then removes the container."""
    cluster, ct = pn
    _, rec = start_container(cluster, ct, "gone", "sleep", "600")
    leases = cluster.state_dir() / "ipam.json"
    assert json.loads(leases.read_text())["pods"][rec["name"]] == rec["ip"]
    ct.remove("gone")
    assert "gone" not in ct.tasks() and "gone" not in ct("container", "ls", "--quiet").stdout.split()
    assert rec["name"] not in [p["name"] for p in cluster.pods()]
    assert cluster.attachment("pnt-gone", "eth0") is None
    held = json.loads(leases.read_text())["pods"]
    assert rec["name"] not in held and rec["ip"] not in held.values()


def test_a_detached_container_keeps_its_address_until_podnet_deletes_the_pod(pn):
    """ctr run -d, then task kill + task rm + container rm: ctr never runs
    DEL on that path, so podnet still holds the pod; pod delete frees it
    though the netns went with the task."""
    cluster, ct = pn
    _, rec = start_container(cluster, ct, "det", "sleep", "600", detach=True)
    ct.remove("det")
    assert "det" not in ct("container", "ls", "--quiet").stdout.split()
    assert cluster.attachment("pnt-det", "eth0")["ip"] == rec["ip"]
    leases = cluster.state_dir() / "ipam.json"
    assert json.loads(leases.read_text())["pods"][rec["name"]] == rec["ip"]
    assert cluster.pod_delete(rec["name"])["ip"] == rec["ip"]
    assert cluster.attachment("pnt-det", "eth0") is None
    assert rec["ip"] not in json.loads(leases.read_text())["pods"].values()
