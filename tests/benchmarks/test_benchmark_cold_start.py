"""The cold-start benchmark in its quick mode: files, keys, pairing and resuming (numbers are not asserted)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("PIL")

from benchmarks import cold_start  # noqa: E402

QUICK_BASELINES = ("rd4ad", "dinomaly")


def _main(args: list[str]) -> int:
    """Run the benchmark on one torch thread (tiny tensors: threads only add contention), then restore."""
    threads = torch.get_num_threads()
    try:
        return cold_start.main([*args, "--threads", "1"])
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cold_start")
    args = ["--quick", "--output", str(out), "--seeds", "0", "1", "--baselines", *QUICK_BASELINES]
    assert _main(args) == 0
    return out


def test_one_run_file_per_category_baseline_arm_and_seed(quick_run: Path) -> None:
    runs = sorted(p.relative_to(quick_run / "runs").as_posix() for p in (quick_run / "runs").rglob("*.json"))
    expected = sorted(
        f"{cold_start.QUICK_SYNTHETIC_CATEGORY}/{b}/{arm}/seed{s}.json"
        for b in QUICK_BASELINES
        for arm in cold_start.DEFAULT_ARMS
        for s in (0, 1)
    )
    assert runs == expected


def test_both_arms_of_a_seed_share_one_split(quick_run: Path) -> None:
    for baseline in QUICK_BASELINES:
        for seed in (0, 1):
            records = [
                json.loads(cold_start.run_file(quick_run, cold_start.QUICK_SYNTHETIC_CATEGORY, baseline, arm, seed)
                           .read_text())
                for arm in cold_start.DEFAULT_ARMS
            ]
            assert records[0]["split"] == records[1]["split"] == str(quick_run / "splits" / f"seed{seed}.json")
            assert records[0]["settings"] == records[1]["settings"]
    split0 = json.loads((quick_run / "splits" / "seed0.json").read_text())
    split1 = json.loads((quick_run / "splits" / "seed1.json").read_text())
    assert split0["seed"] == 0 and split1["seed"] == 1


def test_arcad_runs_report_every_score_kind_and_baselines_recon(quick_run: Path) -> None:
    category = cold_start.QUICK_SYNTHETIC_CATEGORY
    for baseline in QUICK_BASELINES:
        base = json.loads(cold_start.run_file(quick_run, category, baseline, "baseline", 0).read_text())
        cal = json.loads(cold_start.run_file(quick_run, category, baseline, "arcad", 0).read_text())
        assert set(base["scores"]) == {"recon"}
        assert set(cal["scores"]) == set(cold_start.SCORE_KINDS)
        for scores in (base["scores"]["recon"], *cal["scores"].values()):
            assert set(cold_start.METRICS) <= set(scores)
        for record in (base, cal):
            assert record["train_time_s"] > 0 and record["wall_time_s"] >= record["train_time_s"]


def test_tables_have_every_row_metric_and_gain(quick_run: Path) -> None:
    category = cold_start.QUICK_SYNTHETIC_CATEGORY
    for baseline in QUICK_BASELINES:
        table = json.loads((quick_run / "tables" / f"{category}_{baseline}.json").read_text())
        assert table["num_seeds"] == 2
        assert table["config"]["image_size"] == cold_start.QUICK_IMAGE_SIZE
        assert table["config"]["steps"] == cold_start.QUICK_STEPS
        kinds = [(r["arm"], r["score"]) for r in table["rows"]]
        assert kinds == [("baseline", "recon")] + [("+ArcAD", k) for k in cold_start.SCORE_KINDS]
        assert "gain" not in table["rows"][0]["metrics"]["i_auroc"]
        for row in table["rows"]:
            assert row["seeds"] == [0, 1]
            assert set(row["metrics"]) == set(cold_start.METRICS)
            assert row["train_time_s"]["mean"] > 0
        base_values = table["rows"][0]["metrics"]
        for row in table["rows"][1:]:
            for metric in cold_start.METRICS:
                entry = row["metrics"][metric]
                if not math.isfinite(entry["mean"]):
                    continue
                # The gain is the difference of the means, and the paired gains average to the same number.
                assert entry["gain"] == pytest.approx(entry["mean"] - base_values[metric]["mean"])
                assert entry["paired_gain_mean"] == pytest.approx(entry["gain"])
        markdown = (quick_run / "tables" / f"{category}_{baseline}.md").read_text()
        assert markdown.count("\n| ") == 1 + len(table["rows"])  # header + rows
        for label in cold_start.METRIC_LABELS.values():
            assert label in markdown


def test_summary_states_configuration_machine_and_diagnostics(quick_run: Path) -> None:
    summary = json.loads((quick_run / "summary.json").read_text())
    for key in ("steps", "batch_size", "image_size", "num_prototypes", "lambdas", "seeds"):
        assert key in summary["config"]
    assert summary["machine"]["cpu_count"] >= 1
    assert len(summary["tables"]) == len(QUICK_BASELINES)
    assert summary["total_wall_time_s"] > 0
    diag = json.loads((quick_run / "diagnostics.json").read_text())
    assert len(diag) == 2 * 2 * len(QUICK_BASELINES)  # one per run: two seeds of the baseline and of +ArcAD
    for entry in diag:
        summary = entry["summary"]
        recon = summary["terms"]["loss_recon"]
        assert math.isfinite(recon["first"]) and math.isfinite(recon["last"])
        if entry["arm"] == "baseline":  # no ArcAD: the reconstruction loss (and the total) only
            assert set(summary) == {"terms"} and set(summary["terms"]) == {"loss", "loss_recon"}
            continue
        assert {"terms", "prototypes_used", "num_prototypes", "max_share"} <= set(summary)
        assert {"loss_spm", "loss_dgc", "loss_cls"} <= set(summary["terms"])
        assert 1 <= summary["prototypes_used"] <= summary["num_prototypes"]
        assert 0 < summary["max_share"] <= 1
    text = (quick_run / "summary.md").read_text()
    assert "image_size" in text and "machine" in text and "diagnostics" in text
    # one row per run, each naming its arm (several arms share a category, baseline and seed)
    rows = [line for line in (quick_run / "diagnostics.md").read_text().splitlines() if line.startswith("| ")][1:]
    assert len(rows) == len(diag)
    assert sorted(row.split(" | ")[2] for row in rows) == sorted(entry["arm"] for entry in diag)
    for row in rows:
        cells = row.strip("| ").split(" | ")
        assert "→" in cells[7]  # the reconstruction loss, first -> last, for every run
        if cells[2] == "baseline":
            assert cells[4:7] == ["n/a"] * 3 and cells[8:] == ["n/a"] * 5


def test_resuming_skips_existing_runs(quick_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = sorted((quick_run / "runs").rglob("*.json"))
    before = {p: p.stat().st_mtime_ns for p in files}
    args = ["--quick", "--output", str(quick_run), "--seeds", "0", "1", "--baselines", *QUICK_BASELINES]
    assert _main(args) == 0
    assert {p: p.stat().st_mtime_ns for p in files} == before
    out = capsys.readouterr().out
    assert out.count("[skip]") == len(files) and "[run ]" not in out


def test_a_run_stopped_in_the_middle_resumes_from_its_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --resume-every 1, a run stopped in its second step continues after its first when the benchmark is
    started again, and stores the record of an uninterrupted run; the snapshot is gone afterwards and is not a
    setting (stored runs without it stay valid)."""
    harness = cold_start._harness()
    example = harness.load_example("rd4ad")
    args = ["--quick", "--seeds", "0", "--baselines", "rd4ad", "--arms", "arcad", "--steps", "3"]
    assert _main([*args, "--output", str(tmp_path / "uninterrupted")]) == 0
    reference = json.loads(cold_start.run_file(tmp_path / "uninterrupted", "grid", "rd4ad", "arcad", 0).read_text())

    out = tmp_path / "stopped"
    original, calls = example.train_step, []

    def stopping(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*a, **k)

    with monkeypatch.context() as patch:
        patch.setattr(example, "train_step", stopping)
        with pytest.raises(KeyboardInterrupt):
            _main([*args, "--output", str(out), "--resume-every", "1"])
    snapshot = cold_start.snapshot_dir(out, "grid", "rd4ad", "arcad", 0) / "rd4ad-arcad-grid.pt"
    assert torch.load(snapshot, weights_only=True)["step"] == 1
    assert not cold_start.run_file(out, "grid", "rd4ad", "arcad", 0).exists()
    capsys.readouterr()

    assert _main([*args, "--output", str(out), "--resume-every", "1"]) == 0
    assert "after step 1/3" in capsys.readouterr().out
    record = json.loads(cold_start.run_file(out, "grid", "rd4ad", "arcad", 0).read_text())
    assert record["scores"] == reference["scores"]
    assert record["fusion"] == reference["fusion"]
    assert [r["loss"] for r in record["diagnostics"]["grid"]["history"]] == [
        r["loss"] for r in reference["diagnostics"]["grid"]["history"]
    ]
    assert not snapshot.exists() and list((out / "snapshots").iterdir()) == []  # no empty folders left either
    assert record["diagnostics"]["grid"]["resumed_after_step"] == 1
    assert "resumed_after_step" not in reference["diagnostics"]["grid"]
    assert not {"resume_dir", "resume_every"} & set(record["settings"])
    assert record["harness_config"]["resume_every"] == 1
    assert cold_start.compact_record(record)["harness_config"]["resume_dir"] == "seed0"
    with pytest.raises(SystemExit, match="--resume-every must be >= 0"):
        _main([*args, "--output", str(out), "--resume-every", "-1"])


