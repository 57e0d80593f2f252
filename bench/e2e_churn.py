"""Pod churn under traffic (issue 14), needs root: a 2-node podnet cluster
with pod a on node n1 and pod b on node n2, one iperf3 TCP stream a -> b
across the overlay, and two kinds of window measured in interleaved rounds
(bench/rounds.py, the order rotated each round):

  idle    the stream alone for --seconds
  churn   the stream while this process adds --pods pods (spread over both
          nodes, labels app=churn, which the Service `churn` selects, so
          every add and delete changes its endpoints on both agents) through
          cluster.pod_add, checks the Service has them all as backends, and
          deletes them again through cluster.pod_delete; the window is that
          whole pass

The stream's rate in a window is what b's end of the TCP connection received
in it (ss's bytes_received: payload, no headers) over the window's length; a
fresh iperf3 client per window, given a second to leave slow start before
the window opens. Pods per second is adds + deletes over the pass's time,
with each call's latency (median and p99 of the pass) and the part of it
spent waiting on the agents (RequestTimer). Around each window the
machine's busy CPU time is read (bench/cpustat.py): cores_busy.

The CLI pays Python start-up on every call, which the in-process figures do
not: after the rounds, --cli-calls `podnet pod add` and `podnet pod delete`
runs are timed as a figure of their own.

Targets (issue 14): >= 50 pod adds + deletes per second, and the stream
during churn within 10 % of idle (churn / idle >= 0.9, the ratio taken
within each round). Writes bench/results/churn.json and churn.png, or --out
FILE (and FILE's .png); --quick is a smoke run (10 pods, 1 round of 2 s, 2
CLI calls) that writes bench/build/churn-quick.json unless --out says where.

    python bench/e2e_churn.py [--pods 200] [--rounds 3] [--seconds 10] [--cli-calls 5] [--cpus 0-1]
                              [--quick] [--out FILE]
"""
import argparse
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from cpustat import CpuSample, parse_cpus, pin  # noqa: E402
from podnet_cluster import PodnetCluster  # noqa: E402
from rounds import fill_defaults, interleave, ratio, spread, summarize, wait_listening  # noqa: E402

RESULTS = HERE / "results"
CLUSTER = "pnbchurn"
SPEC = f"""cluster: {{name: {CLUSTER}, podCIDR: 10.212.0.0/16, serviceCIDR: 10.72.0.0/16,
          fabricCIDR: 172.30.212.0/24}}
nodes: [{{name: n1}}, {{name: n2}}]
pods:
  - {{name: a, node: n1, labels: {{app: client}}}}
  - {{name: b, node: n2, labels: {{app: server}}}}
services:
  - {{name: churn, selector: {{app: churn}}, ports: [{{port: 80, targetPort: 8080}}]}}
"""
SERVICE = "default/churn"
LABELS = {"app": "churn"}
NODES = ("n1", "n2")
PORT = 5302
WARMUP_S = 1.0
# each node's /24 holds 253 pods (spec.MAX_PODS_PER_NODE), one of them a or b
MAX_PODS = 2 * 252
CASES = ("idle", "churn")
METRICS = ["gbps", "window_s", "cores_busy", "ops_per_s", "adds_per_s", "deletes_per_s",
           "add_ms_median", "add_ms_p99", "delete_ms_median", "delete_ms_p99", "endpoints_max",
           "agent_ms_per_add", "agent_requests_per_add", "agent_ms_per_delete", "agent_requests_per_delete"]
TARGET_OPS_PER_S = 50
TARGET_STREAM_RATIO = 0.9


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def p99(values):
    """The nearest-rank 99th percentile (with fewer than 100 values, the largest)."""
    v = sorted(values)
    return v[max(0, math.ceil(0.99 * len(v)) - 1)] if v else None


def latency(seconds):
    """Median and p99 in ms of a list of durations in seconds."""
    return {"median_ms": statistics.median(seconds) * 1e3 if seconds else None,
            "p99_ms": p99(seconds) * 1e3 if seconds else None, "n": len(seconds)}


# ---- the stream ---------------------------------------------------------------

def received_bytes(ns, port):
    """Payload bytes received so far by the established TCP connections on
    port in namespace ns (ss -i's bytes_received; iperf3's control
    connection adds a few hundred bytes, its data connection the rest)."""
    r = subprocess.run(["ip", "netns", "exec", ns, "ss", "-Htin", "state", "established", f"( sport = :{port} )"],
                       capture_output=True, text=True, timeout=10, check=True)
    return bytes_received(r.stdout)


