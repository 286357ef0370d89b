"""Helpers of the harness tests (tests/harness): tiny experiment configurations and checks of a run's result."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

import arcad_harness as harness

METRICS = ("i_auroc", "p_auroc", "p_f1_max", "aupro")
ALL_KINDS = ("recon", "prototype", "discriminator", "fused", "fused_equal")
TINY_SYNTHETIC = {"image_size": 32, "num_train": 10, "num_test_good": 3, "num_defects_per_kind": 2}


def tiny(baseline: str, cache: Path, **changes: object) -> harness.ExperimentConfig:
    """The ``--tiny`` configuration of ``baseline`` (quiet, no figures), its synthetic data in ``cache``, with
    ``changes``."""
    cfg = harness.tiny_config(harness.ExperimentConfig(baseline=baseline, verbose=False, figures=False))
    changes.setdefault("synthetic", cfg.synthetic)
    changes["synthetic"] = {**changes["synthetic"], "root": str(cache)}  # type: ignore[dict-item]
    return dataclasses.replace(cfg, **changes)  # type: ignore[arg-type]


def check_result(result: dict, kinds: tuple[str, ...], categories: list[str]) -> None:
    """Keys and value ranges of a run's result."""
    assert {"config", "categories", "mean", "train_time_s", "eval_time_s", "diagnostics", "split"} <= set(result)
    assert list(result["categories"]) == categories
    for scores in [*result["categories"].values(), result["mean"]]:
        assert tuple(scores) == kinds
        for values in scores.values():
            assert set(values) == set(METRICS)
            assert all(0.0 <= v <= 1.0 for v in values.values()), values
    assert result["train_time_s"] > 0 and result["eval_time_s"] > 0
    for category in categories:
        counts = result["split"][category]
        assert counts["test"] == counts["test_normal"] + counts["test_defective"]
        assert counts["train_normal"] >= 1 and counts["test_defective"] >= 1
    # the mean row is the mean of the category rows
    for kind in kinds:
        for metric in METRICS:
            rows = [result["categories"][c][kind][metric] for c in categories]
            assert result["mean"][kind][metric] == pytest.approx(sum(rows) / len(rows))


def check_arcad_diagnostics(diag: dict, k: int) -> None:
    """A +ArcAD model's diagnostics: finite terms every step, the total their sum, K prototypes in use."""
    history = diag["history"]
    assert [r["step"] for r in history] == list(range(1, len(history) + 1))
    for record in history:
        for term in ("loss", "loss_recon", "loss_spm", "loss_dgc", "loss_cls"):
            assert math.isfinite(record[term])
        # the total is recon + the weighted ArcAD terms
        assert record["loss"] == pytest.approx(record["loss_recon"] + record["loss_arcad"], rel=1e-4, abs=1e-6)
        assert record["initialized"] and 0.0 <= record["anomalous_fraction"] <= 1.0
        assert 0.0 <= record["disc_acc_normal"] <= 1.0
    assert any(r["loss_spm"] > 0 for r in history)
    usage = diag["prototype_usage"]
    assert len(usage) == k and sum(usage) > 0 and all(u >= 0 for u in usage)
    assert diag["prototypes_used"] == sum(u > 0 for u in usage)