def test_tables_only_rewrites_the_tables_without_running(
    quick_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = quick_run / "tables" / f"{cold_start.QUICK_SYNTHETIC_CATEGORY}_rd4ad.json"
    before = json.loads(table.read_text())
    table.unlink()
    args = ["--quick", "--output", str(quick_run), "--seeds", "0", "--baselines", "rd4ad", "--tables-only"]
    assert _main(args) == 0
    assert "[run ]" not in capsys.readouterr().out
    after = json.loads(table.read_text())
    # Only seed 0 was asked for: the same rows, each from one seed, equal to that seed's stored value.
    assert [(r["arm"], r["score"]) for r in after["rows"]] == [(r["arm"], r["score"]) for r in before["rows"]]
    for row_before, row_after in zip(before["rows"], after["rows"]):
        assert row_after["seeds"] == [0]
        for metric in cold_start.METRICS:
            assert row_after["metrics"][metric]["values"] == row_before["metrics"][metric]["values"][:1]
    summary = json.loads((quick_run / "summary.json").read_text())
    assert "--tables-only" not in summary["command"]


def test_resuming_with_other_settings_is_refused(quick_run: Path) -> None:
    args = ["--quick", "--output", str(quick_run), "--seeds", "0", "--baselines", "rd4ad", "--steps", "3"]
    with pytest.raises(ValueError, match="other settings"):
        _main(args)


def test_mean_std_matches_the_textbook_formulas() -> None:
    values = [1.0, 2.0, 4.0]
    mean, std = cold_start.mean_std(values)
    assert mean == pytest.approx(7.0 / 3.0)
    assert std == pytest.approx(math.sqrt(sum((v - 7.0 / 3.0) ** 2 for v in values) / 2))
    assert cold_start.mean_std([3.0]) == (3.0, 0.0)
    assert all(math.isnan(x) for x in cold_start.mean_std([1.0, math.nan]))


def test_diagnostics_summary_reads_the_harness_layout() -> None:
    steps = 40
    history = [{"step": 1, "loss_spm": 0.0, "initialized": False}]  # before initialisation: left out
    history += [
        {"step": i, "loss_spm": float(i), "initialized": True, "anomalous_fraction": 0.1 * (i % 2),
         "disc_acc_normal": 0.5}
        for i in range(2, steps + 2)
    ]
    diagnostics = {"tire": {"history": history, "prototype_usage": [0, 3, 1, 0]}}
    s = cold_start.diagnostics_summary(diagnostics, "tire")
    # first = mean of the first 5% of the 40 initialised steps (2 steps), last = mean of the last 10% (4 steps).
    assert s["terms"]["loss_spm"] == {"first": pytest.approx(2.5), "last": pytest.approx((38 + 39 + 40 + 41) / 4)}
    assert s["anomalous_fraction"]["mean"] == pytest.approx(0.05)
    assert s["discriminator_accuracy"]["normal"]["last"] == pytest.approx(0.5)
    assert (s["prototypes_used"], s["num_prototypes"], s["max_share"]) == (2, 4, pytest.approx(0.75))
    assert s["effective_prototypes"] == pytest.approx(math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))))
    assert cold_start.diagnostics_summary(None) == {}


