"""The fast path built with AddressSanitizer, and the fuzzing harness run on it.

    python tests/fuzz_asan.py [fuzz_run.py options]     # build (incremental), then fuzz

The extensions go to build/asan (objects in build/asan-tmp), beside a copy of
the Python packages, so the in-place .so files are untouched; a rebuild
compiles only what changed. The harness runs in a child process with
libasan preloaded (Python itself is not instrumented) and build/asan first
on its path."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "asan"
TESTS = ROOT / "tests"


def build(sanitize="address", out=BUILD):
    """Build (or bring up to date) the extensions with a sanitizer (setup.py's
    PODNET_SANITIZE) into out, beside a copy of the packages; returns out."""
    env = dict(os.environ, PODNET_SANITIZE=sanitize)
    cmd = [sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(out),
           "build_ext", "--build-lib", str(out), "--build-temp", f"{out}-tmp", "-j", "2"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{sanitize} sanitizer build failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return out


def runtime(lib="libasan.so", package="libasan8"):
    """The sanitizer's runtime library, to preload into a child Python."""
    path = subprocess.run(["gcc", f"-print-file-name={lib}"], capture_output=True, text=True,
                          check=True).stdout.strip()
    if not os.path.isabs(path) or not os.path.exists(path):
        raise RuntimeError(f"gcc has no {lib} (Debian: apt-get install {package})")
    return os.path.realpath(path)


def libasan():
    return runtime()


def env():
    """Environment for a child Python that loads the ASan build."""
    e = dict(os.environ)
    e["LD_PRELOAD"] = libasan()
    # Python leaks by design at exit; abort on the first error so it cannot be missed.
    e["ASAN_OPTIONS"] = "detect_leaks=0:abort_on_error=1:halt_on_error=1:symbolize=1"
    e["PYTHONPATH"] = os.pathsep.join([str(BUILD), str(TESTS)] + ([e["PYTHONPATH"]] if e.get("PYTHONPATH") else []))
    e.pop("PYTHONSAFEPATH", None)
    return e


def run(args, timeout=None, capture=True):
    """tests/fuzz_run.py under ASan (cwd build/asan, so its fastpath comes first)."""
    return subprocess.run([sys.executable, str(TESTS / "fuzz_run.py"), *args], cwd=BUILD, env=env(),
                          capture_output=capture, text=True, timeout=timeout)


def python(code, timeout=120):
    """Run a Python snippet under ASan; returns the CompletedProcess."""
    return subprocess.run([sys.executable, "-c", code], cwd=BUILD, env=env(), capture_output=True,
                          text=True, timeout=timeout)


if __name__ == "__main__":
    build()
    sys.exit(run(sys.argv[1:], capture=False).returncode)
