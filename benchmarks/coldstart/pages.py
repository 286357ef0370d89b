"""The generated blocks of the documentation pages, written from the run records.

A page marks each block it takes from the benchmark::

    <!-- generated: comparison tire/rd4ad arms=baseline,arcad -->
    ...                      (replaced by the benchmark)
    <!-- end generated -->

Kinds: ``comparison <category>/<detector>`` (:func:`~benchmarks.coldstart.tables.comparison_markdown`),
``ablation <category>/<detector>`` (:func:`~benchmarks.coldstart.tables.ablation_markdown`), both with an
optional ``arms=a,b,...``, and ``decisions`` (:func:`~benchmarks.coldstart.decisions.decisions_markdown`).
:func:`update_page` replaces the content of every block; a page is up to date when that changes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .decisions import decisions_markdown
from .records import write_text
from .tables import ablation_markdown, comparison_markdown

__all__ = ["END_MARKER", "render_block", "stale_pages", "update_page", "write_pages"]

START = re.compile(r"^<!-- generated: (?P<spec>[^\n]*?) -->\n", re.MULTILINE)
#: The line that closes a generated block.
END_MARKER = "<!-- end generated -->"


def render_block(spec: str, tables: Mapping[str, Mapping[str, Any]]) -> str:
    """The content of the block ``<!-- generated: <spec> -->``.

    Raises:
        ValueError: an unknown kind, a malformed spec, or a category and detector without runs.
    """
    words = spec.split()
    if not words:
        raise ValueError("an empty generated block")
    kind, args = words[0], words[1:]
    if kind == "decisions":
        if args:
            raise ValueError(f"'decisions' takes no arguments, got {spec!r}")
        return decisions_markdown(tables)
    if kind not in ("comparison", "ablation"):
        raise ValueError(f"unknown generated block {kind!r} (comparison, ablation, decisions)")
    if not args:
        raise ValueError(f"{spec!r}: name <category>/<detector>")
    key, options = args[0], args[1:]
    arms: list[str] | None = None
    for option in options:
        name, _, value = option.partition("=")
        if name != "arms" or not value:
            raise ValueError(f"{spec!r}: unknown option {option!r} (arms=a,b,...)")
        arms = value.split(",")
    if key not in tables:
        raise ValueError(f"{spec!r}: {key} has no runs")
    render = comparison_markdown if kind == "comparison" else ablation_markdown
    return render(tables[key], arms)


def update_page(text: str, tables: Mapping[str, Mapping[str, Any]]) -> str:
    """``text`` with the content of every generated block replaced by what ``tables`` give.

    Raises:
        ValueError: a block without its end marker, or one :func:`render_block` refuses.
    """
    out: list[str] = []
    position = 0
    for match in START.finditer(text):
        if match.start() < position:  # a start marker inside the previous block
            raise ValueError(f"generated block {match.group('spec')!r} opens inside another block")
        end = text.find(END_MARKER, match.end())
        if end < 0:
            raise ValueError(f"generated block {match.group('spec')!r} has no {END_MARKER!r}")
        out.append(text[position:match.end()])
        out.append(render_block(match.group("spec"), tables) + "\n")
        position = end
    out.append(text[position:])
    return "".join(out)


def write_pages(paths: Sequence[Path], tables: Mapping[str, Mapping[str, Any]]) -> list[Path]:
    """Rewrite the generated blocks of each page; the pages that changed."""
    changed = []
    for path in paths:
        text = Path(path).read_text(encoding="utf-8")
        if START.search(text) is None:
            raise ValueError(f"{path} has no generated block")
        new = update_page(text, tables)
        if new != text:
            write_text(Path(path), new)
            changed.append(Path(path))
    return changed


def stale_pages(paths: Sequence[Path], tables: Mapping[str, Mapping[str, Any]]) -> list[Path]:
    """The pages whose generated blocks differ from what ``tables`` give."""
    return [Path(p) for p in paths if update_page(Path(p).read_text(encoding="utf-8"), tables) != Path(p).read_text(
        encoding="utf-8")]
