"""End-to-end pod-to-pod throughput on one node, every path in the same run:

  kernel     veth pods on a Linux bridge (the bridge in its own namespace)
  tapfwd     two TAP pods joined by the minimal C forwarder (bench/tapfwd.c),
             vnet headers passed through, one frame per read/write
  podnet-wN  two pods of a podnet node (agent + Cython fast path, vnet
             headers) forwarding on N worker threads, one path per count in
             --workers, each its own cluster (own name, pod and fabric CIDRs)

iperf3 TCP with 1 and 4 streams, UDP with 64-byte payloads (receiver's
frames/s, and what the forwarder itself moved). All paths are up at once and
measured in interleaved rounds (bench/rounds.py): each figure is the median
and min-max over the rounds, each ratio taken within a round.

CPU per GB: around each iperf3 client run the machine's busy CPU time is read
from /proc/stat (user, nice, system, irq, softirq, steal of every CPU: all
processes and the kernel's softirqs; bench/cpustat.py). cpu_s_per_gb is those
CPU seconds per 10^9 bytes the receiver got: iperf3's end.sum_received.bytes
for TCP; for UDP the packets received (sent minus lost) times the 64 payload
bytes, so headers are not counted and UDP's figure is large by construction.
cores_busy is the CPU seconds per wall second of the same run. On a 2-core
machine iperf3 and the kernel's TAP and veth work take most of both cores
whatever the path, so a second worker has no free core to run on there: the
w2/w1 ratios show what it costs, not what it would gain on a bigger machine.

--cpus pins this process, and so every process it starts (agents, iperf3,
the forwarder), to a CPU list before anything starts; with --workers and
--cpus the same command runs unchanged on 16 cores. Writes
bench/results/pods.json and pods.png, or --out FILE (and FILE's .png) instead.
Needs root.

    python bench/e2e_pods.py [--seconds 5] [--rounds 3] [--workers 1,2] [--cpus 0-1] [--out FILE]
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from cpustat import CpuSample, parse_cpus, pin
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


# ---- the paths ----------------------------------------------------

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
    from tap.device import open_tap
    netns.enter("pnbench-c-node")
    taps = []
    for pod, ip, mac in (("a", A_IP, "0a:58:0a:fb:00:02"), ("b", B_IP, "0a:58:0a:fb:00:03")):
        # placed as podnet's agent places a pod's TAP (made in the pod, noqueue):
        # the baseline's pods differ from podnet's only in who forwards
        t, _ = open_tap(f"pnbench-c-{pod}", "eth0", mac=mac, ip=ip, prefixlen=24, mtu=MTU)
        os.set_blocking(t.fileno(), True)
        taps.append(t)
    print("ready", flush=True)
    fds = [t.fileno() for t in taps]
    os.execv(exe, [exe, str(fds[0]), str(fds[1]), str(65536 + 512 + 12), budget])


class Podnet(PodnetCluster):
    """One podnet node with two pods, its agent forwarding on `workers`
    threads; a cluster of its own per worker count so all coexist."""

    def __init__(self, workers=1):
        if not 1 <= workers <= 16:
            raise ValueError(f"workers must be 1..16, got {workers}")
        self.name = f"podnet-w{workers}"
        self.label = f"podnet agent (Cython fast path), {workers} worker{'s' if workers > 1 else ''}"
        # a /22 of pods and a /24 of fabric per worker count: distinct
        # whatever counts run together
        super().__init__(f"cluster: {{name: pnbench-w{workers}, podCIDR: 10.252.{4 * workers}.0/22, "
                         f"fabricCIDR: 172.29.{workers}.0/24}}\n"
                         "nodes: [{name: n1}]\n"
                         "pods: [{name: a, node: n1}, {name: b, node: n1}]\n", workers=workers)

    def pods(self):
        return self.pod_ns("a"), self.pod_ns("b"), self.state.pods["b"].ip

    def counters(self):
        return self.request("n1", "counters")

    def forwarded(self):
        return sum(p["tx_packets"] for p in self.counters()["ports"].values())

    def cpu(self):
        """The agent's (user, system) CPU seconds so far, from /proc (the
        process's stat line sums all its threads, the workers included)."""
        f = Path(f"/proc/{self.state.nodes['n1'].pid}/stat").read_text().rsplit(")", 1)[1].split()
        hz = os.sysconf("SC_CLK_TCK")
        return int(f[11]) / hz, int(f[12]) / hz


# ---- iperf3 -------------------------------------------------------------

