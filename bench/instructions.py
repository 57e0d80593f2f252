"""Instructions per packet for each fast-path stage, counted by valgrind's
callgrind (collection on only inside Dataplane.bench_stage, less the same
loop with the fast path left out, i.e. the header restore). Unlike packets/s on a
shared VM, whose speed drifts by 2x over minutes, the count is the same
run to run: the figure to watch for regressions. Writes
bench/results/instructions.json.

    python bench/instructions.py
"""
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
    "vxlan_encap": "dp, frames, py, snap = sw.stage('vxlan_encap')\n",
    "vxlan_decap": "dp, frames, py, snap = sw.stage('vxlan_decap')\n",
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


def main():
    if not shutil.which("valgrind"):
        sys.exit("valgrind not installed (apt-get install valgrind)")
    tmp = tempfile.mkdtemp(prefix="pncg-")
    try:
        res = {stage: round(count(stage, tmp), 1) for stage in SETUP}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    doc = {"bench": "instructions_per_packet", "tool": "valgrind callgrind, inside Dataplane.run",
           "burst": 256, "results": res}
    (HERE / "results" / "instructions.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
