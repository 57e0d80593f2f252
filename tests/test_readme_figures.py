"""Every performance figure in the README and the docs/ pages comes from a
committed results file: the benchmark tables are rendered from
bench/results/*.json by bench/tables.py and each must match its one copy, in
whichever page (README.md or docs/*.md) holds it, and no figure with a
performance unit appears outside those tables in any of those pages."""
import re
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import tables  # noqa: E402

# A number with a unit of speed, rate, latency or a speed-up: what a
# benchmark measures. (Sizes such as "64 KB", "1450" or "16381" are not.)
FIGURE = re.compile(r"\d[\d.,]*\s*(Mpps|Gbit/s|µs|M/s|k frames/s|M new flows)|\b\d[\d.,]*×(?! \d)")


def test_the_pages_are_the_readme_and_every_docs_page():
    names = [tables.page_name(p) for p in tables.pages()]
    assert names[0] == "README.md"
    assert {"docs/benchmarks.md", "docs/fast-path.md", "docs/architecture.md"} <= set(names)
    assert all(n == "README.md" or (n.startswith("docs/") and n.endswith(".md")) for n in names)


def test_tables_match_the_results_files_each_in_one_page():
    where, want = tables.located(), tables.render()
    assert sorted(where) == sorted(want), "the pages must hold one bench block per table"
    for name in want:
        copies = where[name]
        assert len(copies) == 1, f"bench:{name} is in {[tables.page_name(p) for p, _ in copies]}: one page only"
        assert copies[0][1] == want[name], \
            f"{tables.page_name(copies[0][0])}'s bench:{name} differs: run `python bench/tables.py --write`"
    assert tables.problems() == []


def test_the_front_page_has_the_headline_figures_and_docs_benchmarks_the_rest():
    where = {name: tables.page_name(copies[0][0]) for name, copies in tables.located().items()}
    assert where["headline"] == "README.md"
    assert where["stages"] == where["overlay"] == where["pods"] == "docs/benchmarks.md"


@pytest.mark.parametrize("page", tables.pages(), ids=tables.page_name)
def test_no_figure_outside_the_generated_tables(page):
    text = page.read_text()
    outside = re.sub(r"<!-- bench:(\w+) -->.*?<!-- /bench:\1 -->", "", text, flags=re.S)
    found = [(n + 1, line.strip()) for n, line in enumerate(outside.splitlines()) if FIGURE.search(line)]
    assert not found, (f"figures in {tables.page_name(page)} not taken from bench/results:\n"
                       + "\n".join(f"{n}: {l}" for n, l in found))


def test_headline_figures_are_the_detailed_tables_figures():
    """Each podnet figure of the front page is the one its detailed table
    shows, from the same results file."""
    want = tables.render()
    head = want["headline"]
    rows = [r for r in head.splitlines() if r.startswith("| ") and not r.startswith("| figure")]
    assert 4 <= len(rows) <= 8
    by_file = {"stages.json": "stages", "instructions.json": "stages", "pods.json": "pods",
               "overlay.json": "overlay", "connect_latency.json": "connect", "toolkit.json": "toolkit"}
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        figure, results = cells[1], cells[5].strip("`")
        assert figure in want[by_file[results]], f"{figure} ({results}) is not in bench:{by_file[results]}"
        assert results.removesuffix(".json") in head.split("The runs", 1)[1]
    for name in ("stages", "pods", "overlay", "connect_latency", "toolkit"):
        assert f"`{name}.json`: " in head          # each file's run and machine under the table
    assert head.count("AMD EPYC") + head.count("vCPU") >= 4


def copy_pages(tmp_path, monkeypatch):
    """The README and docs/ pages copied to tmp_path, and tables pointed at them."""
    (tmp_path / "docs").mkdir()
    shutil.copy(tables.README, tmp_path / "README.md")
    for p in tables.DOCS.glob("*.md"):
        shutil.copy(p, tmp_path / "docs" / p.name)
    monkeypatch.setattr(tables, "README", tmp_path / "README.md")
    monkeypatch.setattr(tables, "DOCS", tmp_path / "docs")
    return tmp_path


def test_the_check_can_fail(tmp_path, monkeypatch):
    """A changed figure in a page is caught, in the docs page that holds the
    table and in the README's headline."""
    root = copy_pages(tmp_path, monkeypatch)
    assert tables.main(["--check"]) == 0
    for name in ("stages", "headline"):
        page = tables.located()[name][0][0]
        text = page.read_text()
        block = tables.readme_blocks(text)[name]
        changed = re.sub(r"\d+\.\d", lambda m: str(round(float(m.group()) + 1, 1)), block, count=1)
        assert changed != block
        page.write_text(text.replace(block, changed))
        assert tables.main(["--check"]) == 1
        page.write_text(text)
        assert tables.main(["--check"]) == 0
    assert root == tables.README.parent
    assert FIGURE.search("encap 28–30 Mpps") and FIGURE.search("455× dpkt")
