"""Fast-path stages against their per-packet Python (dpkt) versions, packets/s
on one core, repeated: the figures docs/benchmarks.md's fast-path table quotes.

Each round is a fresh process (this VM's speed drifts up to 2x between
minutes, and some stages have run at different speeds in different processes
of the same binary), and inside a round every stage alternates its fast-path
and Python measurements three times, so each ratio is taken within a round
between measurements seconds apart. Both versions do the same work on the
same frames (bench/stagework.py; `check()` compares their outputs byte for
byte before anything is timed):

  fast     Dataplane.bench_stage: each burst's 256 frames are copied into the
           slots (the 60-byte frame whole, as a TAP read writes it), then the
           burst loop runs and leaves each frame in its port's TX queue
  net      the same less the copy-in, timed alone in the same round: the
           stage's own cost
  python   the stage written per packet with dpkt and dicts, from the frames'
           bytes to a list of (port, output bytes)

The tunnels are measured each way for every backend (vxlan, ipip, direct:
{tunnel}_encap, {tunnel}_decap). Writes bench/results/stages.json (every
round's figures and, per stage, the median and min-max over rounds) and
stages.png. --stage KEY (repeatable) measures only those cases; --quick is a
smoke run (one round, a few bursts per measurement, one alternation: the
code works, the figures mean nothing) written to bench/build/stages-quick.json
unless --out says otherwise.

    python bench/stages.py [--rounds 5] [--stage ipip_encap ...] [--quick] [--out FILE]
"""
import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
RESULTS = HERE / "results"
SERVICE_COUNTS = (10, 1000, 10000, 100000)
ALTERNATIONS = 3
TUNNEL_STAGES = tuple(f"{t}_{side}" for t in ("vxlan", "ipip", "direct") for side in ("encap", "decap"))
QUICK = {"iters": 5, "new_flow_iters": 2, "python_bursts": 1, "alternations": 1, "warmups": 1}
FULL = {"iters": None, "new_flow_iters": 200, "python_bursts": 8, "alternations": ALTERNATIONS, "warmups": 3}


def cases(only=None):
    """(key, stage name, services, burst) in the order a round measures them;
    only: the keys to keep (None: all)."""
    out = [("bridge", "bridge", None, 256), ("bridge_burst32", "bridge", None, 32),
           ("bridge_burst1", "bridge", None, 1)]
    out += [(t, t, None, 256) for t in TUNNEL_STAGES]
    out += [(f"dnat_established_{n}", "dnat_established", n, 256) for n in SERVICE_COUNTS]
    out += [(f"dnat_new_flows_{n}", "dnat_new_flows", n, 256) for n in SERVICE_COUNTS]
    if only:
        unknown = set(only) - {c[0] for c in out}
        if unknown:
            raise ValueError(f"no such stage: {', '.join(sorted(unknown))} (have: {', '.join(c[0] for c in out)})")
        out = [c for c in out if c[0] in only]
    return out


def one_case(name, nservices, burst, how=FULL):
    """One stage in this process: fast, net and python packets/s, each the
    median of how["alternations"] measurements taken in turn."""
    import stagework as sw
    dp, frames, py, snap = sw.stage(name, nservices)
    new_flows = name == "dnat_new_flows"
    sport_off = 34 if new_flows else 0
    frames = frames[:burst]
    sw.load(dp, frames)
    if new_flows:
        iters = how["new_flow_iters"]                                 # new flows: 51,200 distinct per call
    else:
        iters = how["iters"] or max(50, 100000 // burst)
    if name == "dnat_established":
        dp.bench_stage(burst, 1, snap)                                # the flows exist from now on
        py.process(frames)
    fast, restore, slow = [], [], []

    def fast_once():
        if new_flows:
            dp.conntrack.clear()
        return dp.bench_stage(burst, iters, snap, sport_off=sport_off)

    def python_once(bursts=how["python_bursts"]):
        t = time.perf_counter()
        for _ in range(bursts):
            if new_flows:
                py.conns.clear()                                      # every frame a new flow again
            py.process(frames)
        return (time.perf_counter() - t) / (bursts * len(frames))

    for _ in range(how["warmups"]):
        fast_once()                                                   # warm caches and tables
    python_once(min(2, how["python_bursts"]))
    for _ in range(how["alternations"]):
        fast.append(fast_once() / (iters * burst))
        restore.append(dp.bench_stage(burst, iters, snap, run=False, sport_off=sport_off) / (iters * burst))
        slow.append(python_once())
    c = dp.counters()
    drops = {k: v for k, v in c["drops"].items() if v}
    if drops:
        raise RuntimeError(f"{name}: the fast path dropped frames while measured: {drops}")
    f, r, s = statistics.median(fast), statistics.median(restore), statistics.median(slow)
    return {"fast_mpps": 1e-6 / f, "net_mpps": 1e-6 / (f - r) if f > r else None,
            "python_mpps": 1e-6 / s, "ratio_vs_python": s / f,
            "fast_ns_per_packet": f * 1e9, "restore_ns_per_packet": r * 1e9, "python_ns_per_packet": s * 1e9}


def child(only=None, quick=False):
    import stagework as sw
    checked = {}
    for key, name, n, burst in cases(only):
        if (name, n) not in checked:
            checked[(name, n)] = sw.check(name, n)                    # same outputs, or no figures at all
    how = QUICK if quick else FULL
    out = {key: one_case(name, n, burst, how) for key, name, n, burst in cases(only)}
    print(json.dumps(out))


def spread(values):
    values = [v for v in values if v is not None]
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "values": values} if values else None


