"""Crash and restart, for real: an agent killed with SIGKILL leaves its pods'
eth0 in place; `podnet up` restarts just that agent, which re-attaches to the
TAPs and restores its snapshot, so ping works again and a TCP connection
through a ClusterIP (backend on the other node, DNAT state on the client's)
carries on where it was, and ClientIP-affine clients keep their backend.
`podnet up` with every agent alive still refuses.
`podnet down` after a crash, or racing a restart, leaves nothing behind."""
import json
import os
import re
import select
import signal
import struct
import subprocess
import sys
import textwrap
import time


from dataplane import cluster
from dataplane.snapshot import CT_RECORD, read
from netns_helpers import agent, in_pod, kill_agent, podnet, running_cluster, spawn_in_pod

SPEC = """
cluster: {name: pnrs, podCIDR: 10.237.0.0/16, serviceCIDR: 10.92.0.0/16, fabricCIDR: 172.30.244.0/24}
nodes: [{name: n1}, {name: n2}]
pods:
  - {name: c1, node: n1}
  - {name: p1, node: n1}
  - {name: w2, node: n2, labels: {app: echo}}
services:
  - {name: echo, selector: {app: echo}, ports: [{port: 80, targetPort: 8080}]}
"""

ECHO_SERVER = """
import socket, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080)); s.listen(16)
def serve(c):
    while True:
        d = c.recv(65536)
        if not d:
            break
        c.sendall(d)
    c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

# One connection for the whole test; each "go N SEED" line on stdin sends N
# bytes and waits for their echo, then prints what went and came back.
LONG_CLIENT = """
import hashlib, json, random, socket, sys, threading
s = socket.create_connection((sys.argv[1], 80), timeout=60)
print(json.dumps({"sport": s.getsockname()[1]}), flush=True)
for line in sys.stdin:
    if line.strip() == "quit":
        break
    _, n, seed = line.split()
    data = random.Random(int(seed)).randbytes(int(n))
    got = bytearray()
    def rx():
        while len(got) < len(data):
            d = s.recv(65536)
            if not d:
                break
            got.extend(d)
    t = threading.Thread(target=rx)
    t.start()
    try:
        s.sendall(data)
    except OSError as e:
        print(json.dumps({"error": str(e)}), flush=True)
        break
    t.join(90)
    print(json.dumps({"n": len(got), "sent": hashlib.sha256(data).hexdigest(),
                      "got": hashlib.sha256(bytes(got)).hexdigest()}), flush=True)
"""


def read_json(proc, timeout=90):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        r, _, _ = select.select([proc.stdout], [], [], max(0.0, end - time.monotonic()))
        if r:
            line = proc.stdout.readline()
            if not line:
                raise AssertionError(f"client exited: {proc.stderr.read() if proc.poll() is not None else ''}")
            return json.loads(line)
    raise AssertionError(f"no answer from the client within {timeout} s")


def snapshot_conns(path):
    """(client port, state) of each connection in a node's snapshot file."""
    try:
        data = read(path)[1]["conntrack"]
    except (OSError, ValueError):
        return []
    fmt = "=IIIIHHHBBBxQQ"
    assert struct.calcsize(fmt) == CT_RECORD
    return [(r[4], r[8]) for r in struct.iter_unpack(fmt, data)]


