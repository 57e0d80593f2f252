"""`make demo`: bring up the embedded default cluster, show it, check it live,
show the counters, and say how to explore and tear down. Re-running it reuses
a cluster that is already up; Ctrl-C during `up` rolls back completely."""
import subprocess
import sys
import time

from dataplane import cluster
from dataplane.control import request
from dataplane.table import render

TCP_CHECK = """
import hashlib, os, socket, sys, threading
# server side runs in the other pod (argv: role, ip, port, bytes)
role, ip, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if role == "server":
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((ip, port)); s.listen(1); s.settimeout(10); print("listening", flush=True)
    c, _ = s.accept(); c.settimeout(10); h = hashlib.sha256()
    while (d := c.recv(1 << 20)):
        h.update(d)
    c.sendall(h.hexdigest().encode()); c.close()
else:
    data = os.urandom(n); c = socket.create_connection((ip, port), timeout=10)
    c.sendall(data); c.shutdown(socket.SHUT_WR)
    print("ok" if c.recv(64).decode() == hashlib.sha256(data).hexdigest() else "corrupt")
"""


def _ns(state, pod):
    return state.pods[pod].netns


def ping(state, src, dst_ip):
    r = subprocess.run(["ip", "netns", "exec", _ns(state, src), "ping", "-c", "3", "-i", "0.2", "-W", "1",
                        dst_ip], capture_output=True, text=True, timeout=15)
    line = [ln for ln in r.stdout.splitlines() if "packets transmitted" in ln]
    rtt = [ln.split("=")[1].split("/")[1] for ln in r.stdout.splitlines() if ln.startswith("rtt")]
    return r.returncode == 0, (line[0] if line else r.stderr.strip()) + (f", avg {rtt[0]} ms" if rtt else "")


def tcp(state, src, dst, dst_ip, nbytes=8 << 20):
    srv = subprocess.Popen(["ip", "netns", "exec", _ns(state, dst), sys.executable, "-c", TCP_CHECK,
                            "server", dst_ip, "7070", "0"], stdout=subprocess.PIPE, text=True)
    try:
        srv.stdout.readline()                                   # listening
        t = time.monotonic()
        r = subprocess.run(["ip", "netns", "exec", _ns(state, src), sys.executable, "-c", TCP_CHECK,
                            "client", dst_ip, "7070", str(nbytes)], capture_output=True, text=True, timeout=20)
        dt = time.monotonic() - t
        ok = r.stdout.strip() == "ok"
        return ok, f"{nbytes >> 20} MiB, sha256 {'verified' if ok else 'MISMATCH'}, {nbytes * 8 / dt / 1e9:.2f} Gbit/s incl. start-up"
    finally:
        srv.kill()
        srv.wait()


WHOAMI = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[2]))); s.listen(64); s.settimeout(30)
print("listening", flush=True)
while True:
    c, _ = s.accept(); c.sendall(sys.argv[1].encode()); c.close()
"""

SPREAD = """
import collections, json, socket, sys
seen = collections.Counter()
for _ in range(int(sys.argv[3])):
    try:
        c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
        seen[c.recv(64).decode() + " via " + c.getpeername()[0]] += 1; c.close()
    except OSError as e:
        seen[type(e).__name__] += 1
