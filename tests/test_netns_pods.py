"""Pods that come and go on a running cluster, for real: `podnet pod add`,
`pod delete`, `kind: Pod` manifests; endpoints that follow selectors; the
other pods' traffic and connections left alone; errors that leave nothing.
Needs root: skips on a developer box without it, fails when CI=true."""
import json
import os
import re
import subprocess
import time

import pytest

from netns_helpers import agent, in_pod, kill_agent, podnet, running_cluster, spawn_in_pod, wait_listening, \
    wait_until

SPEC = """
cluster: {name: pnlive, podCIDR: 10.251.0.0/16, serviceCIDR: 10.98.0.0/16}
nodes:
  - {name: n1}
  - {name: n2}
pods:
  - {name: a, node: n1, labels: {app: client}}
  - {name: w1, node: n1, labels: {app: web}}
  - {name: b, node: n2, labels: {app: client}}
services:
  - {name: web, selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}
  - {name: dns, selector: {app: dns}, ports: [{port: 53, targetPort: 5353, protocol: UDP}]}
"""

WHOAMI = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080)); s.listen(64)
while True:
    c, _ = s.accept(); c.sendall(sys.argv[1].encode()); c.close()
"""

ASK = """
import collections, socket, sys
seen = collections.Counter()
for _ in range(int(sys.argv[2])):
    c = socket.create_connection((sys.argv[1], 80), timeout=3)
    seen[c.recv(64).decode()] += 1
    c.close()
print(dict(seen))
"""


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    with running_cluster(tmp_path_factory.mktemp("live"), SPEC) as st:
        yield st


def now():
    from dataplane import cluster
    return cluster.load_state()


def ping(pod, dst, count=3, interval="0.2"):
    r = in_pod(now(), pod, "ping", "-c", str(count), "-i", interval, "-W", "2", dst, check=False, timeout=60)
    m = re.search(r"(\d+) packets transmitted, (\d+) received", r.stdout)
    assert m, r.stdout + r.stderr
    return int(m.group(1)), int(m.group(2))


def backends(name):
    vip = now().services_plan[name]
    return sorted(ip for e in now().service_entries if e["vip"] == vip for ip, _ in e["backends"])


def leases():
    return json.loads((now_dir() / "ipam.json").read_text())["pods"]


def now_dir():
    from dataplane import cluster
    return cluster.state_dir()


def snapshot_clients(path):
    """The client addresses (as ints) of the connections in a node's snapshot file."""
    import struct
    from dataplane.snapshot import CT_RECORD, read
    try:
        data = read(path)[1]["conntrack"]
    except (OSError, ValueError):
        return set()
    return {r[0] for r in struct.iter_unpack(f"=I{CT_RECORD - 4}x", data)}


