"""Forwarding on worker threads, for real (issue 13): one 2-node cluster per
worker count (cluster.workers: 1 and 2). Status reports the count, each pod's
eth0 has one queue per worker, ping, TCP, UDP and a ClusterIP work on one
node and across nodes, with two workers both of them forward, no ping is
lost while services are applied and deleted and three control clients never
read their replies, and a SIGKILLed agent comes back with the same count."""
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time

import pytest

from dataplane import cluster

from scapy.layers.inet import IP, UDP
from scapy.utils import rdpcap

from netns_helpers import (agent, cluster_env, in_pod, kill_agent, pod_ip, podnet, py_in_pod, running_cluster,
                           spawn_in_pod, wait_listening, wait_until)
from test_netns_node import TCP_CLIENT, TCP_SERVER, UDP_CLIENT, UDP_SERVER
from test_netns_tools import pcap_has, start_capture, stop_capture

# Cluster names and address ranges of no other test (grep `name:` in tests/).
SPECS = {
    1: ("pnwk1", "10.226", "10.84", "172.30.226"),
    2: ("pnwk2", "10.225", "10.83", "172.30.225"),
}
SPEC = """
cluster: {{name: {name}, podCIDR: {pod}.0.0/16, serviceCIDR: {svc}.0.0/16, fabricCIDR: {fab}.0/24, workers: {n}}}
nodes: [{{name: n1}}, {{name: n2}}]
pods:
  - {{name: a, node: n1}}
  - {{name: b, node: n1, labels: {{app: echo}}}}
  - {{name: c, node: n2, labels: {{app: echo}}}}
services:
  - {{name: echo, selector: {{app: echo}}, ports: [{{port: 80, targetPort: 8080}}]}}
"""

# Answers each connection with "its own address, the peer's address".
WHO_SERVER = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080)); s.listen(64)
while True:
    c, a = s.accept(); c.sendall(f"{c.getsockname()[0]} {a[0]}".encode()); c.close()
"""

CONNECT = """
import json, socket, sys
out = []
for _ in range(int(sys.argv[3])):
    try:
        s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
        out.append([s.getpeername()[0]] + s.recv(100).decode().split()); s.close()
    except OSError as e:
        out.append(["error", type(e).__name__])
print(json.dumps(out))
"""

# Many UDP flows (one source port each), each echoed: the kernel spreads
# flows over a multi-queue TAP's queues by their hash, so with two workers
# both get some. Prints the flows answered.
UDP_ECHO = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 9000))
while True:
    d, a = s.recvfrom(2048); s.sendto(d, a)
"""
UDP_FLOWS = """
import socket, sys
answered = 0
for i in range(int(sys.argv[2])):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
    ok = 0
    for k in range(4):
        s.sendto(b"flow %d %d" % (i, k), (sys.argv[1], 9000))
        try:
            ok += s.recv(100) == b"flow %d %d" % (i, k)
        except socket.timeout:
            pass
    answered += ok == 4
    s.close()
print(answered)
"""


@pytest.fixture(scope="module", params=[1, 2], ids=["workers1", "workers2"])
def wk(request, tmp_path_factory):
    n = request.param
    name, pod, svc, fab = SPECS[n]
    tmp = tmp_path_factory.mktemp(name)
    with running_cluster(tmp, SPEC.format(name=name, pod=pod, svc=svc, fab=fab, n=n)) as st:
        servers = [spawn_in_pod(st, p, WHO_SERVER) for p in ("b", "c")]
        servers += [spawn_in_pod(st, p, UDP_ECHO) for p in ("b", "c")]
        try:
            for p in ("b", "c"):
                wait_listening(st, p, 8080)
                wait_listening(st, p, 9000, "udp")
            # the restart test replaces the state (new pids): tests read it from here
            yield {"n": n, "st": st, "tmp": tmp}
        finally:
            for s in servers:
                s.kill()
                s.wait()


def ping(st, pod, dst, count=5):
    r = in_pod(st, pod, "ping", "-c", str(count), "-i", "0.2", "-W", "2", dst, check=False)
    m = re.search(r"(\d+) packets transmitted, (\d+) received", r.stdout)
    assert m, r.stdout + r.stderr
    return int(m.group(1)), int(m.group(2))