print(json.dumps(seen))
"""


def clusterip(state, client, entry, n=30):
    """Connections from client to a ClusterIP: which backends answered, and from which address."""
    import json
    servers = []
    try:
        for ip, port in entry["backends"]:
            pod = next(p.name for p in state.pods.values() if p.ip == ip)
            srv = subprocess.Popen(["ip", "netns", "exec", _ns(state, pod), sys.executable, "-c", WHOAMI,
                                    f"{pod}", str(port)], stdout=subprocess.PIPE, text=True)
            servers.append(srv)
            srv.stdout.readline()
        r = subprocess.run(["ip", "netns", "exec", _ns(state, client), sys.executable, "-c", SPREAD,
                            entry["vip"], str(entry["port"]), str(n)], capture_output=True, text=True, timeout=60)
        seen = json.loads(r.stdout or "{}")
    finally:
        for srv in servers:
            srv.kill()
            srv.wait()
    ok = len(seen) == len(entry["backends"]) and all(k.endswith(entry["vip"]) for k in seen)
    return ok, f"{n} connections: " + ", ".join(f"{k} x{v}" for k, v in sorted(seen.items()))


def main(out=print):
    state = cluster.load_state()
    if state is None:
        out("== podnet up (embedded default spec) ==")
        state = cluster.up(None, progress=lambda m: out("  " + m))   # Ctrl-C here: rolled back
    else:
        out(f"== a cluster is already up ({state.source}): using it ==")
    try:
        return _show(state, out)
    except KeyboardInterrupt:
        out("\n(interrupted: the cluster is up and whole; `podnet down` removes it)")
        raise


def live_pod(state, client, node, svc, pods, name="demo-live"):
    """A pod added to the running cluster with a backend's labels: client
    reaches it, the Service takes it as a backend, and deleting it takes it
    out again (the checks of `podnet pod add` / `pod delete`)."""
    backend = next(p for p, v in pods.items() if [v["ip"], svc["backends"][0][1]] in svc["backends"])
    labels = dict(state.pods[backend].labels)
    if name in cluster.load_state().pods:          # left by an interrupted demo
        cluster.pod_delete(name)
    rec = cluster.pod_add(name, node, labels)
    try:
        live = cluster.load_state()
        ok, detail = ping(live, client, rec["ip"])
        follows = lambda: any(rec["ip"] == ip for e in cluster.services() if e["key"] == svc["key"]
                              for ip, _ in e["backends"])
        added = follows()
    finally:
        cluster.pod_delete(name)
    removed = not follows()
    labels_text = ",".join(f"{k}={v}" for k, v in labels.items())
    return [(f"pod add {name} ({labels_text}) on {node}: {client} pings it", ok, detail),
            (f"{svc['key']} follows it: a backend, then gone after pod delete", added and removed,
             f"{rec['ip']} added and removed" if added and removed else f"added {added}, removed {removed}")]


def _show(state, out):
    st = cluster.status()
    out("\n== nodes ==")
    out(render(st["nodes"], [("node", "name"), ("agent", "agent"), ("pid", "agent_pid"),
                             ("namespace", "netns"), ("pod subnet", "subnet"), ("gateway", "gateway_ip")]))
    out("\n== pods ==")
    out(render(st["pods"], [("pod", "name"), ("node", "node"), ("namespace", "namespace"),
                            ("ip", "ip"), ("mac", "mac")]))
    out(f"\n== fabric: bridge {st['fabric']['bridge']} in namespace {st['fabric']['namespace']}, "
        f"{st['fabric']['subnet']}, MTU {st['fabric']['mtu']}, VNI {st['vni']}, UDP {st['vxlan_port']} ==")
    out(render(st["nodes"], [("node", "name"), ("underlay ip", "underlay_ip"), ("underlay mac", "underlay_mac"),
                             ("gso path", "gso_path")]))
    first = next(iter(state.nodes))
    out(f"\n== routes on {first} (flannel-style: pod CIDR -> VTEP) ==")
    out(render(request(state.nodes[first].socket, "routes"),
               [("node", "name"), ("pod cidr", "cidr"), ("vtep", "vtep"), ("vtep state", "vtep_state"),
                ("inner mac", "inner_mac")]))
    out("\n== services (kube-proxy's job, in the fast path) ==")
    entries = cluster.services()
    out(render([dict(e, port=f"{e['port']}/{e['protocol']}",
                     backends=" ".join(f"{ip}:{p}" for ip, p in e["backends"]) or "<none>") for e in entries],
               [("service", "key"), ("cluster ip", "vip"), ("port", "port"), ("backends", "backends")]))

    pods = {n: p.to_dict() for n, p in state.pods.items()}
    by_node = {}
    for name, p in pods.items():
        by_node.setdefault(p["node"], []).append(name)
    out("\n== live checks ==")
    results = []
    for node, names in by_node.items():
        if len(names) >= 2:
            a, b = names[0], names[1]
            results.append((f"{a} -> {b} ping (same node {node})", *ping(state, a, pods[b]["ip"])))
            results.append((f"{a} -> {b} TCP (same node {node})", *tcp(state, a, b, pods[b]["ip"])))
        gw = state.nodes[node].gateway_ip
        results.append((f"{names[0]} -> gateway {gw} ping", *ping(state, names[0], gw)))
    nodes = list(by_node)
    if len(nodes) >= 2:
        a, b = by_node[nodes[0]][-1], by_node[nodes[1]][0]
        results.append((f"{a} -> {b} ping (across nodes, VXLAN)", *ping(state, a, pods[b]["ip"])))
        results.append((f"{a} -> {b} TCP (across nodes, VXLAN)", *tcp(state, a, b, pods[b]["ip"])))
    backend_ips = {ip for e in entries for ip, _ in e["backends"]}
    client = next((p for p, v in pods.items() if v["ip"] not in backend_ips), None)
    for e in entries:
        if e["protocol"] == "TCP" and e["backends"] and client:
            results.append((f"{client} -> {e['key']} ClusterIP {e['vip']}:{e['port']}", *clusterip(state, client, e)))
    svc0 = next((e for e in entries if e["protocol"] == "TCP" and e["backends"]), None)
    if svc0 and client and nodes:
        results += live_pod(state, client, nodes[-1], svc0, pods)
    for what, ok, detail in results:
        mark = "PASS" if ok else ("----" if ok is None else "FAIL")
        out(f"  [{mark}] {what:52s} {detail}")

    svc = next((e for e in entries if e["protocol"] == "TCP" and e["backends"]), None)
    if svc and client:
        from dataplane import trace
        out(f"\n== podnet trace {client} {svc['vip']}:{svc['port']} (one SYN, decision by decision) ==")
        try:
            frame = trace.build_frame(state, client, f"{svc['vip']}:{svc['port']}")
            out(trace.render(trace.run(client, frame)))
        except Exception as e:                # a demo section, not a check
            out(f"  trace failed: {e}")

    out("\n== fast-path counters ==")
    rows = []
    for node, n in state.nodes.items():
        c = request(n.socket, "counters")
        rows.append({"node": node, "rx": sum(p["rx_packets"] for p in c["ports"].values()),
                     "tx": sum(p["tx_packets"] for p in c["ports"].values()),
                     "forwarded": c["bridge"]["forwarded"], "flooded": c["bridge"]["flooded"],
                     "fdb": c["fdb"]["entries"], "arp replies": c["gateway"]["arp_replies"],
                     "icmp replies": c["gateway"]["icmp_replies"], "routed": c["gateway"]["routed"],
                     "encap": c["overlay"]["encapsulated"], "decap": c["overlay"]["decapsulated"],
                     "conns": c["conntrack"]["inserts"],
                     "drops": sum(c["drops"].values()), "frames/burst": round(c["io"]["frames_per_burst"], 1)})
    cols = list(rows[0]) if rows else []
    out(render(rows, [(c, c) for c in cols]))
    a = next(iter(pods))
    a, n0 = next(iter(pods)), nodes[0]
    explore = [("podnet status", "add -o json for scripts"),
               (f"podnet exec {a} -- ping -c 3 {pods[a]['gateway']}", "anything, inside a pod"),
               (f"podnet fdb {n0}", "what the bridge learned"),
               (f"podnet stats {n0}", "per-port and per-drop-reason counters"),
               (f"podnet routes {n0}", "the overlay routes to other nodes"),
               ("podnet services", "ClusterIPs and their backends"),
               (f"podnet conntrack {n0}", "connections through ClusterIPs"),
               (f"podnet trace {client or a} {svc['vip'] if svc else '10.96.0.10'}:80", "every fast-path decision for one packet"),
               (f"podnet capture {n0} {a} -w /tmp/{a}.pcap -c 50", "pcap of a port, for tcpdump/Wireshark"),
               (f"podnet metrics {n0}", "Prometheus text (podnet up --metrics serves it)"),
               ("podnet apply -f my-service.yaml", "Pod / Service / EndpointSlice manifests, live"),
               (f"podnet pod add web-c --node {nodes[-1]} --label app=web", "a pod on the running cluster"),
               ("podnet cni install", "the podnet network for podman / containerd"),
               ("podnet down", "remove every namespace, TAP, socket and agent")]
    out("\n== explore (podnet is .venv/bin/podnet) ==")
    for cmd, why in explore:
        out(f"  {cmd:50s} # {why}")
    return 0 if all(ok is not False for _, ok, _ in results) else 1
