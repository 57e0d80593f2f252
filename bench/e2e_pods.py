"""End-to-end pod-to-pod throughput on one node, three paths in the same run:

  kernel   veth pods on a Linux bridge (the bridge in its own namespace)
  tapfwd   two TAP pods joined by the minimal C forwarder (bench/tapfwd.c),
           vnet headers passed through, one frame per read/write
  podnet   two pods of a podnet node (agent + Cython fast path), vnet headers

iperf3 TCP with 1 and 4 streams, UDP with 64-byte payloads (receiver's
frames/s, and what the forwarder itself moved). All three paths are up at
once and measured in interleaved rounds (bench/rounds.py): each figure is
the median and min-max over the rounds, each ratio taken within a round.
Writes bench/results/pods.json and pods.png. Needs root.

    python bench/e2e_pods.py [--seconds 5] [--rounds 3]
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from podnet_cluster import PodnetCluster
from rounds import all_up, measure_paths, ratio, summarize, wait_listening

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
RESULTS = HERE / "results"
MTU = 1450
A_IP, B_IP = "10.251.0.2", "10.251.0.3"


def sh(*cmd, check=True, **kw):
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=60, **kw)


def ns_exec(ns, *cmd):
    return ["ip", "netns", "exec", ns, *cmd]


# ---- the three paths ----------------------------------------------------

class Kernel:
    name = "kernel"
    label = "Linux bridge + veth"

    def __init__(self):
        self.ns = {"a": "pnbench-k-a", "b": "pnbench-k-b", "br": "pnbench-k-br"}

    def __enter__(self):
        for n in self.ns.values():
            sh("ip", "netns", "add", n)
        sh(*ns_exec(self.ns["br"], "ip", "link", "add", "br0", "type", "bridge"))
        sh(*ns_exec(self.ns["br"], "ip", "link", "set", "br0", "up"))
        for pod, ip in (("a", A_IP), ("b", B_IP)):
            sh(*ns_exec(self.ns["br"], "ip", "link", "add", f"v{pod}", "mtu", str(MTU), "type", "veth",
                        "peer", "name", "eth0", "netns", self.ns[pod]))
            sh(*ns_exec(self.ns["br"], "ip", "link", "set", f"v{pod}", "master", "br0", "up"))
            sh(*ns_exec(self.ns[pod], "ip", "link", "set", "eth0", "mtu", str(MTU), "up"))
            sh(*ns_exec(self.ns[pod], "ip", "addr", "add", f"{ip}/24", "dev", "eth0"))
            sh(*ns_exec(self.ns[pod], "ip", "link", "set", "lo", "up"))
        return self

    def pods(self):
        return self.ns["a"], self.ns["b"], B_IP

    def __exit__(self, *exc):
        for n in self.ns.values():
            sh("ip", "netns", "del", n, check=False)


class TapFwd:
    name = "tapfwd"
    label = "minimal C TAP forwarder (vnet hdr)"

    def __init__(self, seconds_budget):
        self.ns = {"a": "pnbench-c-a", "b": "pnbench-c-b", "node": "pnbench-c-node"}
        self.budget = seconds_budget
        self.proc = None

    def __enter__(self):
        exe = HERE / "build" / "tapfwd"
        exe.parent.mkdir(exist_ok=True)
        sh("gcc", "-O2", "-o", str(exe), str(HERE / "tapfwd.c"))
        for n in self.ns.values():
            sh("ip", "netns", "add", n)
        # A child enters the node namespace, makes both TAPs, places them in the
        # pods and execs the forwarder with the fds.
        self.proc = subprocess.Popen([sys.executable, __file__, "--tapfwd-child", str(exe),
                                      str(self.budget)], stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("ready"):
            raise RuntimeError(f"tapfwd set-up failed: {line}")
        return self

    def pods(self):
        return self.ns["a"], self.ns["b"], B_IP

    def forwarded(self):
        """Frames the forwarder has moved so far (it prints them on SIGUSR1)."""
        self.proc.send_signal(signal.SIGUSR1)
        return int(self.proc.stdout.readline().split()[0])

    def __exit__(self, *exc):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        for n in self.ns.values():
            sh("ip", "netns", "del", n, check=False)


def tapfwd_child(exe, budget):
    from dataplane import netns
    from tap import Tap
    netns.enter("pnbench-c-node")
    taps = []
    for pod, ip, mac in (("a", A_IP, "0a:58:0a:fb:00:02"), ("b", B_IP, "0a:58:0a:fb:00:03")):
        t = Tap(f"tap{pod}")
        t.place(f"pnbench-c-{pod}", mac=mac, ip=ip, prefixlen=24, mtu=MTU)
        os.set_blocking(t.fileno(), True)
        taps.append(t)
    print("ready", flush=True)
    fds = [t.fileno() for t in taps]
    os.execv(exe, [exe, str(fds[0]), str(fds[1]), str(65536 + 512 + 12), budget])


class Podnet(PodnetCluster):
    name = "podnet"
    label = "podnet agent (Cython fast path)"

    def __init__(self):
        super().__init__("cluster: {name: pnbench, podCIDR: 10.252.0.0/16}\n"
                         "nodes: [{name: n1}]\n"
                         "pods: [{name: a, node: n1}, {name: b, node: n1}]\n")

    def pods(self):
        return self.pod_ns("a"), self.pod_ns("b"), self.state["plan"]["pods"]["b"]["ip"]

    def counters(self):
        return self.request("n1", "counters")

    def forwarded(self):
        return sum(p["tx_packets"] for p in self.counters()["ports"].values())

    def cpu(self):
        """The agent's (user, system) CPU seconds so far, from /proc."""
        f = Path(f"/proc/{self.state['nodes']['n1']['pid']}/stat").read_text().rsplit(")", 1)[1].split()
        hz = os.sysconf("SC_CLK_TCK")
        return int(f[11]) / hz, int(f[12]) / hz


