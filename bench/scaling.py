"""In-memory scaling: each fast-path stage on 1 worker and on N workers over
one set of shared tables (Dataplane.worker(), fastpath/sync.pxd), in one run.

Each worker is a thread running Dataplane.bench_stage on its own slots (the
GIL released for the whole loop, as a worker thread is), pinned to a CPU of
--cpus; all start together and the rate is the frames all of them moved over
the slowest one's time. Within a round, 1 worker and N workers alternate
(bench/rounds.py), so the ratio N/1 compares like with like on this VM whose
speed drifts. Target (issue 13): N=2 workers >= 1.8x one worker on every
stage. Writes bench/results/scaling.json and .png.

    python bench/scaling.py [--workers 2] [--cpus 0,1] [--rounds 3] [--iters 4000]

On this 2-CPU VM two workers share the machine with nothing else of the
benchmark but also with the VM's own housekeeping; on a bigger machine run
it with --workers 8 --cpus 0-7 unchanged.
"""
import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
import stagework as sw  # noqa: E402
from machine import machine  # noqa: E402
from rounds import spread  # noqa: E402

RESULTS = HERE / "results"
STAGES = [("bridge", None, 0), ("vxlan_encap", None, 0), ("vxlan_decap", None, 0),
          ("dnat_established", 1000, 0), ("dnat_new_flows", 1000, 34)]


def cpu_list(text):
    out = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b or a) + 1))
    return out


def with_sport(frame, delta):
    f = bytearray(frame)
    f[34:36] = (int.from_bytes(f[34:36], "big") + delta).to_bytes(2, "big")
    return bytes(f)


def run_workers(name, nservices, sport_off, nworkers, cpus, iters):
    """Mpps of nworkers workers side by side on one primary's tables."""
    dp, frames, _, snap = sw.stage(name, nservices)
    workers = [dp.worker() for _ in range(nworkers)]
    for k, w in enumerate(workers):
        # Each worker its own flows, as the kernel's flow hash places them on
        # TAP queues (a flow never on two workers): worker k's client ports
        # are the stage's moved up by k * 256 (UDP checksum 0: no fix-up).
        sw.load(w, [(with_sport(f, k * 256), p) for f, p in frames] if name == "dnat_established" else frames)
        if name == "dnat_established":
            w.bench_stage(256, 1, snap)            # the connections exist before timing
    start = threading.Barrier(nworkers)
    took = [0.0] * nworkers

    def go(k):
        os.sched_setaffinity(0, {cpus[k % len(cpus)]})      # this thread only
        start.wait()
        took[k] = workers[k].bench_stage(256, iters, snap, sport_off=sport_off, sport_base=k * 32000)
    ts = [threading.Thread(target=go, args=(k,)) for k in range(nworkers)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return nworkers * 256 * iters / max(took) / 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cpus", type=cpu_list, default=cpu_list(f"0-{(os.cpu_count() or 1) - 1}"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=4000)
    ap.add_argument("--out", type=Path, default=RESULTS / "scaling.json")
    a = ap.parse_args()
    raw = {name: {"1": [], str(a.workers): []} for name, _, _ in STAGES}
    for r in range(a.rounds):
        for name, ns, off in STAGES:
            order = (1, a.workers) if r % 2 == 0 else (a.workers, 1)
            for n in order:
                raw[name][str(n)].append(run_workers(name, ns, off, n, a.cpus, a.iters))
            print(f"round {r + 1} {name}: 1 worker {raw[name]['1'][-1]:.1f} Mpps, "
                  f"{a.workers} workers {raw[name][str(a.workers)][-1]:.1f} Mpps", flush=True)
    result = {"machine": machine(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "workers": a.workers, "cpus": a.cpus, "rounds": a.rounds,
              "iters": a.iters, "unit": "Mpps (all workers together)", "stages": {}}
    met = True
    for name, _, _ in STAGES:
        one, many = raw[name]["1"], raw[name][str(a.workers)]
        ratios = [m / o for m, o in zip(many, one)]
        result["stages"][name] = {"one_worker": spread(one), f"{a.workers}_workers": spread(many),
                                  "ratio": spread(ratios), "raw": raw[name]}
        met &= all(x >= 1.8 for x in ratios)
    result["target"] = {"what": f"{a.workers} workers >= 1.8x one worker on every stage, every round",
                        "met": met}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        names = [n for n, _, _ in STAGES]
        fig, ax = plt.subplots(figsize=(8, 4))
        xs = range(len(names))
        for off, key, label in ((-0.2, "one_worker", "1 worker"), (0.2, f"{a.workers}_workers", f"{a.workers} workers")):
            meds = [result["stages"][n][key]["median"] for n in names]
            lo = [m - result["stages"][n][key]["min"] for m, n in zip(meds, names)]
            hi = [result["stages"][n][key]["max"] - m for m, n in zip(meds, names)]
            ax.bar([x + off for x in xs], meds, 0.4, yerr=[lo, hi], label=label, capsize=3)
        ax.set_xticks(list(xs), names, rotation=15)
        ax.set_ylabel("Mpps, in memory")
        ax.set_title(f"fast-path stages, 1 vs {a.workers} workers on shared tables ({result['machine'].get('cores', '?')} CPUs)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(a.out.with_suffix(".png"), dpi=100)
    except ImportError:
        pass
    print(json.dumps({n: result["stages"][n]["ratio"] for n in result["stages"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
