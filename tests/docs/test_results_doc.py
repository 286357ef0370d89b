"""The results pages are what the stored runs give (benchmarks/results), to the digit, and stay short."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.coldstart import load_runs, pages
from benchmarks.coldstart.records import STORED_IGNORED
from benchmarks.coldstart.tables import aggregate

from helpers import REPO_ROOT

STORED = REPO_ROOT / "benchmarks" / "results" / "bench256"
RESULTS = REPO_ROOT / "docs" / "results.md"
COMPARISONS = REPO_ROOT / "docs" / "investigations" / "comparisons.md"
#: Every page with blocks generated from the stored runs (``--write-docs``).
PAGES = (RESULTS, REPO_ROOT / "README.md", COMPARISONS, REPO_ROOT / "docs" / "investigations" / "ablation.md")
#: The table rows docs/results.md published before the benchmark wrote its pages, one block per table.
PUBLISHED = Path(__file__).parent / "data" / "published_bench256_rows.txt"
REGENERATE = ("python -m benchmarks.coldstart --stored benchmarks/results/bench256 --tables-only --write-docs "
              + " ".join(str(p.relative_to(REPO_ROOT)) for p in PAGES))


@pytest.fixture(scope="module")
def tables() -> dict:
    return aggregate(load_runs(STORED))


def test_stored_runs_are_compact_and_share_one_setting() -> None:
    paths = sorted((STORED / "runs").rglob("seed*.json"))
    assert len(paths) >= 94, f"expected at least the 94 runs first published under {STORED}"
    settings = set()
    for path, record in zip(paths, load_runs(STORED)):
        category, baseline, arm, name = path.relative_to(STORED / "runs").parts
        assert (record.category, record.baseline, record.arm, f"seed{record.seed}.json") == (
            category, baseline, arm, name)
        assert record.is_compact and "/" not in record.split  # compact: no history, no paths
        assert '"/' not in path.read_text()
        kept = {k: v for k, v in record.settings.items() if k not in STORED_IGNORED}
        settings.add(json.dumps(kept, sort_keys=True))
    assert len(settings) == 1, "the stored runs of one table were made with different settings"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_generated_block_is_what_the_stored_runs_give(page: Path, tables: dict) -> None:
    text = page.read_text(encoding="utf-8")
    assert pages.START.search(text), f"{page} has no generated block"
    assert pages.update_page(text, tables) == text, f"{page} is not up to date; regenerate it: {REGENERATE}"


def test_the_published_numbers_are_unchanged() -> None:
    """Every table row the results page published before it was generated is still on a generated page, digit for
    digit (the renderers may not change a number)."""
    shown = set()
    for page in PAGES:
        shown |= {line for line in page.read_text(encoding="utf-8").splitlines() if line.startswith("| ")}
    rows = [line for line in PUBLISHED.read_text(encoding="utf-8").splitlines() if line.startswith("| ")]
    assert len(rows) == 194
    missing = [row for row in rows if row not in shown]
    assert not missing, f"{len(missing)} published rows changed, e.g. {missing[0]}"


def test_the_results_page_is_short_and_answers_first() -> None:
    text = RESULTS.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 120  # the answer, the setting and the commands; the tables live elsewhere
    specs = [m.group("spec") for m in pages.START.finditer(text)]
    assert specs == ["decisions"]  # the decision table, first and alone


def test_every_category_and_detector_has_its_comparison() -> None:
    text = COMPARISONS.read_text(encoding="utf-8")
    specs = [m.group("spec") for m in pages.START.finditer(text)]
    compared = {spec.split()[1] for spec in specs if spec.startswith("comparison ")}
    assert compared == set(aggregate(load_runs(STORED)))  # every category and detector with stored runs
    assert all(spec.endswith("arms=baseline,arcad,missed") for spec in specs)  # both presets beside the baseline
    headings = [line for line in text.splitlines() if line.startswith("#### ")]
    assert headings and all(h.endswith(", EfficientNet-Lite0") for h in headings)  # detector named with encoder


def test_the_readme_shows_the_decision_table() -> None:
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Does it help?"):text.index("## Run the tests")]
    assert "<!-- generated: decisions -->" in section
    prose = [line for line in section.splitlines()[1:] if line and not line.startswith(("|", "<!--"))]
    assert len(" ".join(prose).split(". ")) <= 8  # a table and a few sentences
