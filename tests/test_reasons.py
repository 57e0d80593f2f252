"""Drop reasons and trace events come from one list each (fastpath/reasons.py):
the generated enums are in step with it, and the built fast path reports the
names in the order of its codes."""
import runpy
from pathlib import Path

import pytest

from fastpath import reasons

HERE = Path(reasons.__file__).resolve().parent


@pytest.mark.parametrize("name", ["drops.pxi", "events.pxi"])
def test_generated_enums_match_the_list(name):
    assert (HERE / name).read_text() == reasons.pxi()[name], \
        f"fastpath/{name} is out of step: run python fastpath/reasons.py"


def test_the_check_can_fail(tmp_path, monkeypatch):
    monkeypatch.setattr(reasons, "HERE", tmp_path)
    for name, text in reasons.pxi().items():
        (tmp_path / name).write_text(text.replace("DROP_RUNT", "DROP_SHORT").replace("EV_TX", "EV_OUT"))
    assert reasons.main(["--check"]) == 1
    assert reasons.main([]) == 0 and reasons.main(["--check"]) == 0


def test_names_are_unique_and_codes_are_positions():
    for entries in (reasons.DROPS, reasons.EVENTS):
        assert len({n for n, _, _ in entries}) == len({c for _, c, _ in entries}) == len(entries)
    assert reasons.DROP_NAMES[0] == "none" and reasons.EVENT_NAMES[0] == "rx"
    text = reasons.pxi()["drops.pxi"]
    assert text.index("DROP_BAD_PORT") < text.index("DROP_RUNT") < text.index("    N_DROP")


def test_the_built_fast_path_uses_the_same_list():
    from fastpath.counters import DROP_NAMES, N_DROP_REASONS
    from fastpath.trace import EVENT_NAMES, N_EVENTS
    assert (DROP_NAMES, N_DROP_REASONS) == (reasons.DROP_NAMES, len(reasons.DROPS))
    assert (EVENT_NAMES, N_EVENTS) == (reasons.EVENT_NAMES, len(reasons.EVENTS))


def test_the_script_runs_without_the_built_package():
    """setup.py-free: the module is plain Python, so it runs before any build."""
    ns = runpy.run_path(str(HERE / "reasons.py"))
    assert ns["DROP_NAMES"] == reasons.DROP_NAMES
