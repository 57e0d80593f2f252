"""pytest-benchmark runs of the fast-path stages (`pytest bench`): the same
set-ups, frames and per-packet Python versions as bench/stages.py, from
bench/stagework.py. These are a quick regression view in pytest-benchmark's
table; docs/benchmarks.md's figures come from bench/stages.py, which repeats each
stage in fresh processes and records the spread."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
