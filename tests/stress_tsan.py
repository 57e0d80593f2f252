"""The fast path built with ThreadSanitizer, and the workers' stress test
(tests/stress_run.py) run on it.

    python tests/stress_tsan.py [stress_run.py options]   # build (incremental), then run

As tests/fuzz_asan.py does for AddressSanitizer: extensions in build/tsan
beside a copy of the Python packages, a child Python with libtsan preloaded
(Python itself is not instrumented; TSan still sees its locks, the GIL
among them, through the pthread interceptors) and build/tsan first on its
path. The child runs with address-space randomisation off (setarch -R):
TSan's fixed shadow layout does not fit the mmap randomisation of this
kernel ("unexpected memory mapping" otherwise)."""
import os
import subprocess
import sys
from pathlib import Path

import fuzz_asan

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "tsan"
TESTS = ROOT / "tests"
# halt on the first report, with a status no Python error uses
OPTIONS = "halt_on_error=1:exitcode=66:report_signal_unsafe=0:second_deadlock_stack=1"


def build():
    return fuzz_asan.build("thread", BUILD)


def libtsan():
    return fuzz_asan.runtime("libtsan.so", "libtsan2")


def env():
    e = dict(os.environ)
    e["LD_PRELOAD"] = libtsan()
    e["TSAN_OPTIONS"] = OPTIONS
    e["PYTHONPATH"] = os.pathsep.join([str(BUILD), str(TESTS)] + ([e["PYTHONPATH"]] if e.get("PYTHONPATH") else []))
    e.pop("PYTHONSAFEPATH", None)
    return e


def command(argv):
    return ["setarch", os.uname().machine, "-R", sys.executable, *argv]


def run(args, timeout=None, capture=True):
    return subprocess.run(command([str(TESTS / "stress_run.py"), *args]), cwd=BUILD, env=env(),
                          capture_output=capture, text=True, timeout=timeout)


def python(code, timeout=120):
    return subprocess.run(command(["-c", code]), cwd=BUILD, env=env(), capture_output=True, text=True,
                          timeout=timeout)


if __name__ == "__main__":
    build()
    sys.exit(run(sys.argv[1:], capture=False).returncode)
