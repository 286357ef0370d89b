"""docs/results.md's working-scale tables are what the stored runs give (benchmarks/results), to the digit."""

from __future__ import annotations

import json
import re
from pathlib import Path

from benchmarks.coldstart import load_runs, records as coldstart_records, tables as coldstart_tables

from helpers import REPO_ROOT

ROOT = REPO_ROOT
STORED = ROOT / "benchmarks" / "results" / "bench256"
DOC = ROOT / "docs" / "results.md"


def _tables() -> dict:
    return coldstart_tables.aggregate(load_runs(STORED))


def _body(block: str) -> str:
    """The table lines of a generated block (its heading is free to change)."""
    return "\n".join(line for line in block.splitlines() if line.startswith("|"))


def test_stored_runs_are_compact_and_share_one_setting() -> None:
    paths = sorted((STORED / "runs").rglob("seed*.json"))
    assert paths, f"no stored runs under {STORED}"
    settings = set()
    for path in paths:
        record = json.loads(path.read_text(encoding="utf-8"))
        category, baseline, arm, name = path.relative_to(STORED / "runs").parts
        assert (record["category"], record["baseline"], record["arm"], f"seed{record['seed']}.json") == (
            category, baseline, arm, name)
        assert record["diagnostics"] is None and "/" not in record["split"]  # compact: no history, no paths
        assert '"/' not in path.read_text()
        kept = {k: v for k, v in record["settings"].items() if k not in coldstart_records.STORED_IGNORED}
        settings.add(json.dumps(kept, sort_keys=True))
    assert len(settings) == 1, "the stored runs of one table were made with different settings"


MARKER = re.compile(r"<!-- generated: (comparison|ablation) (\S+)/(\S+) -->\n")


def test_every_marked_table_is_what_the_stored_runs_give() -> None:
    """A table preceded by ``<!-- generated: <comparison|ablation> <category>/<baseline> -->`` must equal, line by
    line, what ``python -m benchmarks.coldstart`` writes for the stored runs (comparison.md / ablation.md)."""
    text = DOC.read_text(encoding="utf-8")
    tables = _tables()
    found = list(MARKER.finditer(text))
    assert found, "docs/results.md marks no table as generated from the stored runs"
    for match in found:
        kind, category, baseline = match.groups()
        key = f"{category}/{baseline}"
        assert key in tables, f"docs/results.md shows {key}, which has no stored runs"
        block = (coldstart_tables.comparison_markdown if kind == "comparison" else coldstart_tables.ablation_markdown)(tables[key])
        lines = text[match.end():].splitlines()
        first = next(i for i, line in enumerate(lines) if line.startswith("|"))
        last = next((i for i in range(first, len(lines)) if not lines[i].startswith("|")), len(lines))
        shown = "\n".join(lines[first:last])  # the first table after the marker
        assert shown == _body(block), f"the {kind} table of {key} in docs/results.md is not what the stored runs give"
