"""Statistics and Markdown tables, from run records alone."""

from __future__ import annotations

import math

import pytest

from benchmarks.coldstart import tables
from benchmarks.coldstart.records import RunRecord
from benchmarks.coldstart.tables import METRICS, SCORE_KINDS


def _record(arm: str, seed: int, values: dict[str, float], category: str = "tire", **extra) -> RunRecord:
    return RunRecord.from_dict({
        "category": category, "baseline": "rd4ad", "arm": arm, "seed": seed,
        "settings": {"encoder": "efficientnet_lite0"},
        "scores": {k: {m: v for m in METRICS} for k, v in values.items()},
        "train_time_s": 1.0, "eval_time_s": 1.0, "wall_time_s": 2.0, **extra,
    })


def _run(arm: str, seed: int, i_auroc: float) -> RunRecord:
    kinds = ("recon",) if arm == "baseline" else SCORE_KINDS
    return _record(arm, seed, {k: i_auroc for k in kinds}, category="c")


def test_mean_std_matches_the_textbook_formulas() -> None:
    values = [1.0, 2.0, 4.0]
    mean, std = tables.mean_std(values)
    assert mean == pytest.approx(7.0 / 3.0)
    assert std == pytest.approx(math.sqrt(sum((v - 7.0 / 3.0) ** 2 for v in values) / 2))
    assert tables.mean_std([3.0]) == (3.0, 0.0)
    assert all(math.isnan(x) for x in tables.mean_std([1.0, math.nan]))


def test_gains_use_only_the_seeds_that_have_both_arms() -> None:
    table = tables.aggregate([_run("baseline", 0, 0.5), _run("arcad", 0, 0.75), _run("arcad", 1, 0.25)])["c/rd4ad"]
    assert table["num_seeds"] == 1
    recon = table["rows"][1]["metrics"]["i_auroc"]
    assert recon["mean"] == pytest.approx(50.0)  # both +ArcAD seeds enter its mean ...
    assert recon["gain"] == pytest.approx(25.0)  # ... but only seed 0 has a baseline to compare with
    assert recon["gain_seeds"] == [0]


def test_tables_name_the_detector_with_its_encoder() -> None:
    table = tables.aggregate([_run("baseline", 0, 0.5), _run("arcad", 0, 0.75)])["c/rd4ad"]
    assert table["detector"] == "RD4AD-style, EfficientNet-Lite0"
    assert tables.comparison_markdown(table).startswith("#### c: RD4AD-style, EfficientNet-Lite0\n")
    assert tables.detector_label("dinomaly", "dinov2_vitb14_reg") == "Dinomaly-style, DINOv2-reg ViT-B/14"
    assert tables.detector_label("recontrast") == "ReContrast-style"
    assert tables.detector_label("mine", "my_encoder") == "mine, my_encoder"


def test_an_unknown_arm_is_an_error_not_a_missing_row() -> None:
    with pytest.raises(ValueError, match="unknown arm 'nope'"):
        tables.aggregate([_run("baseline", 0, 0.5), _run("nope", 0, 0.75)])


def test_ablation_table_has_one_line_per_arm_with_its_own_maps() -> None:
    records = [_record("baseline", 0, {"recon": 0.80}), _record("baseline", 1, {"recon": 0.70}),
               _record("arcad", 0, {"recon": 0.85, "prototype": 0.6}),
               _record("arcad", 1, {"recon": 0.71, "prototype": 0.5}),
               _record("spm", 0, {"recon": 0.90, "prototype": 0.4})]
    table = tables.aggregate(records)["tire/rd4ad"]
    text = tables.ablation_markdown(table)
    lines = [line for line in text.splitlines() if line.startswith("| ")][1:]
    assert [line.split(" | ")[0] for line in lines] == ["| baseline", "| +ArcAD", "| +L_spm"]
    # two seeds: mean ± std, the gain per seed (+5, +1) then mean ± std; one seed: the bare values
    assert lines[1].split(" | ")[2] == "78.0 ± 9.9 (+3.0 ± 2.8)"
    assert lines[1].split(" | ")[6] == "55.0 ± 7.1"
    assert lines[2].split(" | ")[1:3] == ["1", "90.0 (+10.0)"]
    assert lines[0].split(" | ")[6:] == ["-", "- |"]
    # a selection of arms keeps their lines as they are
    chosen = [line for line in tables.ablation_markdown(table, ["baseline", "spm"]).splitlines()
              if line.startswith("| ")][1:]
    assert chosen == [lines[0], lines[2]]
    with pytest.raises(ValueError, match="unknown arm"):
        tables.ablation_markdown(table, ["baseline", "nope"])


