"""The runner in the quick mode: one file per run, shared splits, resuming (numbers are not asserted), and each
arm's harness configuration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks.coldstart import cli, runner
from benchmarks.coldstart.arms import ARMS, DEFAULT_ARMS
from benchmarks.coldstart.records import RunRecord, run_file
from benchmarks.coldstart.tables import METRICS, SCORE_KINDS


CATEGORY = cli.QUICK["category"]
QUICK_BASELINES = ("rd4ad", "dinomaly")  # conftest.QUICK_ARGS


def test_one_run_file_per_category_detector_arm_and_seed(quick_run: Path) -> None:
    runs = sorted(p.relative_to(quick_run / "runs").as_posix() for p in (quick_run / "runs").rglob("*.json"))
    expected = sorted(
        f"{CATEGORY}/{b}/{arm}/seed{s}.json" for b in QUICK_BASELINES for arm in DEFAULT_ARMS for s in (0, 1)
    )
    assert runs == expected


def test_both_arms_of_a_seed_share_one_split(quick_run: Path) -> None:
    for baseline in QUICK_BASELINES:
        for seed in (0, 1):
            records = [RunRecord.load(run_file(quick_run, CATEGORY, baseline, arm, seed)) for arm in DEFAULT_ARMS]
            assert records[0].split == records[1].split == str(quick_run / "splits" / f"seed{seed}.json")
            assert records[0].settings == records[1].settings
    split0 = json.loads((quick_run / "splits" / "seed0.json").read_text())
    split1 = json.loads((quick_run / "splits" / "seed1.json").read_text())
    assert split0["seed"] == 0 and split1["seed"] == 1


def test_arcad_runs_report_every_score_kind_and_baselines_recon(quick_run: Path) -> None:
    for baseline in QUICK_BASELINES:
        base = RunRecord.load(run_file(quick_run, CATEGORY, baseline, "baseline", 0))
        cal = RunRecord.load(run_file(quick_run, CATEGORY, baseline, "arcad", 0))
        assert set(base.scores) == {"recon"}
        assert set(cal.scores) == set(SCORE_KINDS)
        for scores in (base.scores["recon"], *cal.scores.values()):
            assert set(METRICS) <= set(scores)
        for record in (base, cal):
            assert record.train_time_s > 0 and record.wall_time_s >= record.train_time_s
            assert not record.is_compact and record.model_diagnostics()["history"]  # the runner keeps the history


def test_resuming_skips_existing_runs(quick_run: Path, capsys: pytest.CaptureFixture[str], run_bench,
                                      quick_args: list[str]) -> None:
    files = sorted((quick_run / "runs").rglob("*.json"))
    before = {p: p.stat().st_mtime_ns for p in files}
    assert run_bench([*quick_args, "--output", str(quick_run)]) == 0
    assert {p: p.stat().st_mtime_ns for p in files} == before
    out = capsys.readouterr().out
    assert out.count("[skip]") == len(files) and "[run ]" not in out


def test_resuming_with_other_settings_is_refused(quick_run: Path, run_bench) -> None:
    args = ["--quick", "--output", str(quick_run), "--seeds", "0", "--baselines", "rd4ad", "--steps", "3"]
    with pytest.raises(ValueError, match="other settings"):
        run_bench(args)


def test_ablation_arms_resume_into_the_same_folder_and_table(quick_run: Path, run_bench) -> None:
    """Further arms run later into the folder of the main ones: the stored runs are reused, the tables grow."""
    args = ["--quick", "--output", str(quick_run), "--seeds", "0", "--baselines", "rd4ad", "--arms", "cls"]
    assert run_bench(args) == 0
    table = json.loads((quick_run / "tables" / f"{CATEGORY}_rd4ad.json").read_text())
    assert [r["arm"] for r in table["rows"]][0] == "baseline"
    assert {r["arm"] for r in table["rows"][1:]} == {"+ArcAD", "+L_cls"}  # the stored main arm stays
    cls_rows = [r for r in table["rows"] if r["arm"] == "+L_cls"]
    assert all("gain" in r["metrics"]["i_auroc"] for r in cls_rows)
    stored = RunRecord.load(run_file(quick_run, CATEGORY, "rd4ad", "cls", 0))
    assert list(stored.harness_config["lambdas"][:2]) == [0.0, 0.0]


def _detector(name: str):
    harness = runner.harness()
    get = getattr(harness, "get_detector", None) or harness.load_example
    return get(name)


def test_a_run_stopped_in_the_middle_resumes_from_its_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], run_bench
) -> None:
    """With --resume-every 1, a run stopped in its second step continues after its first when the benchmark is
    started again, and stores the record of an uninterrupted run; the snapshot is gone afterwards and is not a
    setting (stored runs without it stay valid)."""
    pytest.importorskip("PIL")
    detector = _detector("rd4ad")
    args = ["--quick", "--seeds", "0", "--baselines", "rd4ad", "--arms", "arcad", "--steps", "3"]
    assert run_bench([*args, "--output", str(tmp_path / "uninterrupted")]) == 0
    reference = RunRecord.load(run_file(tmp_path / "uninterrupted", "grid", "rd4ad", "arcad", 0))

    out = tmp_path / "stopped"
    original, calls = detector.train_step, []

    def stopping(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*a, **k)

    with monkeypatch.context() as patch:
        patch.setattr(detector, "train_step", stopping)
        with pytest.raises(KeyboardInterrupt):
            run_bench([*args, "--output", str(out), "--resume-every", "1"])
    snapshot = runner.snapshot_dir(out, "grid", "rd4ad", "arcad", 0) / "rd4ad-arcad-grid.pt"
    assert torch.load(snapshot, weights_only=True)["step"] == 1
    assert not run_file(out, "grid", "rd4ad", "arcad", 0).exists()
    capsys.readouterr()

    assert run_bench([*args, "--output", str(out), "--resume-every", "1"]) == 0
    assert "after step 1/3" in capsys.readouterr().out
    record = RunRecord.load(run_file(out, "grid", "rd4ad", "arcad", 0))
    assert record.scores == reference.scores
    assert record.fusion == reference.fusion
    history = record.model_diagnostics()["history"]
    assert [r["loss"] for r in history] == [r["loss"] for r in reference.model_diagnostics()["history"]]
    assert not snapshot.exists() and list((out / "snapshots").iterdir()) == []  # no empty folders left either
    assert record.model_diagnostics()["resumed_after_step"] == 1
    assert "resumed_after_step" not in reference.model_diagnostics()
    assert not {"resume_dir", "resume_every"} & set(record.settings)
    assert record.harness_config["resume_every"] == 1
    assert record.compact().harness_config["resume_dir"] == "seed0"
    with pytest.raises(SystemExit, match="--resume-every must be >= 0"):
        run_bench([*args, "--output", str(out), "--resume-every", "-1"])


EXPECTED = {
    "baseline": ((0.1, 0.2, 0.3), {}, False),
    "arcad": ((0.1, 0.2, 0.3), {}, True),
    "spm": ((0.1, 0.0, 0.0), {}, True),
    "spm_dgc": ((0.1, 0.2, 0.0), {}, True),
    "cls": ((0.0, 0.0, 0.3), {}, True),
    "mask_quarter": ((0.1, 0.2, 0.3), {"mask_threshold": 0.25}, True),
    "mask_fraction": ((0.1, 0.2, 0.3), {"mask_weighting": "fraction"}, True),
    "missed": ((0.1, 0.2, 0.3), {"calibrate": "missed"}, True),
    "missed_no_spm": ((0.0, 0.2, 0.3), {"calibrate": "missed"}, True),
    "fusion_holdout": ((0.1, 0.2, 0.3), {}, True),
}


@pytest.mark.parametrize("arm", [arm.name for arm in ARMS if arm.trainable])
def test_each_arm_sets_its_lambdas_and_options(arm: str, tmp_path: Path) -> None:
    lambdas, options, arcad = EXPECTED[arm]  # a new trainable arm needs its line above
    settings = {"lambdas": [0.1, 0.2, 0.3], "steps": 2}
    cfg = runner.make_config(settings, baseline="rd4ad", arm=arm, category="grid", seed=0,
                             split_path=tmp_path / "split.json")
    assert cfg.arcad is arcad
    assert tuple(cfg.lambdas) == pytest.approx(lambdas)
    assert cfg.arcad_options == options
    assert cfg.fusion_holdout == (3 if arm == "fusion_holdout" else 0)
    cfg.validate()
    with pytest.raises(ValueError, match="arm"):
        runner.make_config(settings, baseline="rd4ad", arm="nope", category="grid", seed=0,
                           split_path=tmp_path / "split.json")


@pytest.mark.parametrize("arm", [arm.name for arm in ARMS if not arm.trainable])
def test_record_only_arms_are_refused_for_training(arm: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="record-only and cannot be trained: ArcAD's .* was removed"):
        runner.make_config({"steps": 2}, baseline="rd4ad", arm=arm, category="grid", seed=0,
                           split_path=tmp_path / "split.json")
    with pytest.raises(SystemExit, match=f"arm '{arm}' is record-only"):
        cli.main(["--quick", "--output", str(tmp_path / "out"), "--arms", "baseline", arm])
    assert not (tmp_path / "out").exists()  # refused before anything was made


def test_fields_an_arm_sets_are_not_shared_settings() -> None:
    """What an arm sets per run (ArcAD options, harness settings) stays out of the settings that every stored run
    must share, so adding an arm never invalidates the runs stored before it."""
    per_arm = {"arcad_options"} | {key for arm in ARMS for key in arm.harness_options}
    assert per_arm <= set(runner.PER_RUN_FIELDS)
    assert not per_arm & set(runner.resolve_defaults({"steps": 2}))
