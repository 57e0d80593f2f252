"""ClusterIP services for real, modelled on Kubernetes' e2e network tests
(test/e2e/network/service.go, conntrack.go): a pod reaching a ClusterIP
spreads over backends on both nodes and hears back from the ClusterIP;
session affinity pins a backend; endpoints change live; UDP keeps flowing
when its backend is replaced; hairpin; a service without endpoints rejects."""
import json
import subprocess
import sys
import textwrap

import pytest

from netns_helpers import (agent, pod_ip, podnet, py_in_pod, read_json_line, running_cluster, spawn_in_pod,
                           wait_listening, wait_until)

SPEC = """
cluster: {name: pnsvc, podCIDR: 10.243.0.0/16, serviceCIDR: 10.94.0.0/16, fabricCIDR: 172.30.241.0/24}
nodes: [{name: n1}, {name: n2}]
pods:
  - {name: c1, node: n1, labels: {app: client}}
  - {name: w1, node: n1, labels: {app: web}}
  - {name: w2, node: n2, labels: {app: web}}
  - {name: x2, node: n2, labels: {app: spare}}
services:
  - {name: web, selector: {app: web}, ports: [{name: http, port: 80, targetPort: 8080}, {name: dns, port: 53, targetPort: 5353, protocol: UDP}]}
  - {name: sticky, selector: {app: web}, sessionAffinity: ClientIP, ports: [{port: 80, targetPort: 8080}]}
  - {name: empty, selector: {app: nothing}, ports: [{name: t, port: 80, targetPort: 8080}, {name: u, port: 53, targetPort: 5353, protocol: UDP}]}
"""

SERVER = """
import socket, sys, threading
me = sys.argv[1]
def tcp():
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 8080)); s.listen(128)
    while True:
        c, a = s.accept(); c.sendall(f"{me} {a[0]}".encode()); c.close()
threading.Thread(target=tcp, daemon=True).start()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", 5353))
while True:
    d, a = u.recvfrom(2048); u.sendto(me.encode() + b" " + d, a)
"""

TCP_CLIENT = """
import json, socket, sys
out = []
for i in range(int(sys.argv[3])):
    try:
        s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
        peer = s.getpeername()[0]; data = s.recv(100).decode(); s.close()
        out.append([peer] + data.split())
    except OSError as e:
        out.append(["error", type(e).__name__])
print(json.dumps(out))
"""