def iperf(client_ns, server_ns, server_ip, seconds, streams=1, udp=False, port=5299):
    """One iperf3 run; its figures plus the machine's CPU time around the
    client run (CpuSample.figures: bytes, busy_s, wall_s, cpu_s_per_gb,
    cores_busy). Bytes are the receiver's: TCP's end.sum_received.bytes, UDP's
    packets received x the 64-byte payload."""
    srv = subprocess.Popen(ns_exec(server_ns, "iperf3", "-s", "-1", "-p", str(port)),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(server_ns, port)
        cmd = ["iperf3", "-c", server_ip, "-p", str(port), "-t", str(seconds), "-J", "-P", str(streams)]
        if udp:
            cmd += ["-u", "-b", "0", "-l", str(UDP_PAYLOAD)]
        with CpuSample() as cpu:
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
                    "lost_percent": s.get("lost_percent"), **cpu.figures(got * UDP_PAYLOAD)}
        return {"gbps": end["sum_received"]["bits_per_second"] / 1e9,
                "retransmits": end["sum_sent"].get("retransmits"), **cpu.figures(end["sum_received"]["bytes"])}
    finally:
        srv.wait(timeout=seconds + 30) if srv.poll() is None else None


UDP_PAYLOAD = 64
KINDS = ("tcp1", "tcp4", "udp64")
CPU = ["cpu_s_per_gb", "cores_busy"]
METRICS = {"tcp1": ["gbps", *CPU, "agent_user_share"], "tcp4": ["gbps", *CPU, "agent_user_share"],
           "udp64": ["rx_pps", "forwarded_pps", *CPU, "agent_user_share"]}
# the figure each kind is compared by
THROUGHPUT = {"tcp1": ("gbps", "tcp1"), "tcp4": ("gbps", "tcp4"), "udp64": ("rx_pps", "udp64_rx")}


