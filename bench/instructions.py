"""Instructions per packet for each fast-path stage, counted by valgrind's
callgrind (collection on only inside Dataplane.bench_stage, less the same
loop with the fast path left out, i.e. the header restore). Unlike packets/s on a
shared VM, whose speed drifts by 2x over minutes, the count is the same
run to run: the figure to watch for regressions. Writes
bench/results/instructions.json (or --out FILE).

--baseline FILE: an earlier instructions.json to compare with; each stage
both files count gets its growth (now / before) in the output, and with
--max-growth (issue 15: 1.05) the run exits 1 when a stage grew more. The
tunnel stages of every backend are counted (vxlan, ipip and direct, encap
and decap); --stage NAME (repeatable) counts only those (written to
bench/build/ unless --out says where).

    python bench/instructions.py [--stage ipip_encap ...] [--baseline OLD.json [--max-growth 1.05]] [--out FILE]
"""
import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ITERS = 100

# Each stage as bench/stages.py measures it (bench/stagework.py): frames loaded
# in the slots; the restore between bursts copies each frame back in whole.
SETUP = {
    "bridge": "dp, frames, py, snap = sw.stage('bridge')\n",
    **{f"{t}_{side}": f"dp, frames, py, snap = sw.stage('{t}_{side}')\n"
       for t in ("vxlan", "ipip", "direct") for side in ("encap", "decap")},
    "dnat_established": "dp, frames, py, snap = sw.stage('dnat_established', 1000)\n"
                        "sw.load(dp, frames)\ndp.bench_stage(256, 1, snap)\n",
    # every frame a new flow: the source port changes each burst (sport_off)
    "dnat_new_flows": "dp, frames, py, snap = sw.stage('dnat_new_flows', 1000)\nsport_off = 34\n",
}


def _instructions(stage, tmp, run):
    prog = Path(tmp) / f"{stage}-{run}.py"
    prog.write_text(f"import sys; sys.path.insert(0, {str(HERE)!r})\nimport stagework as sw\n"
                    f"sport_off = 0\n" + SETUP[stage] + "sw.load(dp, frames)\n"
                    + f"dp.bench_stage(256, {ITERS}, snap, run={run}, sport_off=sport_off)\n")
    out = Path(tmp) / f"{stage}-{run}.cg"
    subprocess.run(["valgrind", "--tool=callgrind", "--toggle-collect=*bench_stage*", f"--callgrind-out-file={out}",
                    sys.executable, str(prog)], capture_output=True, timeout=600, check=True)
    return int(re.search(r"^summary:\s+(\d+)", out.read_text(), re.M).group(1))


def count(stage, tmp):
    return (_instructions(stage, tmp, True) - _instructions(stage, tmp, False)) / (ITERS * 256)


def growth(res, before):
    """now / before for every stage both count."""
    return {k: round(v / before[k], 4) for k, v in res.items() if before.get(k)}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--stage", action="append", choices=list(SETUP), help="only these stages (repeatable)")
    ap.add_argument("--baseline", help="an earlier instructions.json: report each stage's growth against it")
    ap.add_argument("--max-growth", type=float, default=None,
                    help="with --baseline: exit 1 if a stage grew more than this factor (e.g. 1.05)")
    ap.add_argument("--out", default=None,
                    help="default bench/results/instructions.json; with --stage bench/build/instructions-stages.json "
                         "(docs/benchmarks.md's table reads the whole set)")
    args = ap.parse_args(argv)
    if args.out is None:
        args.out = str(HERE / "build" / "instructions-stages.json" if args.stage
                       else HERE / "results" / "instructions.json")
    if not shutil.which("valgrind"):
        sys.exit("valgrind not installed (apt-get install valgrind)")
    # read before counting: --baseline may be the file --out overwrites
    before = json.loads(Path(args.baseline).read_text())["results"] if args.baseline else None
    tmp = tempfile.mkdtemp(prefix="pncg-")
    try:
        res = {stage: round(count(stage, tmp), 1) for stage in (args.stage or SETUP)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    doc = {"bench": "instructions_per_packet", "tool": "valgrind callgrind, inside Dataplane.run",
           "burst": 256, "results": res}
    if before is not None:
        doc["baseline"] = {k: before[k] for k in res if k in before}
        doc["growth"] = growth(res, before)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps({k: doc[k] for k in ("results", "growth") if k in doc}, indent=2))
    if args.max_growth is not None and before is not None:
        over = {k: g for k, g in doc["growth"].items() if g > args.max_growth}
        if over:
            print(f"grew more than {args.max_growth}x: {over}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
