"""Turns pytest-benchmark's raw JSON into bench/results/<stage>.json (packets/s,
ratios against the baseline measured in the same run, the machine) and a PNG."""
import json
import os
import platform
import sys
from pathlib import Path

HERE = Path(__file__).parent
RESULTS = HERE / "results"


def machine():
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import Cython
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "cython": Cython.__version__,
            "machine": platform.machine()}


def main(raw=RESULTS / "raw-pytest-benchmark.json"):
    data = json.loads(Path(raw).read_text())
    stages = {}
    for b in data["benchmarks"]:
        info = b["extra_info"]
        if "stage" not in info:
            continue
        st = b["stats"]
        # pedantic(): stats are per call; a call runs `iters` bursts (default 1).
        per_call = info.get("inner_median_s", st["median"])     # a loop's own timing when set-up is excluded
        frames = info["burst"] * info.get("iters", 1)
        row = {
            "impl": info["impl"], "burst": info["burst"], "frame_bytes": info.get("frame_bytes"),
            "ns_per_call": per_call * 1e9 / info.get("iters", 1), "ns_per_packet": per_call * 1e9 / frames,
            "mpps": frames / per_call / 1e6, "mpps_best": frames / info.get("inner_min_s", st["min"]) / 1e6,
            "rounds": st["rounds"],
        }
        if "services" in info:
            row["services"] = info["services"]
        if "restore_s" in info:      # header restore between bursts, timed alone in the same run
            row["mpps_net_of_restore"] = frames / (per_call - info["restore_s"]) / 1e6
        stages.setdefault(info["stage"], []).append(row)
    plot_stages(stages)
    for stage, rows in stages.items():
        base = [r for r in rows if r["impl"] != "fastpath"]
        for r in rows:
            if base:
                r["ratio_vs_" + base[0]["impl"]] = r["mpps"] / base[0]["mpps"]
        out = {"stage": stage, "machine": machine(), "date": data.get("datetime"), "results": rows}
        (RESULTS / f"{stage}.json").write_text(json.dumps(out, indent=2) + "\n")
        plot(stage, rows)
        print(f"\n{stage} ({out['machine']['cpu']}, one core):")
        for r in rows:
            ratio = "".join(f"  {k[6:]}: {v:,.0f}x" for k, v in r.items() if k.startswith("ratio_vs_"))
            net = f", {r['mpps_net_of_restore']:.2f} net of restore" if "mpps_net_of_restore" in r else ""
            svc = f" {r['services']:6d} svc" if "services" in r else ""
            print(f"  {r['impl']:9s} burst {r['burst']:4d} {r['frame_bytes']:5d} B{svc}: {r['mpps']:8.2f} Mpps "
                  f"({r['ns_per_call']:9.1f} ns/burst{net}){ratio}")


def plot_stages(stages):
    """One chart: each fast-path stage's packets/s (burst 256, small frames;
    DNAT at the largest service count), median and best round."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    names, med, best = [], [], []
    for stage, rows in stages.items():
        rows = [r for r in rows if r["impl"] == "fastpath" and r["burst"] == 256]
        if not rows:
            continue
        r = max(rows, key=lambda r: r.get("services", 0)) if "services" in rows[0] else \
            min(rows, key=lambda r: r["frame_bytes"] or 0)
        names.append(stage.replace("_", "\n") + (f"\n{r['services']} svc" if "services" in r else ""))
        med.append(r["mpps"])
        best.append(r["mpps_best"])
    if not names:
        return
    fig, ax = plt.subplots(figsize=(8, 3.6))
    x = range(len(names))
    b1 = ax.bar([i - 0.2 for i in x], med, 0.4, label="median round", color="#3b7dd8")
    b2 = ax.bar([i + 0.2 for i in x], best, 0.4, label="best round", color="#9cc0ee")
    ax.bar_label(b1, fmt="%.1f", fontsize=7)
    ax.bar_label(b2, fmt="%.1f", fontsize=7)
    ax.set_xticks(list(x), names, fontsize=8)
    ax.set_ylabel("Mpps, one core")
    ax.set_title("fast path per stage, burst 256 (frames and tables in cache)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "stages.png", dpi=110)
    plt.close(fig)


def plot(stage, rows):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot", file=sys.stderr)
        return
    labels = [f"{r['services']} services" if "services" in r else f"{r['impl']}\nburst {r['burst']}\n{r['frame_bytes']} B"
              for r in rows]
    vals = [r["mpps"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    bars = ax.bar(labels, vals, color=["#3b7dd8" if r["impl"] == "fastpath" else "#999" for r in rows])
    ax.set_yscale("log")
    ax.set_ylabel("Mpps (log)")
    ax.set_title(f"{stage}: packets/s on one core")
    for b, v in zip(bars, vals):
        ax.annotate(f"{v:.2f}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{stage}.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main(*sys.argv[1:])