def queues(st, pod):
    """The queues of the pod's eth0 as its own namespace's sysfs lists them."""
    q = in_pod(st, pod, "ls", "/sys/class/net/eth0/queues").stdout.split()
    return sum(x.startswith("tx-") for x in q), sum(x.startswith("rx-") for x in q)


def tcp_transfer(st, src, dst, port, size):
    """size random bytes from src to dst's TCP server: the sha256 the client
    sent, the one the server computed and echoed, and the byte count the
    server received."""
    srv = spawn_in_pod(st, dst, TCP_SERVER, port)
    try:
        wait_listening(st, dst, port)
        sent, echoed = py_in_pod(st, src, TCP_CLIENT, pod_ip(st, dst), port, size, timeout=40).stdout.split()
        out, _ = srv.communicate(timeout=20)
    finally:
        srv.kill()
        srv.wait()
    n, got = out.split()
    return sent, echoed, got, int(n)


def worker_frames(st, node):
    io = agent(st, node, "counters")["io"]
    return io["frames"], [w["frames"] for w in io["workers"]]


def assert_every_worker_forwards(wk, flows=32):
    """UDP flows from a to b (same node) and to c (other node), every one
    answered; each worker of each node moved frames of them, and the
    per-worker counts add up to the node's total."""
    st, n = wk["st"], wk["n"]
    before = {node: worker_frames(st, node) for node in ("n1", "n2")}
    for dst in ("b", "c"):
        r = py_in_pod(st, "a", UDP_FLOWS, pod_ip(st, dst), flows, timeout=60)
        assert int(r.stdout) == flows, f"to {dst}: {r.stdout} of {flows} flows answered"
    for node in ("n1", "n2"):
        (t0, w0), (t1, w1) = before[node], worker_frames(st, node)
        assert len(w1) == n, (node, w1)
        delta = [b - a for a, b in zip(w0, w1)]
        assert sum(delta) == t1 - t0, (node, delta, t1 - t0)
        # each of the 4 exchanges of a flow is 2 frames read: n1 reads those of
        # both destinations (pod a, then pod b or the uplink), n2 those of c
        # (uplink, pod c); more only from background ARP
        assert sum(delta) >= (16 if node == "n1" else 8) * flows, (node, delta)
        print(f"\nworkers {n}, node {node}: frames per worker {delta}")
        assert all(d > 0 for d in delta), f"node {node}: frames per worker {delta}: a worker did not forward"


def test_status_reports_workers_and_eth0_has_a_queue_per_worker(wk):
    st, n = wk["st"], wk["n"]
    s = json.loads(podnet("status", "-o", "json").stdout)
    assert {x["name"]: (x["agent"], x["workers"]) for x in s["nodes"]} == {"n1": ("running", n), "n2": ("running", n)}
    for node in ("n1", "n2"):
        assert agent(st, node, "status")["workers"] == n
    for pod in ("a", "b", "c"):
        assert queues(st, pod) == (n, n), pod


def test_ping_same_node_cross_node_and_gateways(wk):
    st = wk["st"]
    assert ping(st, "a", pod_ip(st, "b")) == (5, 5)                        # bridged on n1
    assert ping(st, "a", pod_ip(st, "c")) == (5, 5)                        # over the overlay
    assert ping(st, "c", pod_ip(st, "a")) == (5, 5)
    assert ping(st, "a", st.nodes["n1"].gateway_ip) == (5, 5)  # the gateway's own answers
    assert ping(st, "a", st.nodes["n2"].gateway_ip) == (5, 5)


@pytest.mark.parametrize("dst,port", [("b", 7101), ("c", 7102)], ids=["same-node", "cross-node"])
def test_tcp_bytes_arrive_intact(wk, dst, port):
    sent, echoed, got, size = tcp_transfer(wk["st"], "a", dst, port, 4_000_000)
    assert size == 4_000_000 and sent == got == echoed


@pytest.mark.parametrize("dst,port", [("b", 7103), ("c", 7104)], ids=["same-node", "cross-node"])
def test_udp_datagrams_counted(wk, dst, port):
    st = wk["st"]
    srv = spawn_in_pod(st, dst, UDP_SERVER, port, 200)
    try:
        wait_listening(st, dst, port, "udp")
        acks = int(py_in_pod(st, "a", UDP_CLIENT, pod_ip(st, dst), port, 200, timeout=40).stdout)
        out, _ = srv.communicate(timeout=20)
    finally:
        srv.kill()
        srv.wait()
    assert (int(out), acks) == (200, 200)