def _record(arm: str, seed: int, i_auroc: float) -> dict:
    kinds = ("recon",) if arm == "baseline" else cold_start.SCORE_KINDS
    scores = {k: {m: i_auroc for m in cold_start.METRICS} for k in kinds}
    return {"category": "c", "baseline": "rd4ad", "arm": arm, "seed": seed, "scores": scores,
            "train_time_s": 1.0, "eval_time_s": 1.0, "wall_time_s": 2.0}


def test_gains_use_only_the_seeds_that_have_both_arms() -> None:
    records = [_record("baseline", 0, 0.5), _record("arcad", 0, 0.75), _record("arcad", 1, 0.25)]
    table = cold_start.aggregate(records)["c/rd4ad"]
    assert table["num_seeds"] == 1
    recon = table["rows"][1]["metrics"]["i_auroc"]
    assert recon["mean"] == pytest.approx(50.0)  # both +ArcAD seeds enter its mean ...
    assert recon["gain"] == pytest.approx(25.0)  # ... but only seed 0 has a baseline to compare with
    assert recon["gain_seeds"] == [0]


@pytest.mark.parametrize(
    ("arm", "lambdas", "options", "arcad"),
    [
        ("baseline", (0.1, 0.2, 0.3), {}, False),
        ("arcad", (0.1, 0.2, 0.3), {}, True),
        ("spm", (0.1, 0.0, 0.0), {}, True),
        ("spm_dgc", (0.1, 0.2, 0.0), {}, True),
        ("cls", (0.0, 0.0, 0.3), {}, True),
        ("sigma_dim", (0.1, 0.2, 0.3), {"sigma_reference_dim": 768}, True),
        ("focal_balanced", (0.1, 0.2, 0.3), {"alpha": 0.5, "cls_weighting": "classes"}, True),
        ("cls_detached", (0.1, 0.2, 0.3), {"detach_cls": True}, True),
        ("mask_quarter", (0.1, 0.2, 0.3), {"mask_threshold": 0.25}, True),
        ("mask_fraction", (0.1, 0.2, 0.3), {"mask_weighting": "fraction"}, True),
        ("mask_fraction_mean", (0.1, 0.2, 0.3), {"mask_weighting": "fraction_mean"}, True),
        ("noise_range", (0.1, 0.2, 0.3), {"sigma_max": 0.12}, True),
        ("push_margin", (0.1, 0.2, 0.3), {"push_margin": 0.8}, True),
        ("fusion_holdout", (0.1, 0.2, 0.3), {}, True),
        ("disc_distance", (0.1, 0.2, 0.3), {"discriminator_distance": True}, True),
    ],
)
def test_each_arm_sets_its_lambdas_and_options(arm, lambdas, options, arcad, tmp_path: Path) -> None:
    settings = {"lambdas": [0.1, 0.2, 0.3], "steps": 2}
    cfg = cold_start.make_config(settings, baseline="rd4ad", arm=arm, category="grid", seed=0,
                                 split_path=tmp_path / "split.json")
    assert cfg.arcad is arcad
    assert tuple(cfg.lambdas) == pytest.approx(lambdas)
    assert cfg.arcad_options == options
    assert cfg.fusion_holdout == (3 if arm == "fusion_holdout" else 0)
    cfg.validate()
    with pytest.raises(ValueError, match="arm"):
        cold_start.make_config(settings, baseline="rd4ad", arm="nope", category="grid", seed=0,
                               split_path=tmp_path / "split.json")


