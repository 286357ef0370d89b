"""benchmarks/defect_fractions.py: the defect fractions of a split's anomalous training patches."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("PIL")

from benchmarks import defect_fractions


def test_summary_counts_the_patches_with_a_defect_pixel() -> None:
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)  # a 2 x 2 grid of 4 x 4 patches
    masks[0, :4, :4] = True  # a whole patch: 1.0
    masks[0, 4, 4] = True  # one pixel of another: 1/16
    masks[1, :2, 4:] = True  # half a patch: 0.5
    summary = defect_fractions.fraction_summary(masks, 2)
    assert summary["patches"] == 3
    assert summary["mean"] == pytest.approx((1 + 1 / 16 + 0.5) / 3)
    assert summary["median"] == pytest.approx(0.5)
    assert summary["at_least_quarter"] == 2
    empty = defect_fractions.fraction_summary(torch.zeros(1, 8, 8), 2)
    assert empty["patches"] == 0 and math.isnan(empty["mean"])


def test_the_script_reads_a_split_as_the_benchmark_makes_it(tmp_path: Path, capsys) -> None:
    from torch_arcad.datasets import make_synthetic_dataset

    root = make_synthetic_dataset(tmp_path / "data", categories=["grid"], image_size=32, num_train=20,
                                  num_test_good=4, num_defects_per_kind=2)
    assert defect_fractions.main(["--data-root", str(root), "--categories", "grid", "--seeds", "0", "1",
                                  "--image-size", "32", "--grid", "4"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| grid |")]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        images, patches, at_least = int(cells[2]), int(cells[3]), int(cells[6])
        assert images >= 1 and patches >= images and 0 <= at_least <= patches
        assert 0.0 < float(cells[4].rstrip("%")) <= 100.0
    with pytest.raises(SystemExit):
        defect_fractions.main(["--data-root", str(root), "--categories", "grid", "--grid", "0"])
