"""The machine a benchmark ran on, recorded in every bench/results/*.json."""
import os
import platform


def machine():
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import Cython
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "cython": Cython.__version__,
            "machine": platform.machine()}