def test_comparison_table_prints_each_score_kind_with_its_paired_gain() -> None:
    records = [_record("baseline", 0, {"recon": 0.80}), _record("baseline", 1, {"recon": 0.70}),
               _record("arcad", 0, {"recon": 0.85, "prototype": 0.90}),
               _record("arcad", 1, {"recon": 0.71, "prototype": 0.5}),
               _record("cls", 2, {"recon": 0.6})]  # no baseline for seed 2: no gain
    table = tables.aggregate(records)["tire/rd4ad"]
    text = tables.comparison_markdown(table)
    lines = [line.split(" | ") for line in text.splitlines() if line.startswith("| ")][1:]
    assert [cells[:3] for cells in lines] == [["| baseline", "recon", "2"], ["| +ArcAD", "recon", "2"],
                                             ["| +ArcAD", "prototype", "2"], ["| +L_cls", "recon", "1"]]
    assert lines[0][3] == "75.0 ± 7.1"
    assert lines[2][3] == "70.0 ± 28.3 (-5.0 ± 21.2)"  # +10 and -20 over the same seeds' baseline
    assert lines[3][3] == "60.0"
    assert tables.gain_cell(table, "arcad", "i_auroc", "prototype") == "-5.0 ± 21.2"
    assert tables.gain_cell(table, "cls", "i_auroc") == "n/a"  # no paired baseline
    assert tables.gain_cell(table, "spm", "i_auroc") == "n/a"  # no run
    assert tables.paired_seeds(table, "arcad") == [0, 1] and tables.paired_seeds(table, "cls") == []


def test_markdown_table_has_a_line_per_row_and_every_metric() -> None:
    table = tables.aggregate([_run("baseline", 0, 0.5), _run("arcad", 0, 0.75), _run("baseline", 1, 0.5),
                              _run("arcad", 1, 0.5)])["c/rd4ad"]
    text = tables.markdown_table(table)
    assert text.count("\n| ") == 1 + len(table["rows"])  # header + rows
    for label in tables.METRIC_LABELS.values():
        assert f"gain {label}" in text
    assert "+ArcAD training time: 1.00x the baseline's." in text


def test_fusion_summary_says_what_the_weights_were_fitted_on() -> None:
    weights = {"recon": 0.2, "prototype": 0.8, "discriminator": 0.0}

    def record(arm: str, fusion: dict) -> RunRecord:
        return _record(arm, 0, {k: 0.5 for k in tables.FUSED_KINDS},
                       fusion={"tire": {"weights": weights, **fusion}})

    rows = tables.fusion_summary([
        record("arcad", {}),  # a run stored before the fields existed
        record("arcad", {"held_out": False, "fit_images": 7}),
        record("fusion_holdout", {"held_out": True, "fit_images": 3}),
        _record("baseline", 0, {"recon": 0.5}, fusion={}),
    ])
    assert [(r["arm"], r["fitted_on"], r["fit_images"]) for r in rows] == [
        ("arcad", "training", None), ("arcad", "training", 7), ("fusion_holdout", "withheld", 3)
    ]
    text = tables.fusion_markdown(rows)
    assert "| fusion_holdout | 0 | withheld (3) | 0.2 / 0.8 / 0.0 |" in text
    assert "| arcad | 0 | training | 0.2 / 0.8 / 0.0 |" in text


def test_diagnostics_lines_mark_what_a_baseline_run_lacks() -> None:
    history = [{"step": i, "initialized": True, "loss": 1.0, "loss_recon": 1.0 - i / 100} for i in range(20)]
    base = _record("baseline", 0, {"recon": 0.5}, diagnostics={"tire": {"history": history}})
    rows = [line for line in tables.diagnostics_markdown(tables.diagnostics_entries([base])).splitlines()
            if line.startswith("| tire")]
    cells = rows[0].strip("| ").split(" | ")
    assert cells[:4] == ["tire", "rd4ad", "baseline", "0"]
    assert cells[4:7] == ["n/a"] * 3 and "→" in cells[7] and cells[8:] == ["n/a"] * 5
