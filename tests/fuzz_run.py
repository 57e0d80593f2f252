"""The fuzzing harness: random scenarios (a node configuration, then bursts
of generated frames and control steps) checked by fuzz_oracle.Twin.

A burst goes through load/run_burst, process(), the traced copy of the loop
(trace, sometimes forked first) or, when the configuration runs on real
time, the C I/O loop over socketpairs. Control steps between bursts: the
clock moves, sweeps (conntrack GC, FDB aging), a backend declared dead, the
FDB flushed, live changes (fuzz_node.CHANGES: services, routes, ports,
guards), and a snapshot of the node restored into a fresh one (whole: it
must then behave the same on the next burst; or cut / bit-flipped: it must
be refused or skipped with a message, and the node still serve).

    python tests/fuzz_run.py [--examples N] [--seed S]

Runs in whatever Python finds first as `fastpath`: tests/test_fuzz.py and
`make fuzz` start it under AddressSanitizer (tests/fuzz_asan.py).
PODNET_FUZZ_EXAMPLES sets the number of scenarios (default 200); without
--seed the run is derandomized (the same scenarios every time, as CI wants),
with one it explores anew and keeps failures in build/hypothesis."""
import argparse
import os
import sys
import time
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase

from fuzz_frames import Frame, configs, frames
import tempfile

from fuzz_node import CHANGES, PODS, REMOTE_PODS
from fuzz_oracle import Twin

ROOT = Path(__file__).resolve().parent.parent
STATS = {"scenarios": 0, "frames": 0}
REACHED = __import__("collections").Counter()      # what the scenarios exercised (printed at the end)
# Each scenario is written here before it runs: after an ASan abort (no
# shrinking then), this is the input that did it.
LAST = Path(os.environ.get("PODNET_FUZZ_LAST", ROOT / "build" / "fuzz-last-scenario.txt"))

# by kind first, so that every kind of live change comes up early, derandomized too
changes = st.sampled_from(sorted({c[0] for c in CHANGES}, key=lambda k: [c[0] for c in CHANGES].index(k))).flatmap(
    lambda kind: st.sampled_from([c for c in CHANGES if c[0] == kind]))
control_ops = st.one_of(
    st.tuples(st.just("advance"), st.sampled_from([0.5, 1.5, 31.0, 130.0, 400.0, 4000.0])),
    st.tuples(st.just("gc")), st.tuples(st.just("age")), st.tuples(st.just("flush")),
    st.tuples(st.just("dead"), st.sampled_from([PODS[1][0], REMOTE_PODS[0], PODS[0][0]])),
    st.tuples(st.just("change"), changes),
    st.tuples(st.just("change"), changes),
)
corruptions = st.sampled_from([None, None, "cut", "flip"]).flatmap(
    lambda k: st.just(None) if k is None else st.tuples(st.just(k), st.floats(0.0, 0.999), st.integers(0, 7)))


@st.composite
def scenarios(draw):
    cfg = draw(configs)
    steps = []
    for _ in range(draw(st.integers(1, 6))):
        if draw(st.integers(0, 4)) == 0:
            op = draw(control_ops)
            if cfg.io and op[0] == "advance":
                op = ("gc",)                   # the I/O loop runs on real time
            steps.append(("control", op))
            continue
        if draw(st.integers(0, 11)) == 0:      # a snapshot restored before this burst
            steps.append(("control", ("restore", draw(corruptions))))
        mode = draw(st.sampled_from(["run", "run", "process", "trace", "trace", "trace-fork"]
                                    + ["io", "io", "io"] * cfg.io))
        n = draw(st.integers(1, cfg.nslots))
        fs = [draw(frames(cfg, vnet=mode != "process")) for _ in range(n)]
        if mode == "process":
            port = fs[0].port if fs[0].port < 256 else 0
            fs = [Frame(port, f.data, None, f.label) for f in fs]
        start = draw(st.integers(0, cfg.nslots - n))
        last = cfg.nslots - 1          # the last slot: ASan sees past the end of the slot memory there
        slots = [draw(st.sampled_from([last, 0, draw(st.integers(0, last))])) for _ in fs]
        steps.append(("burst", fs, mode, start, slots))
    return cfg, steps


def run_scenario(scenario):
    cfg, steps = scenario
    LAST.write_text(repr(scenario) + "\n")
    with tempfile.TemporaryDirectory(prefix="podnet-fuzz-") as tmp:
        t = Twin(cfg, tmp)
        try:
            for step in steps:
                if step[0] == "control":
                    t.control(step[1])
                else:
                    t.burst(*step[1:])
        finally:
            t.close()
    STATS["scenarios"] += 1
    STATS["frames"] += t.frames
    REACHED.update(t.reached)


def fuzz_settings(examples, seed):
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=seed is None,
        database=DirectoryBasedExampleDatabase(str(ROOT / "build" / "hypothesis")) if seed is not None else None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
        print_blob=True,
    )


def fuzz(examples, seed=None):
    """Run the harness; raises on the first (shrunk) failing scenario."""
    test = settings(fuzz_settings(examples, seed))(given(scenarios())(run_scenario))
    if seed is not None:
        test = __import__("hypothesis").seed(seed)(test)
    test()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=int(os.environ.get("PODNET_FUZZ_EXAMPLES", "200")))
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args(argv)
    import fastpath.burst
    print(f"fuzzing {fastpath.burst.__file__}: {args.examples} scenarios, "
          f"{'seed ' + str(args.seed) if args.seed is not None else 'derandomized'}", flush=True)
    t0 = time.monotonic()
    fuzz(args.examples, args.seed)
    print("reached: " + ", ".join(f"{k} {v}" for k, v in sorted(REACHED.items())), flush=True)
    print(f"fuzz: {STATS['scenarios']} scenarios, {STATS['frames']} frames checked in "
          f"{time.monotonic() - t0:.1f} s, no failure", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