def test_pod_add_plugs_a_pod_in_live_and_the_service_follows(live):
    from dataplane import cluster
    r = podnet("pod", "add", "w2", "--node", "n2", "--label", "app=web", "-l", "tier=front")
    rec = now().pods["w2"]
    assert f"pod w2: {rec.ip} on node n2" in r.stdout
    assert (rec.node, rec.origin, rec.phase, dict(rec.labels)) == ("n2", "cli", "ready", {"app": "web", "tier": "front"})
    assert leases()["w2"] == rec.ip
    rows = {p["name"]: p for p in json.loads(podnet("pods", "-o", "json").stdout)}
    assert rows["w2"]["ip"] == rec.ip and rows["w2"]["namespace"] == "pnlive-pod-w2"
    assert "w2" in podnet("pods").stdout
    # its eth0 is what the record says, and it is on its node's agent, guarded
    out = in_pod(now(), "w2", "ip", "-o", "addr", "show", "eth0").stdout
    assert f"{rec.ip}/24" in out
    # no qdisc on the TAP (the default mq would give each of its 256 TX queues a pfifo_fast)
    assert in_pod(now(), "w2", "tc", "qdisc", "show", "dev", "eth0").stdout.split()[:2] == ["qdisc", "noqueue"]
    # its own network namespace, not ours nor its node's
    ino = os.stat("/run/netns/pnlive-pod-w2").st_ino
    assert ino not in (os.stat("/proc/self/ns/net").st_ino, os.stat("/run/netns/pnlive-node-n2").st_ino)
    port = next(p for p in agent(now(), "n2", "status")["ports"] if p["pod"] == "w2")
    assert port["guarded"] and port["ip"] == rec.ip and port["port"] == rec.port
    assert ping("a", rec.ip) == (3, 3)                                   # across nodes, VXLAN
    assert ping("w2", now().nodes["n2"].gateway_ip) == (3, 3)
    # the Service with a matching selector has it as a backend, in every agent
    assert backends("web") == sorted([now().pods["w1"].ip, rec.ip])
    for node in ("n1", "n2"):
        vip = now().services_plan["web"]
        svc = next(s for s in agent(now(), node, "services") if s["vip"] == vip)
        assert sorted(ip for ip, _ in svc["backends"]) == backends("web")
    servers = [spawn_in_pod(now(), p, WHOAMI, p) for p in ("w1", "w2")]
    try:
        for p in ("w1", "w2"):
            wait_listening(now(), p, 8080)
        seen = in_pod(now(), "b", "python3", "-c", ASK, now().services_plan["web"], "40", timeout=60).stdout
        seen = eval(seen)
        assert set(seen) == {"w1", "w2"} and sum(seen.values()) == 40, seen
    finally:
        for s in servers:
            s.kill()
            s.wait()
    podnet("pod", "delete", "w2")
    assert backends("web") == [now().pods["w1"].ip]


def test_adding_and_deleting_pods_disturbs_no_other_pod(live):
    """A ping stream a -> b across nodes and an established ClusterIP
    connection b -> w1 while ten pods come and go on both nodes: no echo
    lost, the connection's conntrack entry untouched and still usable."""
    st = now()
    keep = spawn_in_pod(st, "w1", WHOAMI, "w1")
    try:
        wait_listening(st, "w1", 8080)
        holder = spawn_in_pod(st, "b", """
import socket, sys, time
c = socket.create_connection((sys.argv[1], 80), timeout=5)
print(c.recv(64).decode(), flush=True)
time.sleep(30)
""", st.services_plan["web"])
        assert holder.stdout.readline().strip() in ("w1", "w2")
        vip = st.services_plan["web"]
        conns = [c for c in agent(st, "n2", "conntrack") if c["service"].startswith(vip)]
        assert conns
        pinger = subprocess.Popen(["ip", "netns", "exec", st.pods["a"].netns, "ping", "-c", "400", "-i", "0.01",
                                   "-W", "2", st.pods["b"].ip], stdout=subprocess.PIPE, text=True)
        try:
            for i in range(5):
                for node in ("n1", "n2"):
                    podnet("pod", "add", f"churn{node[-1]}{i}", "--node", node, "-l", "app=churn")
            for i in range(5):
                for node in ("n1", "n2"):
                    podnet("pod", "delete", f"churn{node[-1]}{i}")
            out, _ = pinger.communicate(timeout=60)
        finally:
            if pinger.poll() is None:
                pinger.kill()
                pinger.wait()
        m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
        assert m and m.group(1) == m.group(2) == "400", out
        after = [c for c in agent(st, "n2", "conntrack") if c["service"].startswith(vip)]
        assert {(c["client"], c["backend"]) for c in conns} <= {(c["client"], c["backend"]) for c in after}
        holder.kill()
        holder.wait()
    finally:
        keep.kill()
        keep.wait()
    assert not [n for n in now().pods if n.startswith("churn")]
    assert not [n for n in leases() if n.startswith("churn")]


