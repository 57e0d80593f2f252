"""The seed's claim, O(N) iptables versus O(1) hash, measured: TCP connect
latency (the first packet of each connection is the one that walks the
service rules) from a client pod to the last of N ClusterIPs, for N = 10,
1,000 and 10,000 services, on three paths:

  podnet    client pod -> agent (hash lookup, conntrack, DNAT) -> server pod
  iptables  client netns -> router netns with N iptables DNAT rules in
            PREROUTING, as kube-proxy's iptables mode lays them out in
            KUBE-SERVICES (one rule per service port, matched in order) -> server
  nftables  client netns -> its own router netns with kube-proxy's nftables
            mode's ruleset (bench/kubeproxy_nft.py): one
            `ip daddr . meta l4proto . th dport vmap @service-ips` dispatch in
            the services chain, a chain per service with
            `numgen random mod N vmap { 0 : goto endpoint-... }`, an endpoint
            chain doing `dnat to IP:PORT` -> server

kube-proxy's third mode, IPVS, is not measured: IPVS (ip_vs) is not compiled
into this machine's kernel. The iptables here is iptables-nft (rules become
nf_tables bytecode), which walks the rule list in order like the legacy one.

The nftables table is loaded with `nft -f` in one transaction per size: the
whole table for the first size, then only the services added (as kube-proxy's
partial sync does). Even so 10,000 services take more than a minute on this
kernel (about 80 s to add 9,000 to 1,000; a rewrite of all 10,000 took 166 s):
each per-service `numgen ... vmap` is an anonymous set, and adding one walks
the table's sets and the transaction (perf: __nft_set_trans_bind,
nf_tables_newset; kubernetes issue 139513 reports the same growth). Each
path's load time is in the JSON as `load_s`, beside the latencies.

All paths are up at once; at each size they are measured in interleaved
rounds (bench/rounds.py, the order rotated each round), so each figure is the
median of a round's connects, reported as the median and min-max over the
rounds; ratios are taken within a round. Writes
bench/results/connect_latency.json and .png (or --out PATH and PATH's .png).

    python bench/e2e_connect.py [--connects 300] [--sizes 10,1000,10000] [--rounds 3] [--out PATH]
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
from kubeproxy_nft import add_services, ruleset  # noqa: E402
from podnet_cluster import PodnetCluster  # noqa: E402
from rounds import all_up, measure_paths, spread  # noqa: E402

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


PATHS = ("podnet", "iptables", "nftables")
LABELS = {"podnet": "podnet (hash map + conntrack)", "iptables": "iptables DNAT rules",
          "nftables": "nftables (kube-proxy nftables mode)"}


class PodnetPath(PodnetCluster):
    """The one-node podnet cluster, services loaded into its agent."""

    @property
    def where(self):
        return self.pod_ns("client"), self.pod_ns("server")

    def load(self, have, n):
        """Services have..n-1 into the agent, each to the server pod's :8080."""
        server_ip = self.state.pods["server"].ip
        batch = [{"vip": vip(k), "port": 80, "protocol": "TCP", "backends": [[server_ip, 8080]]}
                 for k in range(have, n)]
        if batch:
            self.request("n1", "services_apply", timeout=120, upsert=batch)


class Router:
    """client -- router -- server, all veth, in namespaces {prefix}-c, -r, -s;
    a subclass loads the service rules into the router."""
    prefix = net = None

    def __init__(self):
        self.ns = {side: f"{self.prefix}-{side}" for side in ("c", "r", "s")}
        self.server = f"{self.net}.2.2"

    @property
    def where(self):
        return self.ns["c"], self.ns["s"]

    def __enter__(self):
        made = []
        try:
            for n in self.ns.values():
                sh("ip", "netns", "add", n)
                made.append(n)
            r = self.ns["r"]
            for side, net in (("c", f"{self.net}.1"), ("s", f"{self.net}.2")):
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
            # only the namespaces this call made: one that already existed is someone else's
            for n in made:
                sh("ip", "netns", "del", n, check=False)
            raise
        return self

    def __exit__(self, *exc):
        for n in self.ns.values():
            sh("ip", "netns", "del", n, check=False)
        return False


class IptablesRouter(Router):
    prefix, net = "pnbench-lat", "10.235"

    def load(self, have, n):
        """Exactly n DNAT rules, loaded at once with iptables-restore."""
        lines = ["*nat", ":PREROUTING ACCEPT [0:0]"]
        lines += [f"-A PREROUTING -d {vip(k)}/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination {self.server}:8080"
                  for k in range(n)]
        lines.append("COMMIT")
        subprocess.run(ns_exec(self.ns["r"], "iptables-restore"), input="\n".join(lines) + "\n", text=True,
                       check=True, timeout=300)
        got = subprocess.run(ns_exec(self.ns["r"], "iptables", "-t", "nat", "-S", "PREROUTING"),
                             capture_output=True, text=True, check=True, timeout=120).stdout.count("DNAT")
        assert got == n, f"{got} rules loaded, wanted {n}"


