"""Workers on shared tables (fastpath/sync.pxd): tests/stress_run.py, where
two workers forward while the control thread changes services, routes,
neighbours, guards and the FDB and conntrack fills, is evicted and is
flushed, every checked frame's output compared with a single-threaded twin's;
then the same run on the fast path built with ThreadSanitizer must report no
race, after showing that TSan is really loaded and does report one."""
import subprocess
import sys
from pathlib import Path

import pytest

import stress_tsan

TESTS = Path(__file__).resolve().parent
RACE = """
import threading
import stress_run as s
from fastpath import Dataplane
dp = Dataplane(nslots=64, slot_size=2048, clock=s.Clock())
s.configure(dp)
w = dp.worker()
plan, _ = s.streams(1, 300, 1)
def go():                      # two threads on ONE worker: its slots and counters race
    for port, f, kind in plan[0]:
        for frame in (f if kind == "pair" else (f,)):
            w.process([frame] * 20, port)
ts = [threading.Thread(target=go) for _ in range(2)]
[t.start() for t in ts]
[t.join() for t in ts]
"""


@pytest.fixture(scope="module")
def tsan_build():
    return stress_tsan.build()          # incremental: seconds when nothing changed


def test_workers_match_the_single_threaded_twin():
    r = subprocess.run([sys.executable, str(TESTS / "stress_run.py"), "--frames", "1500", "--rounds", "20"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.strip().endswith("ok")
    # the run did what it claims: conntrack filled past capacity, spoofs dropped, the lock taken
    assert "evictions 0," not in r.stdout and "spoof_ip 0," not in r.stdout, r.stdout


def test_the_child_runs_the_tsan_build_with_tsan_active(tsan_build):
    r = stress_tsan.python("import fastpath.burst, fastpath.ioloop\n"
                           "print(fastpath.burst.__file__); print(fastpath.ioloop.__file__)\n"
                           "print(any('libtsan' in line for line in open('/proc/self/maps')))\n")
    assert r.returncode == 0, r.stderr
    burst, ioloop, mapped = r.stdout.split()
    for f in (burst, ioloop):
        assert Path(f).is_relative_to(tsan_build), f
    assert mapped == "True"
    assert b"__tsan_read" in Path(burst).read_bytes()       # instrumented, not a plain build


def test_tsan_reports_a_real_race(tsan_build):
    """Worthless if TSan were loaded but silent: two threads on one worker's
    slots race, and it must say so (and halt with its exit status)."""
    r = stress_tsan.python(RACE, timeout=300)
    assert r.returncode == 66, (r.returncode, r.stderr[-2000:])
    assert "WARNING: ThreadSanitizer: data race" in r.stderr


def test_the_stress_test_under_tsan_reports_no_race(tsan_build):
    r = stress_tsan.run(["--frames", "600", "--rounds", "8"], timeout=600)
    assert "ThreadSanitizer" not in r.stderr, r.stderr[-4000:]
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert r.stdout.strip().endswith("ok")