def wait_for(cond, timeout=15, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def ping(st, pod, dst, count=3):
    r = in_pod(st, pod, "ping", "-c", str(count), "-i", "0.2", "-W", "2", dst, check=False)
    return re.search(rf"{count} packets transmitted, {count} received", r.stdout) is not None


def leftovers(tmp_path):
    ns = [n for n in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
          if n.startswith("pnrs-")]
    procs = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if str(tmp_path).encode() in open(f"/proc/{pid}/cmdline", "rb").read():
                procs.append(pid)
        except OSError:
            pass
    links = [ln for ln in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout.splitlines()
             if "0a:58:0a:ed:" in ln]                 # pod MACs of 10.237.0.0/16
    files = sorted(p.name for p in (tmp_path / "run").iterdir()) if (tmp_path / "run").exists() else []
    return {"namespaces": ns, "processes": procs, "links": links, "run_dir": files}


def test_sigkilled_agent_restarts_pods_keep_eth0_and_tcp_through_clusterip_survives(tmp_path):
    with running_cluster(tmp_path, SPEC) as st:
        vip = st.services_plan["echo"]
        server = spawn_in_pod(st, "w2", ECHO_SERVER)
        wait_for(lambda: ":8080" in in_pod(st, "w2", "ss", "-ltn").stdout, what="the echo server")
        client = subprocess.Popen(["ip", "netns", "exec", "pnrs-pod-c1", sys.executable, "-c",
                                   textwrap.dedent(LONG_CLIENT), vip], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            sport = read_json(client)["sport"]
            client.stdin.write("go 65536 1\n")
            client.stdin.flush()
            r = read_json(client)
            assert r["n"] == 65536 and r["got"] == r["sent"]
            # the connection is in n1's snapshot (written within a second)
            snap = tmp_path / "run" / "n1.snapshot"
            wait_for(lambda: (sport, 1) in snapshot_conns(snap), what="the connection in the snapshot")
            [conn] = [c for c in agent(st, "n1", "conntrack") if c["client"].endswith(f":{sport}")]
            assert conn["backend"] == f"{st.pods['w2'].ip}:8080"
            old = agent(st, "n1", "status")

            killed = time.monotonic()
            kill_agent(st, "n1")
            # the pod keeps its eth0 (no carrier) with its address while no agent runs
            link = in_pod(st, "c1", "ip", "-o", "link", "show", "eth0").stdout
            assert "NO-CARRIER" in link and st.pods["c1"].mac in link
            assert f"{st.pods['c1'].ip}/24" in in_pod(st, "c1", "ip", "-o", "addr", "show", "eth0").stdout
            assert "default via" in in_pod(st, "c1", "ip", "route").stdout
            client.stdin.write("go 262144 2\n")            # sent into the outage: TCP retransmits
            client.stdin.flush()
            assert json.loads(podnet("status", "-o", "json").stdout)["nodes"][0]["agent"] == "dead"

            t0 = time.monotonic()
            out = podnet("up").stdout
            up_s = time.monotonic() - t0
            assert re.search(r"node n1: agent was dead, restarted: pid \d+ ready in", out), out
            assert "3 TAPs re-attached" in out and "node n2: agent pid" in out and "left alone" in out
            r = read_json(client)
            assert r["n"] == 262144 and r["got"] == r["sent"]
            resumed = time.monotonic() - killed

            st = cluster.load_state()
            new = agent(st, "n1", "status")
            assert new["pid"] != old["pid"] and new["reattached"] == 3
            assert new["restored"]["conntrack"] >= 1 and new["restored"]["services"] == 1
            [conn2] = [c for c in agent(st, "n1", "conntrack") if c["client"].endswith(f":{sport}")]
            assert (conn2["backend"], conn2["state"]) == (conn["backend"], "established")
            assert ping(st, "c1", st.pods["w2"].ip) and ping(st, "c1", st.pods["p1"].ip)
            assert ping(st, "c1", st.nodes["n1"].gateway_ip)

            client.stdin.write("go 131072 3\n")            # and after
            client.stdin.flush()
            r = read_json(client)
            assert r["n"] == 131072 and r["got"] == r["sent"]
            # every agent alive: `up` refuses as before
            again = podnet("up", check=False)
            assert again.returncode == 1 and "already up" in again.stderr
            print(f"\nrestart: `podnet up` {up_s:.2f} s; kill -> TCP data through again {resumed:.2f} s")
        finally:
            client.kill()
            client.wait()
            server.kill()
            server.wait()
    assert leftovers(tmp_path) == {"namespaces": [], "processes": [], "links": [], "run_dir": []}


def test_down_after_sigkill_and_during_a_restart_leaves_nothing(tmp_path):
    with running_cluster(tmp_path, SPEC) as st:
        for node in ("n1", "n2"):
            kill_agent(st, node)
        assert "eth0" in in_pod(st, "w2", "ip", "-o", "link").stdout
        # a restart and a down at once: the down waits for the restart, then removes it all
        up = subprocess.Popen([sys.executable, "-m", "dataplane", "up", "-f", str(tmp_path / "spec.yaml")],
                              env=os.environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        old = st.nodes["n1"].pid
        wait_for(lambda: cluster.load_state().nodes["n1"].pid != old,
                 what="the restart to start an agent")
        r = podnet("down")
        assert "cluster pnrs down" in r.stdout
        up.communicate(timeout=60)
        assert up.returncode == 0
    assert leftovers(tmp_path) == {"namespaces": [], "processes": [], "links": [], "run_dir": []}


RESYNC_SPEC = """
cluster: {name: pnnxrs, podCIDR: 10.236.0.0/16, serviceCIDR: 10.89.0.0/16, fabricCIDR: 172.30.236.0/24}
nodes: [{name: n1}, {name: n2}]
pods:
  - {name: c1, node: n1}
  - {name: w2, node: n2, labels: {app: echo}}
services:
  - {name: echo, selector: {app: echo}, ports: [{port: 80, targetPort: 8080}]}
  - {name: old, selector: {app: echo}, ports: [{port: 81, targetPort: 8080}]}
"""
HELLO_SERVER = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080)); s.listen(16)
while True:
    c, _ = s.accept(); c.sendall(b"hello"); c.close()
"""
CONNECT = """
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3); print(s.recv(10).decode())
except OSError as e:
    print(type(e).__name__)