def summarize(rounds):
    summary = {}
    keys = [k for k, *_ in cases() if all(k in r for r in rounds)]
    for key in keys:
        summary[key] = {m: spread([r[key][m] for r in rounds])
                        for m in ("fast_mpps", "net_mpps", "python_mpps", "ratio_vs_python")}
    # Service-count scaling: per round, the cost per packet at N services over the cost at 10.
    scaling = {}
    for kind in ("dnat_established", "dnat_new_flows"):
        for n in SERVICE_COUNTS[1:]:
            if f"{kind}_{n}" not in keys or f"{kind}_10" not in keys:
                continue
            scaling[f"{kind}_{n}_vs_10"] = spread([r[f"{kind}_{n}"]["fast_ns_per_packet"]
                                                   / r[f"{kind}_10"]["fast_ns_per_packet"] for r in rounds])
    return summary, scaling


def plot(doc, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    s = doc["summary"]
    keys = [k for k in ("bridge", *TUNNEL_STAGES, "dnat_established_10", "dnat_established_100000",
                        "dnat_new_flows_10", "dnat_new_flows_100000") if k in s]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(4 + 1.1 * len(keys), 3.8), gridspec_kw={"width_ratios": [3, 2]})
    x = range(len(keys))
    for off, metric, color, label in ((-0.2, "fast_mpps", "#3b7dd8", "fast path (copy-in + stage)"),
                                      (0.2, "net_mpps", "#9cc0ee", "stage alone (net of copy-in)")):
        med = [s[k][metric]["median"] for k in keys]
        err = [[m - s[k][metric]["min"] for k, m in zip(keys, med)], [s[k][metric]["max"] - m for k, m in zip(keys, med)]]
        bars = ax1.bar([i + off for i in x], med, 0.4, yerr=err, capsize=2, color=color, label=label)
        ax1.bar_label(bars, fmt="%.1f", fontsize=6)
    names = [k.replace("dnat_", "").replace("_", "\n").replace("100000", "100k") for k in keys]
    ax1.set_xticks(list(x), names, fontsize=7)
    ax1.set_ylabel("Mpps, one core (median, min-max)")
    ax1.set_title(f"fast path, burst 256, {doc['rounds']} rounds")
    ax1.legend(fontsize=7)
    med = [s[k]["ratio_vs_python"]["median"] for k in keys]
    err = [[m - s[k]["ratio_vs_python"]["min"] for k, m in zip(keys, med)],
           [s[k]["ratio_vs_python"]["max"] - m for k, m in zip(keys, med)]]
    bars = ax2.bar(list(x), med, yerr=err, capsize=2, color="#666")
    ax2.bar_label(bars, fmt="%.0fx", fontsize=6)
    ax2.set_xticks(list(x), names, fontsize=7)
    ax2.set_ylabel("x the dpkt version, same round")
    ax2.set_title("same work, per-packet Python (dpkt)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=None, help="fresh processes (default 5; --quick 1)")
    ap.add_argument("--stage", action="append", metavar="KEY",
                    help="only this case (repeatable): " + ", ".join(c[0] for c in cases()))
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: a few bursts per measurement, one alternation, one round")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help="default bench/results/stages.json (--quick: bench/build/)")
    args = ap.parse_args()
    try:
        cases(args.stage)
    except ValueError as e:
        ap.error(str(e))
    if args.child:
        return child(args.stage, args.quick)
    if args.rounds is None:
        args.rounds = 1 if args.quick else 5
    if args.out is None:
        args.out = str(HERE / "build" / "stages-quick.json" if args.quick else RESULTS / "stages.json")
    from machine import machine
    rounds = []
    sub = [a for k in (args.stage or []) for a in ("--stage", k)] + (["--quick"] if args.quick else [])
    for k in range(args.rounds):
        print(f"round {k + 1}/{args.rounds} (a fresh process) ...", file=sys.stderr, flush=True)
        r = subprocess.run([sys.executable, __file__, "--child", *sub], capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            sys.exit(f"round {k + 1} failed:\n{r.stderr}")
        rounds.append(json.loads(r.stdout.strip().splitlines()[-1]))
    summary, scaling = summarize(rounds)
    doc = {"bench": "stages", "machine": machine(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "rounds": args.rounds, "alternations_per_round": (QUICK if args.quick else FULL)["alternations"],
           "frame_bytes": 60, **({"quick": True} if args.quick else {}),
           "summary": summary, "scaling": scaling, "per_round": rounds}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    plot(doc, out.with_suffix(".png"))
    for key, m in summary.items():
        f, r = m["fast_mpps"], m["ratio_vs_python"]
        print(f"{key:26s} fast {f['median']:6.2f} Mpps ({f['min']:.2f}-{f['max']:.2f})  "
              f"x python {r['median']:5.0f} ({r['min']:.0f}-{r['max']:.0f})")
    for key, v in scaling.items():
        print(f"{key:32s} cost ratio {v['median']:.2f} ({v['min']:.2f}-{v['max']:.2f})")


if __name__ == "__main__":
    main()