# ---- iperf3 -------------------------------------------------------------

def iperf(client_ns, server_ns, server_ip, seconds, streams=1, udp=False, port=5299):
    srv = subprocess.Popen(ns_exec(server_ns, "iperf3", "-s", "-1", "-p", str(port)),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(server_ns, port)
        cmd = ["iperf3", "-c", server_ip, "-p", str(port), "-t", str(seconds), "-J", "-P", str(streams)]
        if udp:
            cmd += ["-u", "-b", "0", "-l", "64"]
        r = subprocess.run(ns_exec(client_ns, *cmd), capture_output=True, text=True, timeout=seconds + 30)
        data = json.loads(r.stdout)
        if "error" in data:
            raise RuntimeError(data["error"])
        end = data["end"]
        if udp:
            # iperf3 3.12: sum_received.packets is what was sent; lost is what never came
            s = end.get("sum_received") or end["sum"]
            got = s["packets"] - s.get("lost_packets", 0)
            return {"rx_pps": got / s["seconds"], "tx_pps": end["sum_sent"]["packets"] / end["sum_sent"]["seconds"],
                    "lost_percent": s.get("lost_percent")}
        return {"gbps": end["sum_received"]["bits_per_second"] / 1e9,
                "retransmits": end["sum_sent"].get("retransmits")}
    finally:
        srv.wait(timeout=seconds + 30) if srv.poll() is None else None


KINDS = ("tcp1", "tcp4", "udp64")
METRICS = {"tcp1": ["gbps", "agent_user_share"], "tcp4": ["gbps", "agent_user_share"],
           "udp64": ["rx_pps", "forwarded_pps", "agent_user_share"]}


def measure_kind(path, kind, seconds):
    cpu = getattr(path, "cpu", None)
    before = cpu() if cpu else None
    out = measure_iperf(path, kind, seconds)
    if cpu:
        # where the agent's time goes: its own code (user) or the kernel's
        # TAP reads and writes and the receive stack a write runs (system)
        (u0, s0), (u1, s1) = before, cpu()
        out["agent_user_s"], out["agent_system_s"] = u1 - u0, s1 - s0
        out["agent_user_share"] = (u1 - u0) / max(1e-9, (u1 - u0) + (s1 - s0))
    return out


def measure_iperf(path, kind, seconds):
    a, b, ip = path.pods()
    if kind != "udp64":
        return iperf(a, b, ip, seconds, streams=4 if kind == "tcp4" else 1)
    fwd = getattr(path, "forwarded", None)
    before, t0 = (fwd(), time.monotonic()) if fwd else (0, 0)
    out = iperf(a, b, ip, seconds, udp=True)
    if fwd:
        # what the forwarder itself moved (the receiver may drop some of it)
        out["forwarded_pps"] = (fwd() - before) / (time.monotonic() - t0)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tapfwd-child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.tapfwd_child:
        return tapfwd_child(*args.tapfwd_child)
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces, TAP devices)")
    from machine import machine
    budget = args.rounds * len(KINDS) * (args.seconds + 10) + 60
    paths = {p.name: p for p in (Kernel(), TapFwd(budget), Podnet())}
    with all_up(paths):
        raw = measure_paths(paths, KINDS, args.rounds, lambda p, kind: measure_kind(p, kind, args.seconds))
        c = paths["podnet"].counters()
        agent = {"frames_per_burst": c["io"]["frames_per_burst"], "drops": {k: v for k, v in c["drops"].items() if v}}
    ratios = {
        "podnet_vs_kernel_tcp1": ratio(raw, "tcp1", "gbps", "podnet", "kernel"),
        "podnet_vs_kernel_tcp4": ratio(raw, "tcp4", "gbps", "podnet", "kernel"),
        "podnet_vs_kernel_udp64_rx": ratio(raw, "udp64", "rx_pps", "podnet", "kernel"),
        "podnet_vs_tapfwd_tcp1": ratio(raw, "tcp1", "gbps", "podnet", "tapfwd"),
        "podnet_vs_tapfwd_tcp4": ratio(raw, "tcp4", "gbps", "podnet", "tapfwd"),
        "podnet_vs_tapfwd_udp64_rx": ratio(raw, "udp64", "rx_pps", "podnet", "tapfwd"),
        "podnet_vs_tapfwd_udp64_forwarded": ratio(raw, "udp64", "forwarded_pps", "podnet", "tapfwd"),
    }
    doc = {"bench": "pods", "seconds": args.seconds, "rounds": args.rounds, "mtu": MTU, "machine": machine(),
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "labels": {n: p.label for n, p in paths.items()},
           "summary": summarize(raw, METRICS), "ratios": ratios, "agent": agent, "raw": raw}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "pods.json").write_text(json.dumps(doc, indent=2) + "\n")
    plot(doc)
    print_summary(doc)