def test_fields_an_arm_sets_are_not_shared_settings() -> None:
    """What an arm sets per run (ArcAD options, harness settings) stays out of the settings that every stored run
    must share, so adding an arm never invalidates the runs stored before it."""
    per_arm = {"arcad_options"} | {key for options in cold_start.ARM_HARNESS.values() for key in options}
    assert per_arm <= set(cold_start.PER_RUN_FIELDS)
    assert not per_arm & set(cold_start._resolve_defaults({"steps": 2}))


def test_ablation_arms_resume_into_the_same_folder_and_table(quick_run: Path) -> None:
    """Further arms run later into the folder of the main ones: the stored runs are reused, the tables grow."""
    args = ["--quick", "--output", str(quick_run), "--seeds", "0", "--baselines", "rd4ad", "--arms", "cls"]
    assert _main(args) == 0
    table = json.loads((quick_run / "tables" / f"{cold_start.QUICK_SYNTHETIC_CATEGORY}_rd4ad.json").read_text())
    assert [r["arm"] for r in table["rows"]][0] == "baseline"
    assert {r["arm"] for r in table["rows"][1:]} == {"+ArcAD", "+L_cls"}  # the stored main arm stays
    cls_rows = [r for r in table["rows"] if r["arm"] == "+L_cls"]
    assert all("gain" in r["metrics"]["i_auroc"] for r in cls_rows)
    stored = json.loads((quick_run / "runs" / cold_start.QUICK_SYNTHETIC_CATEGORY / "rd4ad" / "cls" / "seed0.json")
                        .read_text())
    assert stored["harness_config"]["lambdas"][:2] == [0.0, 0.0]


