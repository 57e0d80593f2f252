"""The machine's CPU time around a measurement, and the core list a benchmark
runs on.

busy_seconds() reads the first ("cpu") line of /proc/stat: the jiffies every
CPU spent in user, nice, system, irq, softirq and steal (not idle or iowait;
guest time is already inside user), over SC_CLK_TCK. It counts every process
and the kernel's own work (softirqs, the TAP and veth receive paths) on every
CPU, which is what a path costs: on a pod network most of the cost is the
kernel's, charged to whichever task or softirq ran it. It also counts anything
else the machine does meanwhile, so run benchmarks on an otherwise idle machine.

parse_cpus("0-1,4") -> [0, 1, 4]; pin(cpus) binds this process, and so every
process it starts afterwards (agents, iperf3, forwarders), to those CPUs.
"""
import os
import time

# /proc/stat "cpu" fields: user nice system idle iowait irq softirq steal guest guest_nice
BUSY_FIELDS = (0, 1, 2, 5, 6, 7)


def busy_seconds(stat="/proc/stat"):
    with open(stat) as f:
        first = f.readline().split()
    if not first or first[0] != "cpu":
        raise RuntimeError(f"{stat} does not start with the aggregate cpu line: {first[:1]}")
    vals = [int(v) for v in first[1:]]
    return sum(vals[i] for i in BUSY_FIELDS if i < len(vals)) / os.sysconf("SC_CLK_TCK")


class CpuSample:
    """with CpuSample() as c: ...  then c.busy_s (CPU seconds of the whole
    machine) and c.wall_s (seconds) over the block."""

    def __enter__(self):
        self.busy0, self.t0 = busy_seconds(), time.monotonic()
        return self

    def __exit__(self, *exc):
        self.busy_s = busy_seconds() - self.busy0
        self.wall_s = time.monotonic() - self.t0
        return False

    def figures(self, nbytes):
        """cpu_s_per_gb (CPU seconds per 10^9 bytes moved; None if nothing
        moved) and cores_busy (CPU seconds per wall second)."""
        return {"bytes": nbytes, "busy_s": self.busy_s, "wall_s": self.wall_s,
                "cpu_s_per_gb": self.busy_s / (nbytes / 1e9) if nbytes > 0 else None,
                "cores_busy": self.busy_s / self.wall_s if self.wall_s > 0 else None}


def parse_cpus(text):
    """'0-1,4' -> [0, 1, 4]; ValueError naming the bad part, or CPUs this
    process may not run on."""
    allowed = os.sched_getaffinity(0)
    cpus = set()
    for part in str(text).split(","):
        part = part.strip()
        try:
            lo, _, hi = part.partition("-")
            lo, hi = int(lo), int(hi or lo)
        except ValueError:
            raise ValueError(f"bad CPU list {text!r}: {part!r} is not N or N-M") from None
        if lo < 0 or hi < lo:
            raise ValueError(f"bad CPU list {text!r}: {part!r} is not an ascending range")
        cpus.update(range(lo, hi + 1))
    missing = sorted(cpus - allowed)
    if missing:
        raise ValueError(f"CPUs {missing} are not available (this process may run on {sorted(allowed)})")
    return sorted(cpus)


def pin(cpus=None):
    """Bind this process (and what it starts from now on) to cpus, default
    every CPU it may use now; returns the list it runs on."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    return sorted(os.sched_getaffinity(0))