def test_pod_delete_removes_everything_of_the_pod(live):
    st = now()
    podnet("pod", "add", "gone", "--node", "n1", "-l", "app=web")
    st = now()
    rec = st.pods["gone"]
    assert ping("gone", st.pods["a"].ip) == (3, 3)                    # the FDB learns its MAC, the gateway its ARP
    srv = spawn_in_pod(st, "gone", WHOAMI, "gone")
    other = spawn_in_pod(st, "w1", WHOAMI, "w1")
    wait_listening(st, "gone", 8080)
    wait_listening(st, "w1", 8080)
    # a ClusterIP connection to it, from a pod on the other node, leaves a conntrack entry
    in_pod(st, "b", "python3", "-c", ASK, st.services_plan["web"], "20", timeout=60)
    assert rec.ip in backends("web")
    assert any(c["backend"].startswith(rec.ip + ":") for c in agent(st, "n2", "conntrack"))
    assert any(e["mac"] == rec.mac for e in agent(st, "n1", "fdb"))
    r = podnet("pod", "delete", "gone")
    assert f"pod gone deleted: {rec.ip} freed on node n1" in r.stdout
    assert srv.wait(timeout=10) is not None                          # its processes ended
    other.kill()
    other.wait()
    assert "gone" not in now().pods and "gone" not in leases()
    assert not os.path.exists("/run/netns/pnlive-pod-gone")
    assert rec.ip not in backends("web")
    for node in ("n1", "n2"):
        vip = now().services_plan["web"]
        svc = next(s for s in agent(now(), node, "services") if s["vip"] == vip)
        assert rec.ip not in [ip for ip, _ in svc["backends"]]
    assert not any(e["mac"] == rec.mac for e in agent(now(), "n1", "fdb"))
    assert not any(n["ip"] == rec.ip for n in agent(now(), "n1", "neighbors"))
    assert not any(p["pod"] == "gone" for p in agent(now(), "n1", "status")["ports"])
    assert not any(rec.ip in (c["client"].split(":")[0], c["backend"].split(":")[0])
                   for c in agent(now(), "n1", "conntrack"))
    # on the other node the entries of connections to it are reset or gone: TCP ones marked
    # so their next segment is answered with a RST, as for any backend that leaves


def test_restarting_a_pod_gives_it_a_new_ip_and_the_service_follows(live):
    podnet("pod", "add", "r1", "--node", "n2", "-l", "app=dns")
    first = now().pods["r1"].ip
    assert backends("dns") == [first]
    podnet("pod", "delete", "r1")
    assert backends("dns") == []
    podnet("pod", "add", "r1", "--node", "n2", "-l", "app=dns")
    second = now().pods["r1"].ip
    assert second != first                                           # host-local: no reuse before the range wraps
    assert backends("dns") == [second]
    podnet("pod", "delete", "r1")


def test_pods_from_manifests(live, tmp_path):
    f = tmp_path / "pods.yaml"
    f.write_text("""
apiVersion: v1
kind: Pod
metadata: {name: m1, labels: {app: web}}
spec: {nodeName: n2}
---
apiVersion: v1
kind: Pod
metadata: {name: m2}
""")
    r = podnet("apply", "-f", str(f))
    assert "pod/m1 created" in r.stdout and "pod/m2 created" in r.stdout
    st = now()
    assert (st.pods["m1"].node, st.pods["m1"].origin, st.pods["m2"].node) == ("n2", "manifest", "n1")
    assert st.pods["m1"].ip in backends("web")
    assert ping("m2", st.pods["m1"].ip) == (3, 3)
    assert "pod/m1 unchanged" in podnet("apply", "-f", str(f)).stdout
    f.write_text(f.read_text().replace("{app: web}", "{app: other}"))
    assert "pod/m1 configured" in podnet("apply", "-f", str(f)).stdout
    assert st.pods["m1"].ip not in backends("web")                   # relabelled: no longer selected
    r = podnet("delete", "-f", str(f))
    assert "pod/m1 deleted" in r.stdout and "pod/m2 deleted" in r.stdout
    assert "m1" not in now().pods and "m2" not in now().pods