UDP_CLIENT = """
import json, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.5)
s.bind(("0.0.0.0", int(sys.argv[4]) if len(sys.argv) > 4 else 0))
out = []
end = time.time() + float(sys.argv[3])
i = 0
while time.time() < end:
    s.sendto(b"%d" % i, (sys.argv[1], int(sys.argv[2])))
    try:
        d, a = s.recvfrom(200); out.append([a[0], a[1], d.decode().split()[0]])
    except socket.timeout:
        out.append(["timeout"])
    except ConnectionRefusedError:
        out.append(["refused"])
    i += 1; time.sleep(0.05)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("svc")
    with running_cluster(tmp, SPEC) as st:
        servers = [spawn_in_pod(st, p, SERVER, st.pods[p].ip) for p in ("w1", "w2", "x2")]
        try:
            for p in ("w1", "w2", "x2"):
                wait_listening(st, p, 8080, "tcp")
                wait_listening(st, p, 5353, "udp")
            yield st, tmp
        finally:
            for s in servers:
                s.kill()
                s.wait()


def vip(st, name):
    return st.services_plan[name]



def tcp_calls(st, pod, name, n):
    return json.loads(py_in_pod(st, pod, TCP_CLIENT, vip(st, name), 80, n, timeout=60).stdout)




def slice_manifest(tmp, name, service, addresses, ports=(("http", 8080, "TCP"), ("dns", 5353, "UDP"))):
    doc = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": name, "namespace": "default", "labels": {"kubernetes.io/service-name": service}},
           "addressType": "IPv4",
           "ports": [{"name": n, "port": p, "protocol": pr} for n, p, pr in ports],
           "endpoints": [{"addresses": [a], "conditions": {"ready": True}} for a in addresses]}
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(doc))
    return str(path)


def test_spread_over_backends_on_both_nodes_reply_from_cluster_ip(svc):
    st, _ = svc
    calls = tcp_calls(st, "c1", "web", 40)
    assert all(c[0] == vip(st, "web") for c in calls), calls        # the peer is the ClusterIP
    backends = {c[1] for c in calls}
    assert backends == {pod_ip(st, "w1"), pod_ip(st, "w2")}                  # one on each node
    assert all(c[2] == pod_ip(st, "c1") for c in calls)                  # backends see the real client
    assert "default/web:http" in podnet("services").stdout
    conns = json.loads(podnet("conntrack", "n1", "-o", "json").stdout)
    assert any(c["service"] == f"{vip(st, 'web')}:80" for c in conns)


def test_udp_replies_come_from_the_cluster_ip(svc):
    st, _ = svc
    out = json.loads(py_in_pod(st, "c1", UDP_CLIENT, vip(st, "web"), 53, 1.0).stdout)
    answered = [o for o in out if len(o) == 3]
    assert len(answered) >= len(out) - 1
    assert all((o[0], o[1]) == (vip(st, "web"), 53) for o in answered)


def test_session_affinity_pins_one_backend(svc):
    st, _ = svc
    calls = tcp_calls(st, "c1", "sticky", 20)
    assert len({c[1] for c in calls}) == 1 and calls[0][0] == vip(st, "sticky")


def test_service_without_endpoints_rejects(svc):
    st, _ = svc
    calls = tcp_calls(st, "c1", "empty", 3)
    assert all(c == ["error", "ConnectionRefusedError"] for c in calls)     # a RST, not a timeout
    out = py_in_pod(st, "c1", textwrap.dedent("""
        import socket, sys
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
        s.connect((sys.argv[1], 53)); s.send(b"x")
        try:
            s.recv(10); print("answered")
        except ConnectionRefusedError:
            print("refused")                # ICMP port unreachable
        except socket.timeout:
            print("timeout")
    """), vip(st, "empty")).stdout.strip()
    assert out == "refused"


def test_endpoints_updated_live(svc):
    st, tmp = svc
    try:
        r = podnet("apply", "-f", slice_manifest(tmp, "web-1", "web", [pod_ip(st, "w2")]))
        assert "endpointslice/default/web-1 created" in r.stdout
        assert {c[1] for c in tcp_calls(st, "c1", "web", 10)} == {pod_ip(st, "w2")}   # w1 no longer used
        r = podnet("apply", "-f", slice_manifest(tmp, "web-1", "web", [pod_ip(st, "w2")]))
        assert "unchanged" in r.stdout                                          # idempotent
        podnet("apply", "-f", slice_manifest(tmp, "web-1", "web", [pod_ip(st, "w2"), pod_ip(st, "x2")]))
        assert {c[1] for c in tcp_calls(st, "c1", "web", 20)} == {pod_ip(st, "w2"), pod_ip(st, "x2")}  # new one at once
    finally:
        podnet("delete", "-f", slice_manifest(tmp, "web-1", "web", []))
    assert {c[1] for c in tcp_calls(st, "c1", "web", 20)} == {pod_ip(st, "w1"), pod_ip(st, "w2")}   # back to the selector


def test_udp_keeps_flowing_when_its_backend_is_replaced(svc):
    """kubernetes#19029 / #48370: a UDP flow must not stay pinned to a gone backend."""
    st, tmp = svc
    try:
        podnet("apply", "-f", slice_manifest(tmp, "web-u", "web", [pod_ip(st, "w1")]))
        client = spawn_in_pod(st, "c1", UDP_CLIENT, vip(st, "web"), 53, 3.0, 41000)
        # the flow is pinned to w1 and answered before the backend is replaced
        wait_until(lambda: any(c["client"] == f"{pod_ip(st, 'c1')}:41000" and c["state"] == "replied"
                               and c["backend"] == f"{pod_ip(st, 'w1')}:5353" for c in agent(st, "n1", "conntrack")),
                   timeout=2.5, what="the UDP flow answered by w1")
        podnet("apply", "-f", slice_manifest(tmp, "web-u", "web", [pod_ip(st, "x2")]))   # replace the backend
        out = json.loads(client.communicate(timeout=30)[0])
    finally:
        podnet("delete", "-f", slice_manifest(tmp, "web-u", "web", []))
    answered = [o for o in out if len(o) == 3]
    assert len(answered) >= len(out) - 3                        # at most a blip
    who = [o[2] for o in answered]
    assert who[0] == pod_ip(st, "w1") and who[-1] == pod_ip(st, "x2")   # same client port, new backend
    assert all((o[0], o[1]) == (vip(st, "web"), 53) for o in answered)


ECHO = """
import socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(16)
def serve(c):
    while True:
        d = c.recv(65536)
        if not d:
            break
        c.sendall(d)
while True:
    threading.Thread(target=serve, args=(s.accept()[0],), daemon=True).start()
"""

# One connection per NAME=VIP argument (port 80), kept open; prints their
# client ports, then for each NAME read on stdin sends 100 bytes on that
# connection and prints whether they came back.
CONNS = """
import json, socket, sys
conns = {}
for arg in sys.argv[1:]:
    name, ip = arg.split("=")
    conns[name] = socket.create_connection((ip, 80), timeout=5)
def echo(name):
    s, got = conns[name], b""
    try:
        s.sendall(b"x" * 100)
        while len(got) < 100:
            d = s.recv(100 - len(got))
            if not d:
                return {"error": "closed"}
            got += d
        return {"ok": True}
    except OSError as e:
        return {"error": type(e).__name__}
print(json.dumps({n: s.getsockname()[1] for n, s in conns.items()}), flush=True)
for line in sys.stdin:
    print(json.dumps(echo(line.strip())), flush=True)
"""


