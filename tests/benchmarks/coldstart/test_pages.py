"""The generated blocks of the documentation pages."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.coldstart import load_runs, pages
from benchmarks.coldstart.tables import ablation_markdown, aggregate, comparison_markdown

from helpers import REPO_ROOT


@pytest.fixture(scope="module")
def tables() -> dict:
    return aggregate(load_runs(REPO_ROOT / "benchmarks" / "results" / "bench256"))


def _page(spec: str, body: str = "stale\n") -> str:
    return f"before\n<!-- generated: {spec} -->\n{body}<!-- end generated -->\nafter\n"


def test_a_block_is_replaced_and_the_rest_of_the_page_kept(tables: dict) -> None:
    text = _page("ablation magnetic_tile/rd4ad") + _page("comparison tire/dinomaly arms=baseline,spm")
    new = pages.update_page(text, tables)
    assert new == (_page("ablation magnetic_tile/rd4ad", ablation_markdown(tables["magnetic_tile/rd4ad"]) + "\n")
                   + _page("comparison tire/dinomaly arms=baseline,spm",
                           comparison_markdown(tables["tire/dinomaly"], ["baseline", "spm"]) + "\n"))
    assert pages.update_page(new, tables) == new


@pytest.mark.parametrize(("spec", "message"), [
    ("ablations tire/rd4ad", "unknown generated block"),
    ("comparison", "name <category>/<detector>"),
    ("comparison screw/rd4ad", "has no runs"),
    ("comparison tire/rd4ad columns=x", "unknown option"),
    ("comparison tire/rd4ad arms=baseline,nope", "unknown arm"),
    ("decisions tire", "takes no arguments"),
])
def test_malformed_blocks_are_refused(spec: str, message: str, tables: dict) -> None:
    with pytest.raises(ValueError, match=message):
        pages.update_page(_page(spec), tables)


def test_a_block_without_its_end_is_refused(tables: dict) -> None:
    with pytest.raises(ValueError, match="has no '<!-- end generated -->'"):
        pages.update_page("<!-- generated: decisions -->\n| x |\n", tables)


def test_write_pages_needs_a_block_and_reports_what_changed(tmp_path: Path, tables: dict) -> None:
    empty = tmp_path / "empty.md"
    empty.write_text("nothing generated\n")
    with pytest.raises(ValueError, match="no generated block"):
        pages.write_pages([empty], tables)
    page = tmp_path / "page.md"
    page.write_text(_page("decisions"))
    assert pages.stale_pages([page], tables) == [page]
    assert pages.write_pages([page], tables) == [page]
    assert pages.write_pages([page], tables) == [] and pages.stale_pages([page], tables) == []