def bytes_received(ss_text):
    """The sum of every bytes_received:N in `ss -i` output."""
    return sum(int(m) for m in re.findall(r"\bbytes_received:(\d+)", ss_text))


class Stream:
    """One iperf3 TCP stream a -> b for a window: a one-shot server in b, a
    client in a with a time budget (it ends by itself if the window runs
    long), stopped with SIGINT when the window is over."""

    def __init__(self, client_ns, server_ns, server_ip, budget_s):
        self.server_ns = server_ns
        self.server = subprocess.Popen(["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1", "-p", str(PORT)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.client = None
        try:
            wait_listening(server_ns, PORT)
            self.client = subprocess.Popen(["ip", "netns", "exec", client_ns, "iperf3", "-c", server_ip,
                                            "-p", str(PORT), "-t", str(int(math.ceil(budget_s)))],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            time.sleep(WARMUP_S)
            if self.client.poll() is not None:
                raise RuntimeError(f"iperf3 client ended at once: {self.client.stderr.read().strip()}")
        except BaseException:
            self.stop()
            raise

    def mark(self):
        return time.monotonic(), received_bytes(self.server_ns, PORT)

    def running(self):
        return self.client.poll() is None

    def stop(self):
        for p in (self.client, self.server):
            if p is None:
                continue
            if p.poll() is None:
                p.send_signal(signal.SIGINT)       # iperf3 tells its peer and exits
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=10)
        if self.client and self.client.stderr:
            self.client.stderr.close()


# ---- churn ----------------------------------------------------------------------

class RequestTimer:
    """While active, cluster.request (every agent request the cluster module
    makes: pod_add, pod_remove, services_apply to each node) is timed: the
    seconds of each, by op. Where a pod add's time goes: the agents, or the
    cluster's own work (lock, state file, IPAM, namespace)."""

    def __init__(self, cluster):
        self.cluster, self.by_op = cluster, {}

    def __enter__(self):
        real = self.real = self.cluster.request

        def timed(path, op, *a, **kw):
            t = time.perf_counter()
            try:
                return real(path, op, *a, **kw)
            finally:
                self.by_op.setdefault(op, []).append(time.perf_counter() - t)
        self.cluster.request = timed
        return self

    def __exit__(self, *exc):
        self.cluster.request = self.real
        return False

    def seconds(self):
        return sum(sum(v) for v in self.by_op.values())

    def count(self):
        return sum(len(v) for v in self.by_op.values())


def backends(cluster):
    return sum(len(e["backends"]) for e in cluster.services() if e["service"] == SERVICE)


def churn_pass(cluster, names):
    """Add every pod of names (alternating nodes), check the Service has them
    all, delete them; each call timed. If an add fails part way, what was
    added is deleted before the error goes on."""
    added, add_s, del_s = [], [], []
    try:
        t0 = time.monotonic()
        with RequestTimer(cluster) as adds:
            for i, name in enumerate(names):
                t = time.perf_counter()
                cluster.pod_add(name, NODES[i % 2], LABELS)
                add_s.append(time.perf_counter() - t)
                added.append(name)
        t_added = time.monotonic()
        peak = backends(cluster)
        if peak != len(names):
            raise RuntimeError(f"Service {SERVICE} has {peak} backends after {len(names)} pods were added")
        t1 = time.monotonic()
        with RequestTimer(cluster) as dels:
            while added:
                t = time.perf_counter()
                cluster.pod_delete(added[-1])
                del_s.append(time.perf_counter() - t)
                added.pop()
        t_end = time.monotonic()
    finally:
        for name in added:                           # a failed pass leaves no pod behind
            try:
                cluster.pod_delete(name)
            except cluster.ClusterError:
                pass
    left = backends(cluster)
    if left:
        raise RuntimeError(f"Service {SERVICE} still has {left} backends after every churn pod was deleted")
    busy = (t_added - t0) + (t_end - t1)
    return {"ops_per_s": 2 * len(names) / busy, "adds_per_s": len(names) / (t_added - t0),
            "deletes_per_s": len(names) / (t_end - t1), "add_ms_median": latency(add_s)["median_ms"],
            "add_ms_p99": latency(add_s)["p99_ms"], "delete_ms_median": latency(del_s)["median_ms"],
            "delete_ms_p99": latency(del_s)["p99_ms"], "endpoints_max": peak,
            "agent_ms_per_add": adds.seconds() * 1e3 / len(names), "agent_requests_per_add": adds.count() / len(names),
            "agent_ms_per_delete": dels.seconds() * 1e3 / len(names),
            "agent_requests_per_delete": dels.count() / len(names)}


class Bench:
    def __init__(self, pc, pods, seconds):
        from dataplane import cluster
        self.cluster = cluster
        self.pc, self.seconds = pc, seconds
        self.names = [f"ch{i}" for i in range(pods)]
        self.a, self.b, self.b_ip = pc.pod_ns("a"), pc.pod_ns("b"), pc.state.pods["b"].ip
        # a pass that takes longer than this is far below the target anyway
        self.churn_budget = 120 + 2.0 * pods

    def measure(self, case, _kind):
        budget = WARMUP_S + (self.seconds if case == "idle" else self.churn_budget) + 10
        stream = Stream(self.a, self.b, self.b_ip, budget)
        try:
            with CpuSample() as cpu:
                t0, n0 = stream.mark()
                out = churn_pass(self.cluster, self.names) if case == "churn" else {}
                if case == "idle":
                    time.sleep(self.seconds)
                t1, n1 = stream.mark()
            if not stream.running():
                raise RuntimeError(f"the iperf3 stream ended inside the {case} window (budget {budget:.0f} s)")
        finally:
            stream.stop()
        out.update(gbps=(n1 - n0) * 8 / (t1 - t0) / 1e9, window_s=t1 - t0, bytes=n1 - n0,
                   cores_busy=cpu.busy_s / cpu.wall_s)
        log(f"  {case}: {out['gbps']:.2f} Gbit/s over {out['window_s']:.1f} s"
            + (f", {out['ops_per_s']:.1f} pod adds+deletes/s" if case == "churn" else ""))
        return out


def podnet_exe():
    """The `podnet` console script of the interpreter running this (the venv's)."""
    exe = Path(sys.executable).with_name("podnet")
    return str(exe) if exe.exists() else shutil.which("podnet")


def cli_calls(calls):
    """Wall time of `podnet pod add` and `podnet pod delete` as a user runs
    them (a new Python each), alternating nodes; the cluster is the one in
    PODNET_RUN_DIR (set by PodnetCluster)."""
    exe = podnet_exe()
    if not exe:
        raise RuntimeError("no podnet command found beside this Python or on PATH (pip install -e .)")
    add_s, del_s = [], []
    for i in range(calls):
        name = f"cli{i}"
        for cmd, into in ((["pod", "add", name, "--node", NODES[i % 2], "--label", "app=churn"], add_s),
                          (["pod", "delete", name], del_s)):
            t = time.perf_counter()
            r = subprocess.run([exe, *cmd], capture_output=True, text=True, timeout=60, env=os.environ)
            into.append(time.perf_counter() - t)
            if r.returncode != 0:
                raise RuntimeError(f"podnet {' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
    return {"calls": calls, "add_ms": spread([s * 1e3 for s in add_s]), "delete_ms": spread([s * 1e3 for s in del_s]),
            "command": f"{exe} pod add|delete"}


# ---- report -------------------------------------------------------------------------

def targets(summary, ratios):
    ops, r = summary["stream"]["churn"]["ops_per_s"], ratios.get("churn_vs_idle_gbps")
    return {"ops_per_s_at_least_50": bool(ops) and all(v >= TARGET_OPS_PER_S for v in ops["values"]),
            "stream_within_10_percent": bool(r) and all(v >= TARGET_STREAM_RATIO for v in r["values"])}


def plot(doc, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    s = doc["summary"]["stream"]

    def bar(ax, xs, vals, color=None, fmt="%.2f"):
        med = [v["median"] for v in vals]
        err = [[m - v["min"] for m, v in zip(med, vals)], [v["max"] - m for m, v in zip(med, vals)]]
        b = ax.bar(xs, med, 0.6, yerr=err, capsize=3, color=color)
        ax.bar_label(b, fmt=fmt, fontsize=7)

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(7, 3.6))
    bar(ax1, [0, 1], [s["idle"]["gbps"], s["churn"]["gbps"]])
    ax1.set_xticks([0, 1], ["idle", f"during churn\n({doc['pods']} pods added + deleted)"], fontsize=7)
    ax1.set_ylabel(f"Gbit/s, one TCP stream n1 -> n2 (median, min-max of {doc['rounds']})", fontsize=7)
    ax1.set_title("the stream", fontsize=9)
    cli = doc.get("cli") or {}
    vals = [s["churn"]["ops_per_s"]]
    labels = ["in process\n(cluster.pod_add/delete)"]
    if cli.get("add_ms") and cli.get("delete_ms"):
        # calls per second one after another through the CLI: 2 / (add + delete)
        per = {k: 2e3 / (cli["add_ms"][k] + cli["delete_ms"][k]) for k in ("median", "min", "max")}
        vals.append({"median": per["median"], "min": per["max"], "max": per["min"]})
        labels.append("podnet pod add/delete\n(a process each)")
    bar(ax2, list(range(len(vals))), vals, color="#888", fmt="%.1f")
    ax2.axhline(TARGET_OPS_PER_S, color="grey", ls="--", lw=0.8, label=f"target: {TARGET_OPS_PER_S}/s")
    ax2.set_xticks(range(len(vals)), labels, fontsize=7)
    ax2.set_ylabel("pod adds + deletes per second", fontsize=7)
    ax2.set_title("churn rate", fontsize=9)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_summary(doc):
    s = doc["summary"]["stream"]
    for case in CASES:
        print(f"{case:6s} " + "  ".join(f"{k} {v['median']:,.2f} ({v['min']:,.2f}-{v['max']:,.2f})"
                                        for k, v in s[case].items() if v))
    for k, v in doc["ratios"].items():
        if v:
            print(f"{k:24s} {v['median']:.3f} ({v['min']:.3f}-{v['max']:.3f})")
    cli = doc.get("cli")
    if cli:
        print(f"cli: pod add {cli['add_ms']['median']:.0f} ms ({cli['add_ms']['min']:.0f}-{cli['add_ms']['max']:.0f}), "
              f"pod delete {cli['delete_ms']['median']:.0f} ms ({cli['delete_ms']['min']:.0f}-"
              f"{cli['delete_ms']['max']:.0f}) over {cli['calls']} calls")
    print("targets: " + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in doc["target"].items()))


def pod_count(text):
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--pods takes a number, got {text!r}") from None
    if not 2 <= n <= MAX_PODS:
        raise argparse.ArgumentTypeError(f"--pods must be 2..{MAX_PODS} (each node holds 252 besides a or b), "
                                         f"got {n}")
    return n


def positive(kind):
    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return v
    return parse


def cpu_list(text):
    try:
        return parse_cpus(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="pod churn under a TCP stream (needs root)")
    ap.add_argument("--pods", type=pod_count, default=None, help="pods added and deleted per churn pass (200)")
    ap.add_argument("--rounds", type=positive(int), default=None, help="interleaved rounds (3)")
    ap.add_argument("--seconds", type=positive(float), default=None, help="length of an idle window (10)")
    ap.add_argument("--cli-calls", type=int, default=None, help="podnet pod add + delete calls timed (5; 0: none)")
    ap.add_argument("--cpus", type=cpu_list, default=None, help="CPU list this run and all it starts run on")
    ap.add_argument("--quick", action="store_true", help="smoke run: 10 pods, 1 round of 2 s, 2 CLI calls")
    ap.add_argument("--out", help="write the JSON here (and the plot beside it)")
    args = ap.parse_args(argv)
    fill_defaults(args, {"pods": 10, "rounds": 1, "seconds": 2.0, "cli_calls": 2},
                  {"pods": 200, "rounds": 3, "seconds": 10.0, "cli_calls": 5},
                  HERE / "build" / "churn-quick.json", RESULTS / "churn.json")
    if args.cli_calls < 0:
        ap.error("--cli-calls must be 0 or more")
    return args


def main(argv=None):
    args = parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces, TAP devices)")
    if not shutil.which("iperf3"):
        sys.exit("iperf3 not found (apt-get install iperf3)")
    cpus = pin(args.cpus)
    from machine import machine
    doc = {"bench": "churn", "machine": machine(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "pods": args.pods, "rounds": args.rounds, "seconds": args.seconds, "cpus": cpus, "quick": args.quick,
           "warmup_s": WARMUP_S, "nodes": list(NODES), "service": SERVICE,
           "labels": {"idle": "one TCP stream n1 -> n2, nothing else",
                      "churn": f"the stream while {args.pods} pods are added and deleted in this process"}}
    with PodnetCluster(SPEC) as pc:
        b = Bench(pc, args.pods, args.seconds)
        raw = interleave(list(CASES), ("stream",), args.rounds, b.measure, log=log)
        doc["cli"] = cli_calls(args.cli_calls) if args.cli_calls else None
    doc["summary"] = summarize(raw, {"stream": METRICS})
    doc["ratios"] = {"churn_vs_idle_gbps": ratio(raw, "stream", "gbps", "churn", "idle")}
    doc["target"] = targets(doc["summary"], doc["ratios"])
    doc["raw"] = raw
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    plot(doc, out.with_suffix(".png"))
    print_summary(doc)
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return doc


if __name__ == "__main__":
    main()