def test_clusterip_connects_reach_backends_on_both_nodes(wk):
    st = wk["st"]
    vip = st.services_plan["echo"]
    calls = json.loads(py_in_pod(st, "a", CONNECT, vip, 80, 30, timeout=60).stdout)
    assert all(c[0] == vip and len(c) == 3 for c in calls), calls        # answered, by the ClusterIP
    assert {c[1] for c in calls} == {pod_ip(st, "b"), pod_ip(st, "c")}     # 30 random picks: both backends
    assert all(c[2] == pod_ip(st, "a") for c in calls)                     # backends see the real client


def test_every_worker_forwards(wk):
    assert_every_worker_forwards(wk)


def test_capture_holds_each_frame_of_every_worker_once(wk, tmp_path):
    """Frames of 32 flows cross pod a's port on whichever worker their
    queue belongs to; the one capture buffer the workers share holds every
    request and every echo exactly once."""
    st = wk["st"]
    path = tmp_path / "a.pcap"
    cap = start_capture(st, "n1", "a", "-w", str(path), "-c", "100000", "--timeout", "60")
    try:
        r = py_in_pod(st, "a", UDP_FLOWS, pod_ip(st, "b"), 32, timeout=60)
        assert int(r.stdout) == 32

        def flows(fs):
            return [(f[IP].src, bytes(f[UDP].payload)) for f in fs if f.haslayer(UDP) and 9000 in
                    (f[UDP].sport, f[UDP].dport)]
        pcap_has(path, lambda fs: len(flows(fs)) >= 256, "the 128 requests and 128 echoes in the pcap")
    finally:
        stop_capture(cap)
    got = sorted(flows(rdpcap(str(path))))
    want = sorted((ip, b"flow %d %d" % (i, k)) for ip in (pod_ip(st, "a"), pod_ip(st, "b"))
                  for i in range(32) for k in range(4))
    assert got == want


def test_trace_of_a_clusterip_flow_to_the_other_node(wk):
    """Traced in a forked copy of an agent whose workers keep forwarding."""
    st = wk["st"]
    vip = st.services_plan["echo"]
    # A trace shows the backend the next new flow gets, and leaves the random
    # state as it was: a real connection moves it on (1/2 each time for c).
    for _ in range(20):
        hops = json.loads(podnet("trace", "a", f"{vip}:80", "-o", "json").stdout)
        if [h["node"] for h in hops] == ["n1", "n2"]:
            break
        py_in_pod(st, "a", CONNECT, vip, 80, 1)
    assert [h["node"] for h in hops] == ["n1", "n2"], hops
    assert [e[0] for e in hops[0]["events"]] == ["rx", "parse", "learn", "service", "pick", "conntrack", "dnat",
                                                 "gateway", "encap", "tx"]
    assert "sent to pod c" in "\n".join(hops[1]["text"]) and hops[1]["verdict"][0] == 0


def service_list(n):
    return {"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"churn-{i}"},
         "spec": {"selector": {"app": "echo"}, "ports": [{"port": 80, "targetPort": 8080}]}}
        for i in range(n)]}