@pytest.mark.parametrize("args, message", [
    (["pod", "add", "a"], "pod 'a' exists"),
    (["pod", "add", "x1", "--node", "nope"], "no node 'nope'"),
    (["pod", "add", "Bad_Name"], "must be a DNS-1123 label"),
    (["pod", "add", "averyveryverylongpodname"], "at most 20 characters"),
    (["pod", "add", "x2", "--label", "novalue"], "expected a label as key=value"),
    (["pod", "delete", "nope"], "no pod 'nope'"),
])
def test_bad_pod_requests_get_one_error_and_change_nothing(live, args, message):
    before = (sorted(now().pods), leases(), sorted(n for n in os.listdir("/run/netns") if n.startswith("pnlive")))
    r = podnet(*args, check=False)
    assert r.returncode != 0 and message in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if not ln.startswith("usage:")]   # argparse's usage
    assert "Traceback" not in r.stderr and len(lines) == 1, r.stderr
    assert (sorted(now().pods), leases(), sorted(n for n in os.listdir("/run/netns") if n.startswith("pnlive"))) \
        == before


def test_agent_down_refuses_add_and_delete_still_works_then_restart_resumes(live):
    from dataplane import cluster
    podnet("pod", "add", "k1", "--node", "n1", "-l", "app=web")
    podnet("pod", "add", "k3", "--node", "n1")
    kept, departed = now().pods["k1"].ip, now().pods["k3"].ip
    # k3, a client on n1, leaves a ClusterIP connection in n1's conntrack (and snapshot)
    srv = spawn_in_pod(now(), "w1", WHOAMI, "w1")
    try:
        wait_listening(now(), "w1", 8080)
        assert ping("k3", now().pods["w1"].ip) == (3, 3)
        in_pod(now(), "k3", "python3", "-c", ASK, now().services_plan["web"], "1", timeout=30, check=False)
    finally:
        srv.kill()
        srv.wait()
    assert any(c["client"].startswith(departed + ":") for c in agent(now(), "n1", "conntrack"))
    ip = int.from_bytes(bytes(map(int, departed.split("."))), "big")
    wait_until(lambda: ip in snapshot_clients(now().nodes["n1"].snapshot), 15, "k3's connection in n1's snapshot")
    kill_agent(now(), "n1")
    podnet("pod", "delete", "k3")                                    # while its agent is dead
    before = (sorted(now().pods), leases())
    r = podnet("pod", "add", "k2", "--node", "n1", check=False)
    assert r.returncode == 1 and "the agent of node n1 is not running" in r.stderr
    assert (sorted(now().pods), leases()) == before and not os.path.exists("/run/netns/pnlive-pod-k2")
    podnet("node", "add", "ext", "--pod-cidr", "10.99.0.0/24", "--vtep", "172.30.250.99")   # n2 only
    podnet("node", "remove", "ext")                                  # works with n1's agent dead
    r = podnet("up", "-f", str(cluster.state_path().parent.parent / "spec.yaml"))
    assert "agent was dead, restarted" in r.stdout
    st = now()
    assert st.pods["k1"].ip == kept
    assert any(p["pod"] == "k1" for p in agent(st, "n1", "status")["ports"])   # re-attached from its config
    assert ping("k1", st.pods["b"].ip) == (3, 3)
    # the restarted agent restored its snapshot, then forgot the pod deleted while it was down
    assert not any(departed in (c["client"].split(":")[0], c["backend"].split(":")[0])
                   for c in agent(st, "n1", "conntrack"))
    assert not any(n["ip"] == departed for n in agent(st, "n1", "neighbors"))
    assert "forgot pods deleted while it was down" in open(st.nodes["n1"].log).read()
    assert not any(r["name"] == "ext" for r in agent(st, "n1", "routes"))
    podnet("pod", "delete", "k1")