def print_summary(doc):
    for kind, per_path in doc["summary"].items():
        for p, m in per_path.items():
            print(f"{kind:6s} {p:8s} " + "  ".join(f"{k} {v['median']:,.2f} ({v['min']:,.2f}-{v['max']:,.2f})"
                                                   for k, v in m.items() if v))
    for k, v in doc.get("ratios", {}).items():
        if v:
            print(f"{k:36s} {v['median']:.2f} ({v['min']:.2f}-{v['max']:.2f})")


def plot(doc, path=RESULTS / "pods.png", title="pod to pod (iperf3)"):
    """TCP 1/4 streams and UDP 64-byte frames/s per path: medians with
    min-max bars over the rounds (also used by e2e_overlay.py)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    s = doc["summary"]
    names = list(s["tcp1"])

    def bars(ax, xs, vals, w=0.38, **kw):
        med = [v["median"] for v in vals]
        err = [[m - v["min"] for m, v in zip(med, vals)], [v["max"] - m for m, v in zip(med, vals)]]
        b = ax.bar(xs, med, w, yerr=err, capsize=3, **kw)
        ax.bar_label(b, fmt="%.1f", fontsize=7)

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    for i, key in enumerate(("tcp1", "tcp4")):
        bars(ax1, [x + (i - 0.5) * 0.38 for x in range(len(names))], [s[key][n]["gbps"] for n in names],
             label=f"TCP, {key[3:]} stream{'s' if key == 'tcp4' else ''}")
    ax1.set_xticks(range(len(names)), names)
    ax1.set_ylabel(f"Gbit/s (median, min-max of {doc['rounds']})")
    ax1.legend(fontsize=7)
    ax1.set_title(title)
    vals = [{k: v / 1e3 for k, v in s["udp64"][n]["rx_pps"].items() if k != "values"} for n in names]
    bars(ax2, list(range(len(names))), vals, w=0.6, color="#888")
    ax2.set_xticks(range(len(names)), names)
    ax2.set_ylabel("k frames/s received")
    ax2.set_title("UDP, 64-byte payloads")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