def parse_workers(text):
    """'1,2' -> [1, 2] (each 1..16, no repeats)."""
    try:
        ws = [int(w) for w in str(text).split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--workers takes counts like 1,2, got {text!r}") from None
    if not ws or len(set(ws)) != len(ws) or not all(1 <= w <= 16 for w in ws):
        raise argparse.ArgumentTypeError(f"--workers takes distinct counts from 1 to 16, got {text!r}")
    return ws


def cpu_list(text):
    try:
        return parse_cpus(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def ratio_key(name):
    return name.replace("-", "_")


def e2e_ratios(raw, names):
    """Within-round ratios of every podnet-wN path: throughput against the
    kernel and the C forwarder (when they ran), its CPU per GB against the
    kernel's, and each worker count against the first one (w2 / w1)."""
    out = {}
    podnets = [n for n in names if n.startswith("podnet-")]
    for p in podnets:
        pk = ratio_key(p)
        for base in ("kernel", "tapfwd"):
            if base not in names:
                continue
            for kind, (metric, suffix) in THROUGHPUT.items():
                out[f"{pk}_vs_{base}_{suffix}"] = ratio(raw, kind, metric, p, base)
            if base == "tapfwd":
                out[f"{pk}_vs_tapfwd_udp64_forwarded"] = ratio(raw, "udp64", "forwarded_pps", p, "tapfwd")
        if "kernel" in names:
            for kind in KINDS:
                out[f"{pk}_cpu_per_gb_vs_kernel_{kind}"] = ratio(raw, kind, "cpu_s_per_gb", p, "kernel")
    for p in podnets[1:]:
        pk, fk = ratio_key(p), ratio_key(podnets[0])
        for kind, (metric, suffix) in THROUGHPUT.items():
            out[f"{pk}_vs_{fk}_{suffix}"] = ratio(raw, kind, metric, p, podnets[0])
        for kind in KINDS:
            out[f"{pk}_cpu_per_gb_vs_{fk}_{kind}"] = ratio(raw, kind, "cpu_s_per_gb", p, podnets[0])
    return out


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


def agent_info(path):
    """What the agent says about itself at the end: its worker count (checked
    against the one asked for), burst sizes and drops."""
    st, c = path.request("n1", "status"), path.counters()
    if st["workers"] != path.workers:
        raise RuntimeError(f"{path.name}: the agent runs {st['workers']} workers, asked for {path.workers}")
    return {"workers": st["workers"], "frames_per_burst": c["io"]["frames_per_burst"],
            "drops": {k: v for k, v in c["drops"].items() if v}}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=parse_workers, default=[1, 2],
                    help="worker counts, one podnet path each (default 1,2)")
    ap.add_argument("--cpus", type=cpu_list, default=None,
                    help="CPU list this run and all it starts are pinned to, e.g. 0-1 (default: all)")
    ap.add_argument("--out", help="write the JSON here (and the plot beside it) instead of bench/results")
    ap.add_argument("--tapfwd-child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.tapfwd_child:
        return tapfwd_child(*args.tapfwd_child)
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces, TAP devices)")
    cpus = pin(args.cpus)                 # before any child: they all inherit it
    from machine import machine
    npaths = 2 + len(args.workers)
    budget = args.rounds * len(KINDS) * npaths * (args.seconds + 10) + 300
    paths = {p.name: p for p in (Kernel(), TapFwd(budget), *(Podnet(w) for w in args.workers))}
    with all_up(paths):
        raw = measure_paths(paths, KINDS, args.rounds, lambda p, kind: measure_kind(p, kind, args.seconds))
        agent = {n: agent_info(p) for n, p in paths.items() if isinstance(p, Podnet)}
    doc = {"bench": "pods", "seconds": args.seconds, "rounds": args.rounds, "mtu": MTU,
           "workers": args.workers, "cpus": cpus, "udp_payload": UDP_PAYLOAD, "machine": machine(),
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "labels": {n: p.label for n, p in paths.items()},
           "summary": summarize(raw, METRICS), "ratios": e2e_ratios(raw, list(paths)), "agent": agent, "raw": raw}
    out = Path(args.out) if args.out else RESULTS / "pods.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    plot(doc, out.with_suffix(".png"))
    print_summary(doc)
    return doc


def print_summary(doc):
    for kind, per_path in doc["summary"].items():
        for p, m in per_path.items():
            print(f"{kind:6s} {p:10s} " + "  ".join(f"{k} {v['median']:,.2f} ({v['min']:,.2f}-{v['max']:,.2f})"
                                                   for k, v in m.items() if v))
    for k, v in doc.get("ratios", {}).items():
        if v:
            print(f"{k:44s} {v['median']:.2f} ({v['min']:.2f}-{v['max']:.2f})")


def plot(doc, path=RESULTS / "pods.png", title="pod to pod (iperf3)"):
    """TCP 1/4 streams, UDP 64-byte frames/s and, when the file has it, TCP's
    CPU seconds per GB, one bar group per path: medians with min-max bars
    over the rounds (also used by e2e_overlay.py)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    s = doc["summary"]
    names = list(s["tcp1"])
    has_cpu = all(s[k][n].get("cpu_s_per_gb") for k in ("tcp1", "tcp4") for n in names)

    def bars(ax, xs, vals, w=0.38, fmt="%.1f", **kw):
        med = [v["median"] for v in vals]
        err = [[m - v["min"] for m, v in zip(med, vals)], [v["max"] - m for m, v in zip(med, vals)]]
        b = ax.bar(xs, med, w, yerr=err, capsize=3, **kw)
        ax.bar_label(b, fmt=fmt, fontsize=6)

    def tcp_pairs(ax, metric, fmt="%.1f"):
        for i, key in enumerate(("tcp1", "tcp4")):
            bars(ax, [x + (i - 0.5) * 0.38 for x in range(len(names))], [s[key][n][metric] for n in names],
                 fmt=fmt, label=f"TCP, {key[3:]} stream{'s' if key == 'tcp4' else ''}")
        ax.set_xticks(range(len(names)), names, fontsize=7, rotation=20)
        ax.legend(fontsize=7)

    panels = 3 if has_cpu else 2
    fig, axes = plt.subplots(1, panels, figsize=(2.5 + 0.9 * len(names) * panels, 3.8))
    ax1, ax2 = axes[0], axes[1]
    tcp_pairs(ax1, "gbps")
    ax1.set_ylabel(f"Gbit/s (median, min-max of {doc['rounds']})")
    ax1.set_title(title, fontsize=9)
    vals = [{k: v / 1e3 for k, v in s["udp64"][n]["rx_pps"].items() if k != "values"} for n in names]
    bars(ax2, list(range(len(names))), vals, w=0.6, color="#888")
    ax2.set_xticks(range(len(names)), names, fontsize=7, rotation=20)
    ax2.set_ylabel("k frames/s received")
    ax2.set_title("UDP, 64-byte payloads", fontsize=9)
    if has_cpu:
        tcp_pairs(axes[2], "cpu_s_per_gb", fmt="%.2f")
        axes[2].set_ylabel("CPU-s per GB received (all processes)")
        axes[2].set_title("CPU per GB, TCP (lower is better)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
