"""Interleaved rounds for the end-to-end benchmarks. This VM's speed drifts up
to 2x between minutes, so paths measured one after another compare the
machine's phases as much as the paths. Here every path is up at once and a
round measures each kind of traffic on every path back to back (the order
rotated each round); a ratio is taken pair by pair within a round, and each
figure is reported as the median and min-max over the rounds."""
import contextlib
import statistics
import subprocess
import sys
import time


def spread(values):
    """{"median", "min", "max", "values"} of a list of numbers (None skipped)."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}


def interleave(paths, kinds, rounds, measure, log=None):
    """measure(path_name, kind) -> dict of figures, for every kind, round and
    path; returns {kind: {path: [figures of round 0, 1, ...]}}."""
    out = {k: {p: [] for p in paths} for k in kinds}
    for r in range(rounds):
        for kind in kinds:
            order = paths[r % len(paths):] + paths[:r % len(paths)]
            for p in order:
                if log:
                    log(f"round {r + 1}/{rounds}: {kind} on {p} ...")
                out[kind][p].append(measure(p, kind))
    return out


@contextlib.contextmanager
def all_up(paths):
    """Every path of a comparison ({name: context manager}) up at once; the
    ones that came up are taken down again, last first, whatever happens."""
    with contextlib.ExitStack() as stack:
        for p in paths.values():
            stack.enter_context(p)
        yield paths


def measure_paths(paths, kinds, rounds, measure):
    """interleave() over {name: path}, measure(path, kind), progress on stderr."""
    return interleave(list(paths), kinds, rounds, lambda name, kind: measure(paths[name], kind),
                      log=lambda m: print(m, file=sys.stderr, flush=True))


def summarize(raw, metrics):
    """{kind: {path: {metric: spread}}} for the metrics (kind -> [metric names])."""
    return {kind: {p: {m: spread([v.get(m) for v in vals]) for m in metrics[kind]}
                   for p, vals in per_path.items()}
            for kind, per_path in raw.items()}


def ratio(raw, kind, metric, num, den):
    """num / den per round, for one kind and metric: the spread of the ratios."""
    a, b = raw[kind][num], raw[kind][den]
    return spread([x[metric] / y[metric] for x, y in zip(a, b) if x.get(metric) and y.get(metric)])


def wait_listening(ns, port, proto="tcp", timeout=10.0):
    """Until something in namespace ns listens on port (ss), within timeout."""
    flag = "-Hltn" if proto == "tcp" else "-Hlun"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = subprocess.run(["ip", "netns", "exec", ns, "ss", flag, f"sport = :{port}"],
                           capture_output=True, text=True, timeout=10)
        if r.stdout.strip():
            return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {proto} port {port} in {ns} after {timeout} s")


def fill_defaults(args, quick, full, out_quick, out_full):
    """Options left unset take the smoke run's values with --quick, else
    the full run's; --out defaults to out_quick or out_full likewise."""
    for k, v in (quick if args.quick else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.out is None:
        args.out = str(out_quick if args.quick else out_full)
    return args
