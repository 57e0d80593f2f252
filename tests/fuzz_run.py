"""The fuzzing harness: random scenarios (a node configuration, then bursts
of generated frames and control steps) checked by fuzz_oracle.Twin.

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
from fuzz_node import PODS, REMOTE_PODS
from fuzz_oracle import Twin

ROOT = Path(__file__).resolve().parent.parent
STATS = {"scenarios": 0, "frames": 0}
# Each scenario is written here before it runs: after an ASan abort (no
# shrinking then), this is the input that did it.
LAST = Path(os.environ.get("PODNET_FUZZ_LAST", ROOT / "build" / "fuzz-last-scenario.txt"))

control_ops = st.one_of(
    st.tuples(st.just("advance"), st.sampled_from([0.5, 1.5, 31.0, 130.0, 400.0, 4000.0])),
    st.tuples(st.just("gc")), st.tuples(st.just("age")), st.tuples(st.just("flush")),
    st.tuples(st.just("dead"), st.sampled_from([PODS[1][0], REMOTE_PODS[0], PODS[0][0]])),
)


@st.composite
def scenarios(draw):
    cfg = draw(configs)
    steps = []
    for _ in range(draw(st.integers(1, 6))):
        if draw(st.integers(0, 4)) == 0:
            steps.append(("control", draw(control_ops)))
            continue
        mode = draw(st.sampled_from(["run", "run", "process"]))
        n = draw(st.integers(1, cfg.nslots))
        fs = [draw(frames(cfg, vnet=mode == "run")) for _ in range(n)]
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
    t = Twin(cfg)
    for step in steps:
        if step[0] == "control":
            t.control(step[1])
        else:
            t.burst(*step[1:])
    STATS["scenarios"] += 1
    STATS["frames"] += t.frames


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
    print(f"fuzz: {STATS['scenarios']} scenarios, {STATS['frames']} frames checked in "
          f"{time.monotonic() - t0:.1f} s, no failure", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
