"""The fuzzing harness (tests/fuzz_*.py) on the fast path built with
AddressSanitizer: a CI-sized, derandomized run (PODNET_FUZZ_EXAMPLES
scenarios), after checking that the child process really runs the ASan build
with ASan active, and that the run reached every entry the harness claims:
every backend between nodes (vxlan, ipip, direct) with frames encapsulated
and decapsulated in each, guarded ports (forged frames dropped), the traced
copy of the loop (also forked), the I/O loop (with a capture), live changes
of each kind, snapshot restores (whole, and corrupt ones refused), and each
independent expectation.
`make fuzz` runs the long version."""
import os
from pathlib import Path

import pytest

import fuzz_asan

EXAMPLES = int(os.environ.get("PODNET_FUZZ_EXAMPLES", "250"))


@pytest.fixture(scope="module")
def asan_build():
    return fuzz_asan.build()          # incremental: seconds when nothing changed


def test_the_child_runs_the_asan_build_with_asan_active(asan_build):
    r = fuzz_asan.python(
        "import fastpath, fastpath.burst, fastpath.ioloop\n"
        "print(fastpath.__file__); print(fastpath.burst.__file__); print(fastpath.ioloop.__file__)\n"
        "print(any('libasan' in line for line in open('/proc/self/maps')))\n")
    assert r.returncode == 0, r.stderr
    pkg, burst, ioloop, mapped = r.stdout.split()
    for f in (pkg, burst, ioloop):
        assert Path(f).is_relative_to(asan_build), f
    assert mapped == "True"
    # instrumented code, not a plain build that happens to sit there
    assert b"__asan_report_load" in Path(burst).read_bytes()


def test_asan_catches_an_overflow_in_the_child(asan_build):
    """The harness would be worthless if ASan were loaded but silent."""
    r = fuzz_asan.python(
        "import ctypes\n"
        "libc = ctypes.CDLL(None)\n"
        "libc.malloc.restype = ctypes.c_void_p\n"
        "p = libc.malloc(8)\n"
        "ctypes.memmove(ctypes.create_string_buffer(16), p, 16)\n"
        "print('not caught')\n")
    assert r.returncode != 0 and "heap-buffer-overflow" in r.stderr, (r.returncode, r.stdout, r.stderr[-2000:])


def test_fuzz_under_asan(asan_build, tmp_path, monkeypatch):
    last = tmp_path / "last-scenario.txt"
    monkeypatch.setenv("PODNET_FUZZ_LAST", str(last))
    r = fuzz_asan.run(["--examples", str(EXAMPLES)], timeout=900)
    if r.returncode != 0 or "AddressSanitizer" in r.stderr:
        scenario = last.read_text()[:20000] if last.exists() else "(none)"
        pytest.fail(f"fuzzing failed (exit {r.returncode})\n--- stdout\n{r.stdout[-6000:]}\n--- stderr\n"
                    f"{r.stderr[-12000:]}\n--- last scenario\n{scenario}", pytrace=False)
    assert f"{EXAMPLES} scenarios" in r.stdout and "no failure" in r.stdout, r.stdout
    if EXAMPLES >= 250:
        [line] = [ln for ln in r.stdout.splitlines() if ln.startswith("reached: ")]
        reached = dict((k, int(v)) for k, v in (item.rsplit(" ", 1) for item in line[len("reached: "):].split(", ")))
        missing = [k for k in REACHED if not any(v for name, v in reached.items()
                                                 if name == k or (k.endswith(":") and name.startswith(k)))]
        assert not missing, f"the fuzz run never reached {missing}:\n{line}"


# What a CI-sized run must exercise (names as fuzz_oracle.Twin.reached counts them).
REACHED = ["guarded", "spoof-dropped", "traced", "trace-fork", "burst:io", "io-frames", "io-truncated", "captured",
           "change:svc", "change:svc_rm", "change:routes", "change:port_rm", "change:port_add", "change:guard",
           "restore", "restored-frames", "restore-corrupt-refused",
           "expect:", "arp-answered", "ttl-routed", "ttl-bridged", "answered:",   # "x:": any x:...
           # every backend between nodes, with frames carried each way
           "backend:vxlan", "backend:ipip", "backend:direct", "encap:vxlan", "encap:ipip", "encap:direct",
           "decap:vxlan", "decap:ipip", "decap:direct"]