def test_no_ping_lost_while_services_churn_and_control_clients_never_read(wk):
    st, tmp = wk["st"], wk["tmp"]
    manifest = tmp / "churn.json"
    manifest.write_text(json.dumps(service_list(200)))
    sock = st.nodes["n1"].socket
    stop = threading.Event()
    rounds, errors = [], []
    pending = 0

    def churn():
        try:
            end = time.monotonic() + 60
            while not stop.is_set() and len(rounds) < 20 and time.monotonic() < end:
                a = podnet("apply", "-f", str(manifest), check=False)
                d = podnet("delete", "-f", str(manifest), check=False)
                rounds.append((a.returncode, a.stdout.count(" created"), d.returncode, a.stderr + d.stderr))
        except Exception as e:                   # reported by the test, not lost in the thread
            errors.append(repr(e))

    # Three clients that ask for the services and never read a byte: they keep
    # asking (non-blocking) so that their replies pile up unread.
    clients = []
    for _ in range(3):
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.connect(sock)
        c.setblocking(False)
        clients.append(c)

    def ask():
        for c in clients:
            try:
                c.send(b'{"op": "services"}\n')
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                pass                               # full (the agent stopped reading it) or dropped
    ask()
    flood = subprocess.Popen(["ip", "netns", "exec", f"{st.cluster}-pod-a", "ping", "-q", "-c", "500",
                              "-i", "0.01", "-W", "2", pod_ip(st, "b")], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    t = threading.Thread(target=churn)
    t.start()
    try:
        deadline = time.monotonic() + 30
        k = 0
        while flood.poll() is None and time.monotonic() < deadline:
            ask()
            if k % 10 == 0:                     # the replies really pile up unread
                pending = max(pending, agent(st, "n1", "counters")["io"]["control_clients_pending"])
            k += 1
            time.sleep(0.05)                    # pacing of the unread requests, not a readiness wait
        out, err = flood.communicate(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        stop.set()
        if flood.poll() is None:
            flood.kill()
            flood.wait()
        t.join(70)
        for c in clients:
            c.close()
    assert not errors and not t.is_alive(), errors
    assert rounds, "no apply/delete round ran"
    assert pending >= 3, f"at most {pending} control clients had replies pending: the unread clients did not stall"
    assert all(r[0] == 0 and r[1] == 200 and r[2] == 0 for r in rounds), rounds
    assert "500 packets transmitted, 500 received, 0% packet loss" in out, out + err
    # the agent still answers, and the churned services are all gone again
    assert {s["vip"] for s in agent(st, "n1", "services")} == {st.services_plan["echo"]}
    print(f"\nworkers {wk['n']}: {len(rounds)} apply/delete rounds of 200 services during the flood")


def test_restart_after_sigkill_keeps_the_worker_count(wk):
    """Last in the file: it replaces wk["st"] (the node's new pid)."""
    st, n, tmp = wk["st"], wk["n"], wk["tmp"]
    old = kill_agent(st, "n1")
    s = json.loads(podnet("status", "-o", "json").stdout)
    assert {x["name"]: x["agent"] for x in s["nodes"]} == {"n1": "dead", "n2": "running"}
    out = podnet("up").stdout
    assert re.search(r"node n1: agent was dead, restarted: pid \d+", out), out
    st = wk["st"] = cluster.load_state()
    assert st.nodes["n1"].pid != old
    s = json.loads(podnet("status", "-o", "json").stdout)
    assert {x["name"]: (x["agent"], x["workers"]) for x in s["nodes"]} == {"n1": ("running", n), "n2": ("running", n)}
    assert agent(st, "n1", "status")["reattached"] == 3      # a, b and the uplink: all queues opened again
    for pod in ("a", "b"):
        assert queues(st, pod) == (n, n), pod
    assert ping(st, "a", pod_ip(st, "b")) == (5, 5)
    assert ping(st, "a", pod_ip(st, "c")) == (5, 5)
    for dst, port in (("b", 7105), ("c", 7106)):
        sent, echoed, got, size = tcp_transfer(st, "a", dst, port, 2_000_000)
        assert size == 2_000_000 and sent == got == echoed, dst
    assert_every_worker_forwards(wk)


PLAIN = """
cluster: {name: pnwkp, podCIDR: 10.224.0.0/16, serviceCIDR: 10.82.0.0/16, fabricCIDR: 172.30.224.0/24}
nodes: [{name: n1}]
pods: [{name: a, node: n1}, {name: b, node: n1}]
"""


def test_plain_mode_with_two_workers_from_the_cli(tmp_path):
    """`podnet up --plain --workers 2` (the spec says nothing of workers):
    TAPs without vnet headers, two queues each, ping and TCP intact."""
    from dataplane import cluster
    from conftest import require_root
    require_root()
    spec = tmp_path / "plain.yaml"
    spec.write_text(PLAIN)
    with cluster_env(tmp_path):
        try:
            podnet("up", "-f", str(spec), "--plain", "--workers", "2")
            st = cluster.load_state()
            s = json.loads(podnet("status", "-o", "json").stdout)
            assert [(x["workers"], x["vnet_hdr"]) for x in s["nodes"]] == [(2, 0)]
            assert "vnet_hdr off" in in_pod(st, "a", "ip", "-d", "link", "show", "eth0").stdout
            assert queues(st, "a") == queues(st, "b") == (2, 2)
            assert ping(st, "a", pod_ip(st, "b")) == (5, 5)
            sent, echoed, got, size = tcp_transfer(st, "a", "b", 7107, 2_000_000)
            assert size == 2_000_000 and sent == got == echoed
        finally:
            cluster.down(quiet=True)
