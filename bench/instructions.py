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

SETUP = {
    "bridge": "from conftest import *\n"
              "dp = Dataplane(nslots=BURST, slot_size=2048)\n"
              "[dp.add_port(p) for p in range(NPORTS)]\n"
              "[dp.load(i, f, p) for i, (f, p) in enumerate(bridge_frames())]\n"
              "dp.run_burst(0, BURST)\nsnap = 0\n",
    "vxlan_encap": "from test_vxlan_bench import *\ndp = node()\n"
                   "[dp.load(i, inner(60, '10.244.0.2', '10.244.1.2', POD_MAC, GW_MAC, i), 0) for i in range(BURST)]\n"
                   "snap = 64\n",
    "vxlan_decap": "from test_vxlan_bench import *\ndp = node()\n"
                   "def frame(i):\n"
                   "    body = inner(60, '10.244.1.2', '10.244.0.2', REMOTE_GW, GW_MAC, i)\n"
                   "    return bytes(Ether(src=PEER[1], dst=NODE[1]) / IP(src=PEER[0], dst=NODE[0]) "
                   "/ UDP(sport=50000 + i, dport=4789) / VXLAN(vni=1) / body)\n"
                   "[dp.load(i, frame(i), 255) for i in range(BURST)]\nsnap = 128\n",
    "dnat_established": "from test_services_bench import *\ndp = build(1000)\n"
                             "dp.bench_stage(BURST, 1, 64)\nsnap = 64\n",
    # every frame a new flow: the source port changes each burst (sport_off)
    "dnat_new_flows": "from test_services_bench import *\ndp = build(1000)\nsnap = 64\nsport_off = 34\n",
}


def _instructions(stage, tmp, run):
    prog = Path(tmp) / f"{stage}-{run}.py"
    prog.write_text(f"import sys; sys.path.insert(0, {str(HERE)!r})\nsport_off = 0\n" + SETUP[stage]
                    + f"dp.bench_stage(256, {ITERS}, snap or 64, run={run}, sport_off=sport_off)\n")
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