class NftRouter(Router):
    prefix, net = "pnbench-nft", "10.234"

    def services(self, lo, hi):
        return [(f"bench/svc-{k}", vip(k), 80, [(self.server, 8080)]) for k in range(lo, hi)]

    def load(self, have, n):
        """Services have..n-1 in one nft -f transaction: the whole table the
        first time, the new services after (a rewrite of 10k takes minutes)."""
        text = ruleset(self.services(0, n)) if have == 0 else add_services(self.services(have, n))
        r = subprocess.run(ns_exec(self.ns["r"], "nft", "-f", "-"), input=text, capture_output=True, text=True,
                           timeout=900)
        if r.returncode != 0:
            raise RuntimeError(f"nft -f failed ({r.returncode}): {r.stderr.strip()[:2000]}")
        got = self.count()
        assert got == n, f"{got} services in service-ips, wanted {n}"

    def count(self):
        """Elements of the service-ips dispatch map, as the kernel holds it."""
        r = subprocess.run(ns_exec(self.ns["r"], "nft", "-j", "list", "map", "ip", "kube-proxy", "service-ips"),
                           capture_output=True, text=True, check=True, timeout=120)
        maps = [x["map"] for x in json.loads(r.stdout)["nftables"] if "map" in x]
        return len(maps[0].get("elem", [])) if maps else 0


def plot(doc, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for key in (p for p in PATHS if p in doc):
        label = LABELS[key]
        xs = sorted(int(n) for n in doc[key])
        med = [doc[key][str(n)]["median_us"]["median"] for n in xs]
        lo = [m - doc[key][str(n)]["median_us"]["min"] for m, n in zip(med, xs)]
        hi = [doc[key][str(n)]["median_us"]["max"] - m for m, n in zip(med, xs)]
        ax.errorbar(xs, med, yerr=[lo, hi], marker="o", capsize=3, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("services (ClusterIP ports)")
    ax.set_ylabel(f"TCP connect, median µs (min-max, {doc['rounds']} rounds)")
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
    ap.add_argument("--out", type=Path, default=RESULTS / "connect_latency.json",
                    help="results JSON (the plot goes beside it as .png)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    for tool, pkg in (("iptables-restore", "iptables"), ("nft", "nftables")):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found (apt-get install {pkg})")
    sizes = [int(s) for s in args.sizes.split(",")]
    if not sizes or sizes != sorted(set(sizes)) or sizes[0] < 1:
        sys.exit(f"--sizes must be increasing positive numbers, got {args.sizes}")
    from machine import machine
    doc = {"bench": "connect_latency", "machine": machine(), "rounds": args.rounds,
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "connects": args.connects}
    raw = {p: {} for p in PATHS}
    load_s = {p: {} for p in PATHS}
    print("connect latency through N services:", file=sys.stderr)
    paths = {"podnet": PodnetPath(SPEC), "iptables": IptablesRouter(), "nftables": NftRouter()}
    with all_up(paths):
        have = 0
        for n in sizes:
            for name, p in paths.items():
                t = time.monotonic()
                p.load(have, n)
                load_s[name][str(n)] = time.monotonic() - t
                print(f"  {name}: {n} services loaded in {load_s[name][str(n)]:.1f} s", file=sys.stderr)
            have = n
            got = measure_paths(paths, [str(n)], args.rounds,
                                lambda p, kind: measure(*p.where, vip(n - 1), args.connects))
            for name in PATHS:
                raw[name][str(n)] = got[str(n)][name]
    for path, per in raw.items():
        doc[path] = {n: {m: spread([x[m] for x in runs]) for m in ("median_us", "p90_us", "min_us")}
                     for n, runs in per.items()}
    lo, hi = str(sizes[0]), str(sizes[-1])
    # growth from the smallest to the largest table, per round
    doc["growth"] = {p: spread([b["median_us"] / a["median_us"] for a, b in zip(raw[p][lo], raw[p][hi])])
                     for p in raw}

    def ratio(num, den):
        return {n: spread([a["median_us"] / b["median_us"] for a, b in zip(raw[num][n], raw[den][n])])
                for n in raw[num]}
    doc["podnet_vs_iptables"] = ratio("podnet", "iptables")
    doc["podnet_vs_nftables"] = ratio("podnet", "nftables")
    doc["nftables_vs_iptables"] = ratio("nftables", "iptables")
    # issue 13's target: podnet's latency at the largest size at or below nftables', in every round
    t = doc["podnet_vs_nftables"][hi]
    doc["target"] = {"podnet_le_nftables_at": sizes[-1], "met": all(v <= 1.0 for v in t["values"])}
    doc["load_s"] = load_s
    doc["failed_connects"] = {p: {n: sum(x["failed"] for x in runs) for n, runs in per.items()} for p, per in raw.items()}
    doc["raw"] = raw
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    plot(doc, args.out.with_suffix(".png"))
    for p in PATHS:
        for n, m in doc[p].items():
            v = m["median_us"]
            print(f"{p:9s} {n:>6s} services: {v['median']:.0f} us ({v['min']:.0f}-{v['max']:.0f}), "
                  f"loaded in {load_s[p][n]:.1f} s")
    for p, v in doc["growth"].items():
        print(f"growth {p:9s} {v['median']:.2f} ({v['min']:.2f}-{v['max']:.2f})")
    v = doc["podnet_vs_nftables"][hi]
    print(f"podnet / nftables at {hi}: {v['median']:.2f} ({v['min']:.2f}-{v['max']:.2f}); "
          f"target {'met' if doc['target']['met'] else 'not met'}")


if __name__ == "__main__":
    main()
