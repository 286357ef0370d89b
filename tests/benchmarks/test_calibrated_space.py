"""benchmarks/calibrated_space.py: the matched-distance AUROC against its definition, and a tiny end-to-end run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("PIL")

from benchmarks import calibrated_space  # noqa: E402
from torch_arcad.metrics import auroc  # noqa: E402


def test_matched_distance_auroc_reads_the_direction_not_the_distance() -> None:
    g = torch.Generator().manual_seed(0)
    distance = torch.rand(2000, generator=g)
    positive = torch.rand(2000, generator=g) < distance  # defects lie farther out
    # a score that is the distance plus a term ranking defects low at equal distance
    probability = distance - 0.2 * positive.float() + 0.05 * torch.rand(2000, generator=g)
    overall = auroc(probability, positive)
    matched, per_bin = calibrated_space.matched_distance_auroc(probability, distance, positive, num_bins=10)
    assert overall > 0.5 > matched  # overall the distance wins; at equal distance the inversion shows
    # the weighted mean of the per-bin values, weights the bins' positives
    edges = torch.quantile(distance.double(), torch.linspace(0, 1, 11, dtype=torch.float64))
    index = torch.bucketize(distance.double(), edges[1:-1], right=True)
    weights = torch.tensor([float(positive[index == b].sum()) for b in range(10)])
    expected = sum(w * v for w, v in zip(weights.tolist(), per_bin)) / float(weights.sum())
    assert matched == pytest.approx(expected)
    assert all(0.0 <= v <= 1.0 for v in per_bin)


def test_a_tiny_run_reports_every_group_and_reuses_its_checkpoint(tmp_path: Path) -> None:
    from torch_arcad.datasets import make_synthetic_dataset

    root = make_synthetic_dataset(tmp_path / "data", categories=["grid"], image_size=32, num_train=20,
                                  num_test_good=4, num_defects_per_kind=2)
    threads = torch.get_num_threads()
    args = ["--data-root", str(root), "--category", "grid", "--steps", "4", "--image-size", "32", "--batch-size", "4",
            "--width", "32", "--num-prototypes", "4", "--threads", "1", "--checkpoint", str(tmp_path / "state.pt")]
    try:
        assert calibrated_space.main([*args, "--output", str(tmp_path / "first")]) == 0
        assert calibrated_space.main([*args, "--output", str(tmp_path / "again")]) == 0
    finally:
        torch.set_num_threads(threads)
    first = json.loads((tmp_path / "first" / "space.json").read_text())
    again = json.loads((tmp_path / "again" / "space.json").read_text())
    assert set(first["groups"]) == set(calibrated_space.GROUPS)
    assert all(first["groups"][name]["patches"] > 0 for name in calibrated_space.GROUPS)
    assert first["groups"]["train_normal"]["distance"] < 1.0  # prototypes initialised
    assert first["groups"] == again["groups"]  # the stored state gives the same analysis
    assert "matched distance" in (tmp_path / "first" / "space.md").read_text()
    assert 1 <= first["subspace"]["rank"] <= first["subspace"]["dim"]
    assert all(0.0 <= first["groups"][name]["off_subspace"] <= 1.0 for name in calibrated_space.GROUPS)


def test_off_subspace_share_separates_isotropic_noise_from_moves_inside_the_subspace() -> None:
    g = torch.Generator().manual_seed(1)
    d, r = 32, 4
    basis = torch.linalg.qr(torch.randn(d, r, generator=g))[0]
    normal = torch.randn(3000, r, generator=g) @ basis.t() + 0.01 * torch.randn(3000, d, generator=g)
    mean, found = calibrated_space.normal_subspace(normal, energy=0.95)
    assert found.shape == (d, r)  # the planted rank, not more
    torch.testing.assert_close(found @ found.t() @ basis, basis, atol=1e-2, rtol=0)  # the planted span
    inside = torch.randn(500, r, generator=g) @ basis.t() * 3
    isotropic = torch.randn(500, d, generator=g)
    share_inside = calibrated_space.off_subspace_share(inside, mean, found)
    share_iso = calibrated_space.off_subspace_share(isotropic, mean, found)
    assert share_inside.max() < 0.01
    assert share_iso.mean() == pytest.approx((d - r) / d, abs=0.03)  # isotropic energy spreads over all D
    # against the definition: the squared norm of the residual after projection, over the squared deviation
    x = isotropic[:5].double() - mean.double()
    residual = x - (x @ found.double()) @ found.double().t()
    torch.testing.assert_close(share_iso[:5].double(), (residual**2).sum(1) / (x**2).sum(1), atol=1e-5, rtol=0)
