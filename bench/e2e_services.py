"""Services end to end, needs root:

  control  applying 10,000 services x 10 endpoints to a running agent (target
           < 1 s) and one service update (target < 10 ms), through the control
           socket; and the same 10k through `podnet apply -f` (manifest parse,
           store, diff, push)
  data     iperf3 TCP pod -> ClusterIP through podnet, beside the kernel's
           iptables DNAT on the same path (client netns -> router netns with a
           PREROUTING DNAT rule -> server netns), both up at once and
           measured in interleaved rounds (bench/rounds.py)

Every figure is repeated (--rounds) and reported as median and min-max;
ratios are taken within a round. Writes bench/results/services_e2e.json and
services.png.

    python bench/e2e_services.py [--seconds 5] [--rounds 3]
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
from e2e_pods import iperf, ns_exec, sh  # noqa: E402
from podnet_cluster import PodnetCluster  # noqa: E402
from rounds import interleave, ratio, spread, summarize  # noqa: E402

RESULTS = HERE / "results"
SPEC = """cluster: {name: pnbs, podCIDR: 10.242.0.0/16, serviceCIDR: 10.93.0.0/16, fabricCIDR: 172.30.254.0/24}
nodes: [{name: n1}]
pods: [{name: client, node: n1}, {name: server, node: n1, labels: {app: perf}}]
services: [{name: perf, selector: {app: perf}, ports: [{port: 5201, targetPort: 5201}]}]
"""


def entries(n, per):
    return [{"vip": f"10.93.{1 + k // 250}.{k % 250 + 1}", "port": 80, "protocol": "TCP",
             "backends": [[f"10.242.0.{2 + (k + j) % 200}", 8080] for j in range(per)],
             "affinity_timeout": 0, "load_balancing": "random"} for k in range(n)]


def manifest(n, per):
    items = []
    for k in range(n):
        items.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"s{k}"},
                      "spec": {"clusterIP": f"10.93.{101 + k // 250}.{k % 250 + 1}",
                               "ports": [{"port": 80, "targetPort": 8080}]}})
        items.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                      "metadata": {"name": f"s{k}-1", "labels": {"kubernetes.io/service-name": f"s{k}"}},
                      "addressType": "IPv4",
                      "endpoints": [{"addresses": [f"10.242.0.{2 + (k + j) % 200}"]} for j in range(per)]})
    return {"apiVersion": "v1", "kind": "List", "items": items}


def control(state, tmp, rounds):
    """Each round: the 10k services x 10 endpoints through the socket into an
    agent holding none of them, 30 single-service updates, the same 10k as
    manifests through `podnet apply -f`; then both are removed again."""
    from dataplane.control import request
    sock = state.nodes["n1"].socket
    big = entries(10000, 10)
    path = Path(tmp) / "10k.json"
    path.write_text(json.dumps(manifest(10000, 10)))
    out = {"apply_10k_x10_socket_s": [], "one_update_ms_median": [], "one_update_ms_max": [],
           "podnet_apply_10k_x10_manifest_s": []}
    for _ in range(rounds):
        t = time.perf_counter()
        r = request(sock, "services_apply", timeout=120, upsert=big)
        out["apply_10k_x10_socket_s"].append(time.perf_counter() - t)
        assert r["service_ports"] >= 10000
        one = []
        for i in range(30):
            e = dict(big[i], backends=big[i]["backends"][:9] if i % 2 else big[i]["backends"])
            t = time.perf_counter()
            request(sock, "services_apply", upsert=[e])
            one.append(time.perf_counter() - t)
        out["one_update_ms_median"].append(statistics.median(one) * 1e3)
        out["one_update_ms_max"].append(max(one) * 1e3)
        request(sock, "services_apply", timeout=120, upsert=[],
                delete=[{"vip": e["vip"], "port": e["port"], "protocol": e["protocol"]} for e in big])
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "dataplane", "apply", "-f", str(path)],
                           capture_output=True, text=True, timeout=600, env=os.environ)
        out["podnet_apply_10k_x10_manifest_s"].append(time.perf_counter() - t)
        assert r.returncode == 0, r.stderr
        r = subprocess.run([sys.executable, "-m", "dataplane", "delete", "-f", str(path)],
                           capture_output=True, text=True, timeout=600, env=os.environ)
        assert r.returncode == 0, r.stderr
    return {k: spread(v) for k, v in out.items()}


class KernelDNAT:
    """client -- router (iptables DNAT VIP:5201 -> server:5201) -- server."""
    label = "kernel: veth + iptables DNAT in a router namespace"
    ns = {"c": "pnbench-ipt-c", "r": "pnbench-ipt-r", "s": "pnbench-ipt-s"}

    def __enter__(self):
        for n in self.ns.values():
            sh("ip", "netns", "add", n)
        try:
            r = self.ns["r"]
            for side, net in (("c", "10.241.1"), ("s", "10.241.2")):
                sh(*ns_exec(r, "ip", "link", "add", f"to{side}", "mtu", "1450", "type", "veth", "peer", "name",
                            "eth0", "netns", self.ns[side]))
                sh(*ns_exec(r, "ip", "addr", "add", f"{net}.1/24", "dev", f"to{side}"))
                sh(*ns_exec(r, "ip", "link", "set", f"to{side}", "up"))
                sh(*ns_exec(self.ns[side], "ip", "addr", "add", f"{net}.2/24", "dev", "eth0"))
                sh(*ns_exec(self.ns[side], "ip", "link", "set", "eth0", "mtu", "1450", "up"))
                sh(*ns_exec(self.ns[side], "ip", "link", "set", "lo", "up"))
                sh(*ns_exec(self.ns[side], "ip", "route", "add", "default", "via", f"{net}.1"))
            sh(*ns_exec(r, "sysctl", "-qw", "net.ipv4.ip_forward=1"))
            sh(*ns_exec(r, "iptables", "-t", "nat", "-A", "PREROUTING", "-d", "10.93.250.1", "-p", "tcp",
                        "--dport", "5201", "-j", "DNAT", "--to-destination", "10.241.2.2:5201"))
        except BaseException:
            self.__exit__()
            raise
        return self

    def target(self):
        return self.ns["c"], self.ns["s"], "10.93.250.1"

    def __exit__(self, *exc):
        for n in self.ns.values():
            sh("ip", "netns", "del", n, check=False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    if not shutil.which("iptables"):
        sys.exit("iptables not found (apt-get install iptables)")
    from machine import machine
    doc = {"bench": "services_e2e", "machine": machine(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "seconds": args.seconds, "rounds": args.rounds}
    with PodnetCluster(SPEC) as pc, KernelDNAT() as k:
        targets = {"podnet": (pc.pod_ns("client"), pc.pod_ns("server"), pc.state.services_plan["perf"]),
                   "iptables": k.target()}
        doc["labels"] = {"podnet": "podnet: pod -> ClusterIP (hash map + conntrack)", "iptables": k.label}

        def measure(name, kind):
            c, s, vip = targets[name]
            return iperf(c, s, vip, args.seconds, streams=4 if kind == "tcp4" else 1, port=5201)

        raw = interleave(["podnet", "iptables"], ("tcp1", "tcp4"), args.rounds, measure,
                         log=lambda m: print(m, file=sys.stderr, flush=True))
        print("control plane ...", file=sys.stderr)
        doc["control"] = control(pc.state, pc.tmp, args.rounds)
    doc["summary"] = summarize(raw, {"tcp1": ["gbps"], "tcp4": ["gbps"]})
    doc["ratios"] = {f"podnet_vs_iptables_{t}": ratio(raw, t, "gbps", "podnet", "iptables") for t in ("tcp1", "tcp4")}
    doc["raw"] = raw
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "services_e2e.json").write_text(json.dumps(doc, indent=2) + "\n")
    plot(doc, RESULTS / "services.png")
    for kind, per in doc["summary"].items():
        for p, m in per.items():
            print(f"{kind} {p:9s} {m['gbps']['median']:.2f} Gbit/s ({m['gbps']['min']:.2f}-{m['gbps']['max']:.2f})")
    for key, v in list(doc["ratios"].items()) + list(doc["control"].items()):
        print(f"{key:36s} {v['median']:.3f} ({v['min']:.3f}-{v['max']:.3f})")


def plot(doc, path):
    """pod -> ClusterIP TCP through podnet beside iptables DNAT: medians with
    min-max bars over the rounds."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = ["podnet", "iptables"]
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    w = 0.38
    for i, key in enumerate(("tcp1", "tcp4")):
        vals = [doc["summary"][key][n]["gbps"] for n in names]
        med = [v["median"] for v in vals]
        err = [[m - v["min"] for m, v in zip(med, vals)], [v["max"] - m for m, v in zip(med, vals)]]
        bars = ax.bar([x + (i - 0.5) * w for x in range(len(names))], med, w, yerr=err, capsize=3,
                      label=f"TCP, {key[3:]} stream{'s' if key == 'tcp4' else ''}")
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(range(len(names)), ["podnet", "kernel iptables DNAT"])
    ax.set_ylabel(f"Gbit/s (median, min-max of {doc['rounds']})")
    ax.set_title("pod to ClusterIP, TCP (iperf3)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