def test_fusion_summary_states_weights_and_in_sample_and_test_auroc(quick_run: Path) -> None:
    args = ["--quick", "--output", str(quick_run), "--seeds", "0", "1", "--baselines", *QUICK_BASELINES]
    assert _main([*args, "--tables-only"]) == 0
    rows = json.loads((quick_run / "fusion.json").read_text())
    arcad_runs = list((quick_run / "runs").rglob("arcad/seed*.json"))
    assert len([r for r in rows if r["arm"] == "arcad"]) == len(arcad_runs) > 0
    for row in rows:
        assert sum(row["weights"].values()) == pytest.approx(1.0)
        assert row["fitted_on"] == "training" and row["fit_images"] >= 1
        assert set(row["train_p_auroc"]) == set(row["test_p_auroc"]) == set(cold_start.FUSED_KINDS)
        record = json.loads(
            (quick_run / "runs" / row["category"] / row["baseline"] / row["arm"] / f"seed{row['seed']}.json").read_text()
        )
        for kind in cold_start.FUSED_KINDS:
            assert row["test_p_auroc"][kind] == pytest.approx(100 * record["scores"][kind]["p_auroc"])
    assert "in-sample" in (quick_run / "fusion.md").read_text()


def test_exported_runs_rebuild_the_same_tables_elsewhere(
    quick_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Runs exported in compact form and read back with --stored (another output, another data folder): nothing
    is run again, and the tables and diagnostics equal those of the full runs."""
    args = ["--quick", "--seeds", "0", "1", "--baselines", *QUICK_BASELINES]
    exported = tmp_path / "published"
    assert _main([*args, "--output", str(quick_run), "--tables-only", "--export", str(exported)]) == 0
    compact = sorted((exported / "runs").rglob("*.json"))
    assert len(compact) == len(sorted((quick_run / "runs").rglob("*.json")))
    for path in compact:
        record = json.loads(path.read_text())
        assert record["diagnostics"] is None and isinstance(record["diagnostics_summary"], dict)
        assert '"/' not in path.read_text()  # no absolute local path
        assert "/" not in record["split"] and "/" not in record["settings"]["data_root"]
    capsys.readouterr()

    elsewhere = tmp_path / "elsewhere"
    assert _main([*args, "--output", str(elsewhere), "--stored", str(exported)]) == 0
    out = capsys.readouterr().out
    asked = [p for p in compact if p.parent.name in cold_start.DEFAULT_ARMS]  # other arms join the tables silently
    assert "[run ]" not in out and out.count("stored in") == len(asked) > 0
    assert not (elsewhere / "runs").exists()
    for name in [p.name for p in (quick_run / "tables").glob("*.json")]:
        full = json.loads((quick_run / "tables" / name).read_text())
        rebuilt = json.loads((elsewhere / "tables" / name).read_text())
        assert rebuilt["rows"] == full["rows"]
    for name in ("diagnostics.json", "fusion.json"):
        assert json.loads((elsewhere / name).read_text()) == json.loads((quick_run / name).read_text())
    summary = json.loads((elsewhere / "summary.json").read_text())
    assert "--stored" not in summary["command"] and "--export" not in summary["command"]


def test_stored_runs_with_other_settings_are_refused(quick_run: Path, tmp_path: Path) -> None:
    exported = tmp_path / "published"
    base = ["--quick", "--seeds", "0", "--baselines", "rd4ad"]
    assert _main([*base, "--output", str(quick_run), "--tables-only", "--export", str(exported)]) == 0
    with pytest.raises(ValueError, match="steps"):
        _main([*base, "--output", str(tmp_path / "other"), "--stored", str(exported), "--steps", "3"])


def test_fusion_summary_says_what_the_weights_were_fitted_on() -> None:
    scores = {k: {"p_auroc": 0.5} for k in cold_start.FUSED_KINDS}
    weights = {"recon": 0.2, "prototype": 0.8, "discriminator": 0.0}

    def record(arm: str, fusion: dict) -> dict:
        return {"category": "tire", "baseline": "rd4ad", "arm": arm, "seed": 0, "scores": scores,
                "fusion": {"tire": {"weights": weights, **fusion}}}

    rows = cold_start.fusion_summary([
        record("arcad", {}),  # a run stored before the fields existed
        record("arcad", {"held_out": False, "fit_images": 7}),
        record("fusion_holdout", {"held_out": True, "fit_images": 3}),
        {**record("baseline", {}), "fusion": {}},
    ])
    assert [(r["arm"], r["fitted_on"], r["fit_images"]) for r in rows] == [
        ("arcad", "training", None), ("arcad", "training", 7), ("fusion_holdout", "withheld", 3)
    ]
    text = cold_start._fusion_lines(rows)
    assert "| fusion_holdout | 0 | withheld (3) | 0.2 / 0.8 / 0.0 |" in text
    assert "| arcad | 0 | training | 0.2 / 0.8 / 0.0 |" in text


def test_compact_record_keeps_what_the_tables_read() -> None:
    history = [{"step": i, "initialized": True, "loss": 1.0 / (i + 1), "loss_spm": 0.5} for i in range(40)]
    record = {"category": "tire", "baseline": "rd4ad", "arm": "arcad", "seed": 0, "split": "/somewhere/seed0.json",
              "settings": {"data_root": "/data/sets/mvtec", "steps": 10},
              "harness_config": {"data_root": "/data/sets/mvtec", "split_path": "/out/seed0.json", "output_dir": None},
              "scores": {"recon": {"i_auroc": 0.75}}, "diagnostics": {"tire": {"history": history}}}
    compact = cold_start.compact_record(record)
    assert compact["diagnostics"] is None and compact["split"] == "seed0.json"
    assert compact["settings"] == {"data_root": "mvtec", "steps": 10}
    assert compact["harness_config"] == {"data_root": "mvtec", "split_path": "seed0.json", "output_dir": None}
    assert compact["scores"] == record["scores"]
    assert compact["diagnostics_summary"] == cold_start.diagnostics_summary(record["diagnostics"], "tire")
    assert cold_start.compact_record(compact) == compact  # compacting twice changes nothing
    assert record["diagnostics"]["tire"]["history"] is history  # the input is left alone


def test_ablation_table_has_one_line_per_arm_with_its_own_maps() -> None:
    def run(arm: str, seed: int, recon: float, proto: float | None = None) -> dict:
        scores = {"recon": {m: recon for m in cold_start.METRICS}}
        if proto is not None:
            scores["prototype"] = {m: proto for m in cold_start.METRICS}
        return {"category": "tire", "baseline": "rd4ad", "arm": arm, "seed": seed, "scores": scores,
                "train_time_s": 1.0, "eval_time_s": 1.0, "wall_time_s": 2.0}

    records = [run("baseline", 0, 0.80), run("baseline", 1, 0.70), run("arcad", 0, 0.85, 0.6),
               run("arcad", 1, 0.71, 0.5), run("spm", 0, 0.90, 0.4)]
    text = cold_start.ablation_markdown(cold_start.aggregate(records)["tire/rd4ad"])
    lines = [line for line in text.splitlines() if line.startswith("| ")][1:]
    assert [line.split(" | ")[0] for line in lines] == ["| baseline", "| +ArcAD", "| +L_spm"]
    # two seeds: mean ± std, the gain per seed (+5, +1) then mean ± std; one seed: the bare values
    assert lines[1].split(" | ")[2] == "78.0 ± 9.9 (+3.0 ± 2.8)"
    assert lines[1].split(" | ")[6] == "55.0 ± 7.1"
    assert lines[2].split(" | ")[1:3] == ["1", "90.0 (+10.0)"]
    assert lines[0].split(" | ")[6:] == ["-", "- |"]


def test_comparison_table_prints_each_score_kind_with_its_paired_gain() -> None:
    def run(arm: str, seed: int, values: dict[str, float]) -> dict:
        return {"category": "tire", "baseline": "rd4ad", "arm": arm, "seed": seed,
                "scores": {k: {m: v for m in cold_start.METRICS} for k, v in values.items()},
                "train_time_s": 1.0, "eval_time_s": 1.0, "wall_time_s": 2.0}

    records = [run("baseline", 0, {"recon": 0.80}), run("baseline", 1, {"recon": 0.70}),
               run("arcad", 0, {"recon": 0.85, "prototype": 0.90}), run("arcad", 1, {"recon": 0.71, "prototype": 0.5}),
               run("cls", 2, {"recon": 0.6})]  # no baseline for seed 2: no gain
    text = cold_start.comparison_markdown(cold_start.aggregate(records)["tire/rd4ad"])
    lines = [line.split(" | ") for line in text.splitlines() if line.startswith("| ")][1:]
    assert [cells[:3] for cells in lines] == [["| baseline", "recon", "2"], ["| +ArcAD", "recon", "2"],
                                             ["| +ArcAD", "prototype", "2"], ["| +L_cls", "recon", "1"]]
    assert lines[0][3] == "75.0 ± 7.1"
    assert lines[2][3] == "70.0 ± 28.3 (-5.0 ± 21.2)"  # +10 and -20 over the same seeds' baseline
    assert lines[3][3] == "60.0"