"""
K_CIDR, K_VTEP, K_MAC = "10.236.9.0/24", "172.30.236.100", "0a:5a:ac:1e:ec:64"


def test_restart_brings_back_node_add_routes_and_state_json_services_win_over_the_snapshot(tmp_path):
    """An external node added with `podnet node add` is in the snapshot (written
    at once after a route change) and comes back with the agent. A service
    added and one deleted after the snapshot last encoded the service map
    (at most every 30 s) are put right by `podnet up` from state.json."""
    from dataplane import cluster
    from netns_helpers import py_in_pod, wait_listening
    with running_cluster(tmp_path, RESYNC_SPEC) as st:
        vip = st.services_plan
        server = spawn_in_pod(st, "w2", HELLO_SERVER)
        try:
            wait_listening(st, "w2", 8080)
            cluster.node_add("k1", K_CIDR, K_VTEP, K_MAC)          # = podnet node add (in process: faster)
            snap = tmp_path / "run" / "n1.snapshot"

            def snapshot():
                try:
                    head = read(snap)[0]
                except (OSError, ValueError):
                    return {}, set()
                return {r["name"]: r for r in head["routes"]}, {(s["vip"], s["port"]) for s in head["services"]}
            wait_for(lambda: "k1" in snapshot()[0] and snapshot()[1] == {(vip["echo"], 80), (vip["old"], 81)},
                     what="the route to k1 and the spec's services in n1's snapshot")
            late = tmp_path / "late.json"
            late.write_text(json.dumps({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "late"},
                                        "spec": {"clusterIP": "10.89.0.99", "selector": {"app": "echo"},
                                                 "ports": [{"port": 82, "targetPort": 8080}]}}))
            old = tmp_path / "old.json"
            old.write_text(json.dumps({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "old"},
                                       "spec": {"ports": [{"port": 81, "targetPort": 8080}]}}))
            cluster.apply_file(str(late))                            # = podnet apply -f / delete -f
            cluster.apply_file(str(old), delete=True)
            live = {(s["vip"], s["port"]) for s in agent(st, "n1", "services")}
            assert live == {(vip["echo"], 80), ("10.89.0.99", 82)}
            assert snapshot()[1] == {(vip["echo"], 80), (vip["old"], 81)}     # the snapshot is behind

            kill_agent(st, "n1")
            out = podnet("up").stdout
            [line] = [ln for ln in out.splitlines() if ln.startswith("node n1:")]
            assert "agent was dead, restarted" in line and "2 routes" in line and "2 services" in line, line
            assert line.endswith("; 1 service ports updated, 1 removed"), line             # from state.json
            st = cluster.load_state()
            assert {(s["vip"], s["port"]) for s in agent(st, "n1", "services")} == live
            routes = {r["name"]: r for r in agent(st, "n1", "routes")}
            assert (routes["k1"]["cidr"], routes["k1"]["vtep"], routes["k1"]["inner_mac"]) == (K_CIDR, K_VTEP, K_MAC)
            # the route is used: a ping to k1's pods is routed to its VTEP (which nobody
            # answers on this fabric: unresolved), not dropped for want of a route
            before = agent(st, "n1", "counters")["drops"]
            in_pod(st, "c1", "ping", "-c", "1", "-W", "0.2", "10.236.9.2", check=False)
            after = agent(st, "n1", "counters")["drops"]
            assert (after["no_route"] - before["no_route"], after["vtep_unresolved"] - before["vtep_unresolved"]) \
                == (0, 1)
            # the services: the late one answers, the deleted one rejects
            assert py_in_pod(st, "c1", CONNECT, "10.89.0.99", 82).stdout.strip() == "hello"
            assert py_in_pod(st, "c1", CONNECT, vip["old"], 81).stdout.strip() == "ConnectionRefusedError"
        finally:
            server.kill()
            server.wait()


AFF_SPEC = """
cluster: {name: pnaff, podCIDR: 10.231.0.0/16, serviceCIDR: 10.87.0.0/16, fabricCIDR: 172.30.231.0/24}
nodes: [{name: n1}]
pods:
  - {name: c1, node: n1}
  - {name: c2, node: n1}
  - {name: c3, node: n1}
  - {name: w1, node: n1, labels: {app: who}}
  - {name: w2, node: n1, labels: {app: who}}
  - {name: w3, node: n1, labels: {app: who}}
