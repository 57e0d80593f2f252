"""The seed's claim, O(N) iptables versus O(1) hash, measured: TCP connect
latency (the first packet of each connection is the one that walks the
service rules) from a client pod to the last of N ClusterIPs, for N = 10,
1,000 and 10,000 services:

  podnet   client pod -> agent (hash lookup, conntrack, DNAT) -> server pod
  kernel   client netns -> router netns with N iptables DNAT rules in
           PREROUTING, as kube-proxy's iptables mode lays them out in
           KUBE-SERVICES (one rule per service port, matched in order) -> server

Both paths are up at once; at each size they are measured in interleaved
rounds (bench/rounds.py), so each figure is the median of a round's connects,
reported as the median and min-max over the rounds. Writes
bench/results/connect_latency.json and .png.

    python bench/e2e_connect.py [--connects 300] [--sizes 10,1000,10000] [--rounds 3]
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
from rounds import spread  # noqa: E402

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
out, failed = [], []
for i in range(n + 20):                        # 20 warm-up connections first
    t = time.perf_counter()
    try:
        c = socket.create_connection((vip, 80), timeout=5)
    except OSError as e:                       # counted and reported, not hidden in a median
        failed.append(f"{type(e).__name__}: {e}")
        continue
    d = time.perf_counter() - t
    c.close()
    if i >= 20:
        out.append(d * 1e6)
    time.sleep(0.002)
print(json.dumps({"us": out, "failed": failed}))
"""


def vip(k):
    return f"10.90.{k // 250}.{k % 250 + 1}"


def measure(client_ns, server_ns, target, connects):
    srv = subprocess.Popen(ns_exec(server_ns, sys.executable, "-c", SERVER), stdout=subprocess.PIPE, text=True)
    try:
        assert srv.stdout.readline().strip() == "ready"
        r = subprocess.run(ns_exec(client_ns, sys.executable, "-c", CLIENT, target, str(connects)),
                           capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise RuntimeError(f"connect client to {target} failed: {r.stderr.strip().splitlines()[-1:]}")
        got = json.loads(r.stdout)
        us = got["us"]
    finally:
        srv.kill()
        srv.wait()
    us.sort()
    return {"median_us": statistics.median(us), "p90_us": us[int(len(us) * 0.9)], "min_us": us[0],
            "connects": len(us), "failed": len(got["failed"]), "errors": sorted(set(got["failed"]))}


def podnet_load(pc, have, n):
    """Services have..n-1 into the agent, each to the server pod's :8080."""
    server_ip = pc.state["plan"]["pods"]["server"]["ip"]
    batch = [{"vip": vip(k), "port": 80, "protocol": "TCP", "backends": [[server_ip, 8080]]}
             for k in range(have, n)]
    if batch:
        pc.request("n1", "services_apply", timeout=120, upsert=batch)


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


def plot(doc, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for key, label in (("podnet", "podnet (hash map + conntrack)"), ("iptables", "iptables DNAT rules")):
        xs = sorted(int(n) for n in doc[key])
        med = [doc[key][str(n)]["median_us"]["median"] for n in xs]
        lo = [m - doc[key][str(n)]["median_us"]["min"] for m, n in zip(med, xs)]
        hi = [doc[key][str(n)]["median_us"]["max"] - m for m, n in zip(med, xs)]
        ax.errorbar(xs, med, yerr=[lo, hi], marker="o", capsize=3, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("services (ClusterIP ports)")
    ax.set_ylabel(f"TCP connect latency, median (µs; min-max of {doc['rounds']} rounds)")
    ax.set_title(f"First packet through N services ({doc['machine']['cpu']}, {doc['machine']['cores']} vCPU)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--connects", type=int, default=300)
    ap.add_argument("--sizes", default="10,1000,10000")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    if not shutil.which("iptables-restore"):
        sys.exit("iptables-restore not found (apt-get install iptables)")
    sizes = [int(s) for s in args.sizes.split(",")]
    from machine import machine
    doc = {"bench": "connect_latency", "machine": machine(), "rounds": args.rounds,
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "connects": args.connects}
    raw = {"podnet": {}, "iptables": {}}
    print("connect latency through N services:", file=sys.stderr)
    with PodnetCluster(SPEC) as pc, Router() as r:
        where = {"podnet": (pc.pod_ns("client"), pc.pod_ns("server")), "iptables": (r.ns["c"], r.ns["s"])}
        have = 0
        for n in sizes:
            podnet_load(pc, have, n)
            have = n
            r.rules(n)
            for k in range(args.rounds):
                for path in (("podnet", "iptables") if k % 2 == 0 else ("iptables", "podnet")):
                    print(f"  {path}, {n} services, round {k + 1} ...", file=sys.stderr)
                    raw[path].setdefault(str(n), []).append(measure(*where[path], vip(n - 1), args.connects))
    for path, per in raw.items():
        doc[path] = {n: {m: spread([x[m] for x in runs]) for m in ("median_us", "p90_us", "min_us")}
                     for n, runs in per.items()}
    lo, hi = str(sizes[0]), str(sizes[-1])
    # growth from the smallest to the largest table, per round
    doc["growth"] = {p: spread([b["median_us"] / a["median_us"] for a, b in zip(raw[p][lo], raw[p][hi])])
                     for p in raw}
    doc["podnet_vs_iptables"] = {n: spread([a["median_us"] / b["median_us"]
                                            for a, b in zip(raw["podnet"][n], raw["iptables"][n])])
                                 for n in raw["podnet"]}
    doc["failed_connects"] = {p: {n: sum(x["failed"] for x in runs) for n, runs in per.items()} for p, per in raw.items()}
    doc["raw"] = raw
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "connect_latency.json").write_text(json.dumps(doc, indent=2) + "\n")
    plot(doc, RESULTS / "connect_latency.png")
    for p in ("podnet", "iptables"):
        for n, m in doc[p].items():
            v = m["median_us"]
            print(f"{p:9s} {n:>6s} services: {v['median']:.0f} us ({v['min']:.0f}-{v['max']:.0f})")
    for p, v in doc["growth"].items():
        print(f"growth {p:9s} {v['median']:.2f} ({v['min']:.2f}-{v['max']:.2f})")


if __name__ == "__main__":
    main()
