"""Every performance figure in the README comes from a committed results file:
the benchmark tables are rendered from bench/results/*.json by bench/tables.py
and must match README.md's copy, and no figure with a performance unit
appears outside those tables."""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import tables  # noqa: E402

# A number with a unit of speed, rate, latency or a speed-up: what a
# benchmark measures. (Sizes such as "64 KB", "1450" or "16381" are not.)
FIGURE = re.compile(r"\d[\d.,]*\s*(Mpps|Gbit/s|µs|M/s|k frames/s|M new flows)|\b\d[\d.,]*×(?! \d)")


def test_readme_tables_match_the_results_files():
    have, want = tables.readme_blocks(tables.README.read_text()), tables.render()
    assert sorted(have) == sorted(want), "README.md must hold one bench block per table"
    for name in want:
        assert have[name] == want[name], f"README's bench:{name} differs: run `python bench/tables.py --write`"


def test_no_figure_outside_the_generated_tables():
    text = tables.README.read_text()
    outside = re.sub(r"<!-- bench:(\w+) -->.*?<!-- /bench:\1 -->", "", text, flags=re.S)
    found = [(n + 1, line.strip()) for n, line in enumerate(outside.splitlines()) if FIGURE.search(line)]
    assert not found, "figures in README.md not taken from bench/results:\n" + "\n".join(f"{n}: {l}" for n, l in found)


def test_the_check_can_fail(tmp_path, monkeypatch):
    """A changed figure in the README is caught."""
    text = tables.README.read_text()
    stages = tables.readme_blocks(text)["stages"]
    changed = re.sub(r"\d+\.\d", lambda m: str(float(m.group()) + 1), stages, count=1)
    fake = tmp_path / "README.md"
    fake.write_text(text.replace(stages, changed))
    monkeypatch.setattr(tables, "README", fake)
    assert tables.main(["--check"]) == 1
    assert FIGURE.search("encap 28–30 Mpps") and FIGURE.search("455× dpkt")
