"""A real runtime (podman 4.3 + runc, tests/runtimes.py) driven by CNI.
First the harness itself: a container with no network, one on a CNI
network of our own (loopback and a recording plugin, nothing in the root
namespace), and teardown leaving nothing behind. Needs root and podman:
skips on a developer box without them, fails when CI=true."""
import os
from pathlib import Path

import pytest

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