services:
  - {name: who, selector: {app: who}, sessionAffinity: ClientIP, ports: [{port: 80, targetPort: 8080}]}
"""
WHO_SERVER = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080)); s.listen(16)
while True:
    c, _ = s.accept(); c.sendall(c.getsockname()[0].encode()); c.close()
"""


def test_clientip_affinity_survives_sigkill_and_restart(tmp_path):
    """Three clients of a ClientIP service with three backends, each pinned
    to one: after the agent is SIGKILLed and `podnet up` restarts it, each
    new connection still lands on the client's backend (the agent restored
    the affinity entries from its snapshot; a fresh random choice would
    keep all three with probability 1/27)."""
    from netns_helpers import py_in_pod, wait_listening
    clients, backends = ("c1", "c2", "c3"), ("w1", "w2", "w3")
    with running_cluster(tmp_path, AFF_SPEC) as st:
        vip = st.services_plan["who"]
        servers = [spawn_in_pod(st, w, WHO_SERVER) for w in backends]
        try:
            for w in backends:
                wait_listening(st, w, 8080)

            def who(c):
                return py_in_pod(st, c, CONNECT, vip, 80).stdout.strip()
            pinned = {c: who(c) for c in clients}
            assert set(pinned.values()) <= {st.pods[w].ip for w in backends}, pinned
            assert {c: who(c) for c in clients} == pinned                 # pinned already
            snap = tmp_path / "run" / "n1.snapshot"

            def saved_affinity():
                try:
                    return read(snap)[0]["affinity"]["count"]
                except (OSError, ValueError, KeyError):
                    return 0
            wait_for(lambda: saved_affinity() == 3, what="three affinity entries in n1's snapshot")

            kill_agent(st, "n1")
            out = podnet("up").stdout
            assert re.search(r"node n1: agent was dead, restarted", out), out
            st = cluster.load_state()
            assert agent(st, "n1", "status")["restored"]["affinity"] == 3
            assert {c: who(c) for c in clients} == pinned
        finally:
            for s in servers:
                s.kill()
                s.wait()