def test_a_change_to_one_service_leaves_the_others_connections_and_resets_its_own(svc):
    """Two services with the same backend (w2:9090), a connection through
    each. Replacing one service's backend touches only that service port:
    the other connection carries on; this one's next segment gets a RST."""
    st, tmp = svc
    keep_ip, change_ip, w2 = "10.94.0.200", "10.94.0.201", pod_ip(st, "w2")
    port = (("tcp", 9090, "TCP"),)
    two = tmp / "two.json"                      # the services and their slices, one List
    two.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
         "spec": {"clusterIP": ip, "ports": [{"name": "tcp", "port": 80, "targetPort": 9090}]}}
        for name, ip in (("keep", keep_ip), ("change", change_ip))] + [
        json.loads(open(slice_manifest(tmp, f"{n}-1", n, [w2], port)).read()) for n in ("keep", "change")]}))
    echo = spawn_in_pod(st, "w2", ECHO, 9090)
    client = None
    try:
        wait_listening(st, "w2", 9090)
        podnet("apply", "-f", str(two))
        client = subprocess.Popen(["ip", "netns", "exec", f"{st.cluster}-pod-c1", sys.executable, "-c",
                                   textwrap.dedent(CONNS), f"keep={keep_ip}", f"change={change_ip}"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        sport = read_json_line(client)

        def send(name):
            client.stdin.write(name + "\n")
            client.stdin.flush()
            return read_json_line(client)

        def conns():
            # by client port and service: an earlier test's closing connection
            # (to another ClusterIP) may have had the same ephemeral port
            vips = {"keep": keep_ip, "change": change_ip}
            return {n: [c for c in agent(st, "n1", "conntrack")
                        if c["client"] == f"{pod_ip(st, 'c1')}:{p}" and c["proto"] == "TCP"
                        and c["service"] == f"{vips[n]}:80"] for n, p in sport.items()}
        assert send("keep") == {"ok": True} and send("change") == {"ok": True}
        ct = conns()
        assert {n: [(c["service"], c["backend"], c["state"], c["dead"]) for c in ct[n]] for n in ct} == {
            "keep": [(f"{keep_ip}:80", f"{w2}:9090", "established", False)],
            "change": [(f"{change_ip}:80", f"{w2}:9090", "established", False)]}
        rejected = agent(st, "n1", "counters")["drops"]["service_rejected"]

        r = podnet("apply", "-f", slice_manifest(tmp, "change-1", "change", [pod_ip(st, "x2")], port))
        assert "endpointslice/default/change-1 configured" in r.stdout
        assert "(1 service ports loaded, 0 removed on every agent)" in r.stderr    # only change's port
        ct = conns()
        assert [c["dead"] for c in ct["keep"]] == [False] and [c["dead"] for c in ct["change"]] == [True]
        assert agent(st, "n1", "counters")["drops"]["service_rejected"] == rejected   # marked, not yet reset
        assert send("keep") == {"ok": True}                                     # same backend, other service
        assert send("change") == {"error": "ConnectionResetError"}              # RST on its next segment
        assert agent(st, "n1", "counters")["drops"]["service_rejected"] == rejected + 1
        ct = conns()
        assert ct["change"] == [] and [c["state"] for c in ct["keep"]] == ["established"]
        assert send("keep") == {"ok": True}
    finally:
        if client:
            client.kill()
            client.wait()
        echo.kill()
        echo.wait()
        podnet("delete", "-f", str(two), check=False)
    assert not {keep_ip, change_ip} & {e["vip"] for e in agent(st, "n1", "services")}


def test_hairpin(svc):
    st, tmp = svc
    try:
        podnet("apply", "-f", slice_manifest(tmp, "web-h", "web", [pod_ip(st, "w1")]))
        calls = tcp_calls(st, "w1", "web", 3)
    finally:
        podnet("delete", "-f", slice_manifest(tmp, "web-h", "web", []))
    # w1 reached itself through its service; it saw the gateway as the client (SNAT)
    assert all(c == [vip(st, "web"), pod_ip(st, "w1"), st.nodes["n1"].gateway_ip] for c in calls), calls


def test_bad_manifest_changes_nothing(svc, tmp_path):
    st, _ = svc
    before = agent(st, "n1", "services")
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: web2}\nspec: {ports: [{port: 99999}]}\n")
    r = podnet("apply", "-f", str(bad), check=False)
    assert r.returncode == 1 and "spec.ports[0].port" in r.stderr
    assert agent(st, "n1", "services") == before
