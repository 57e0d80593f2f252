"""The seed's claim, O(N) iptables versus O(1) hash, measured: TCP connect
latency (the first packet of each connection is the one that walks the
service rules) from a client pod to the last of N ClusterIPs, for N = 10,
1,000 and 10,000 services:

  podnet   client pod -> agent (hash lookup, conntrack, DNAT) -> server pod
  kernel   client netns -> router netns with N iptables DNAT rules in
           PREROUTING, as kube-proxy's iptables mode lays them out in
           KUBE-SERVICES (one rule per service port, matched in order) -> server

Same run, same machine. Writes bench/results/connect_latency.json and .png.

    python bench/e2e_connect.py [--connects 300] [--sizes 10,1000,10000]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from e2e_pods import ns_exec, sh  # noqa: E402
from podnet_cluster import PodnetCluster  # noqa: E402

RESULTS = HERE / "results"
SPEC = """cluster: {name: pnbl, podCIDR: 10.236.0.0/16, serviceCIDR: 10.90.0.0/16, fabricCIDR: 172.30.253.0/24}
nodes: [{name: n1}]
pods: [{name: client, node: n1}, {name: server, node: n1}]
"""
SERVER = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080)); s.listen(1024); print("ready", flush=True)
s.settimeout(120)
while True:
    c, _ = s.accept(); c.close()
"""
CLIENT = """
import json, socket, sys, time
vip, n = sys.argv[1], int(sys.argv[2])
out = []
for i in range(n + 20):                        # 20 warm-up connections first
    t = time.perf_counter()
    c = socket.create_connection((vip, 80), timeout=5)
    d = time.perf_counter() - t
    c.close()
    if i >= 20:
        out.append(d * 1e6)
    time.sleep(0.002)
print(json.dumps(out))
"""


def vip(k):
    return f"10.90.{k // 250}.{k % 250 + 1}"


def measure(client_ns, server_ns, target, connects):
    srv = subprocess.Popen(ns_exec(server_ns, sys.executable, "-c", SERVER), stdout=subprocess.PIPE, text=True)
    try:
        assert srv.stdout.readline().strip() == "ready"
        r = subprocess.run(ns_exec(client_ns, sys.executable, "-c", CLIENT, target, str(connects)),
                           capture_output=True, text=True, timeout=300, check=True)
        us = json.loads(r.stdout)
    finally:
        srv.kill()
        srv.wait()
    us.sort()
    return {"median_us": statistics.median(us), "p90_us": us[int(len(us) * 0.9)], "min_us": us[0],
            "connects": len(us)}


def podnet_side(sizes, connects):
    out = {}
    with PodnetCluster(SPEC) as pc:
        server_ip = pc.state["plan"]["pods"]["server"]["ip"]
        have = 0
        for n in sizes:
            batch = [{"vip": vip(k), "port": 80, "protocol": "TCP", "backends": [[server_ip, 8080]]}
                     for k in range(have, n)]
            if batch:
                pc.request("n1", "services_apply", timeout=120, upsert=batch)
            have = n
            print(f"  podnet, {n} services ...", file=sys.stderr)
            out[n] = measure(pc.pod_ns("client"), pc.pod_ns("server"), vip(n - 1), connects)
    return out


class Router:
    """client -- router (iptables, N DNAT rules) -- server, all veth."""
    ns = {"c": "pnbench-lat-c", "r": "pnbench-lat-r", "s": "pnbench-lat-s"}

    def __enter__(self):
        for n in self.ns.values():
            sh("ip", "netns", "add", n)
        try:
            r = self.ns["r"]
            for side, net in (("c", "10.235.1"), ("s", "10.235.2")):
                sh(*ns_exec(r, "ip", "link", "add", f"to{side}", "type", "veth", "peer", "name", "eth0",
                            "netns", self.ns[side]))
                sh(*ns_exec(r, "ip", "addr", "add", f"{net}.1/24", "dev", f"to{side}"))
                sh(*ns_exec(r, "ip", "link", "set", f"to{side}", "up"))
                sh(*ns_exec(self.ns[side], "ip", "addr", "add", f"{net}.2/24", "dev", "eth0"))
                sh(*ns_exec(self.ns[side], "ip", "link", "set", "eth0", "up"))
                sh(*ns_exec(self.ns[side], "ip", "link", "set", "lo", "up"))
                sh(*ns_exec(self.ns[side], "ip", "route", "add", "default", "via", f"{net}.1"))
            sh(*ns_exec(r, "sysctl", "-qw", "net.ipv4.ip_forward=1"))
        except BaseException:
            self.__exit__()
            raise
        return self

    def rules(self, n):
        """Exactly n DNAT rules, loaded at once with iptables-restore."""
        lines = ["*nat", ":PREROUTING ACCEPT [0:0]"]
        lines += [f"-A PREROUTING -d {vip(k)}/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.235.2.2:8080"
                  for k in range(n)]
        lines.append("COMMIT")
        subprocess.run(ns_exec(self.ns["r"], "iptables-restore"), input="\n".join(lines) + "\n", text=True,
                       check=True, timeout=300)
        have = subprocess.run(ns_exec(self.ns["r"], "iptables", "-t", "nat", "-S", "PREROUTING"),
                              capture_output=True, text=True, check=True).stdout.count("DNAT")
        assert have == n, f"{have} rules loaded, wanted {n}"

    def __exit__(self, *exc):
        for n in self.ns.values():
            sh("ip", "netns", "del", n, check=False)


def kernel_side(sizes, connects):
    out = {}
    with Router() as r:
        for n in sizes:
            r.rules(n)
            print(f"  iptables, {n} rules ...", file=sys.stderr)
            out[n] = measure(r.ns["c"], r.ns["s"], vip(n - 1), connects)
    return out


def plot(doc, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for key, label in (("podnet", "podnet (hash map + conntrack)"), ("iptables", "iptables DNAT rules")):
        xs = sorted(int(n) for n in doc[key])
        ax.plot(xs, [doc[key][str(n)]["median_us"] for n in xs], marker="o", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("services (ClusterIP ports)")
    ax.set_ylabel("TCP connect latency, median (µs)")
    ax.set_title(f"First packet through N services ({doc['machine']['cpu']}, {doc['machine']['cores']} vCPU)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--connects", type=int, default=300)
    ap.add_argument("--sizes", default="10,1000,10000")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    if not shutil.which("iptables-restore"):
        sys.exit("iptables-restore not found (apt-get install iptables)")
    sizes = [int(s) for s in args.sizes.split(",")]
    from report import machine
    doc = {"bench": "connect_latency", "machine": machine(),
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "connects": args.connects}
    print("connect latency through N services:", file=sys.stderr)
    doc["podnet"] = {str(n): v for n, v in podnet_side(sizes, args.connects).items()}
    doc["iptables"] = {str(n): v for n, v in kernel_side(sizes, args.connects).items()}
    lo, hi = str(sizes[0]), str(sizes[-1])
    doc["growth"] = {k: doc[k][hi]["median_us"] / doc[k][lo]["median_us"] for k in ("podnet", "iptables")}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "connect_latency.json").write_text(json.dumps(doc, indent=2) + "\n")
    plot(doc, RESULTS / "connect_latency.png")
    print(json.dumps({k: {n: round(v["median_us"], 1) for n, v in doc[k].items()} for k in ("podnet", "iptables")}
                     | {"growth": doc["growth"]}, indent=2))


if __name__ == "__main__":
    main()
