"""The command line: the tables it writes, --tables-only without data, --export / --stored, --write-docs and
--check-docs."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from benchmarks.coldstart import cli
from benchmarks.coldstart.arms import DEFAULT_ARMS
from benchmarks.coldstart.records import RunRecord, load_runs
from benchmarks.coldstart.tables import FUSED_KINDS, METRIC_LABELS, METRICS, SCORE_KINDS

from helpers import REPO_ROOT

CATEGORY = cli.QUICK["category"]
QUICK_BASELINES = ("rd4ad", "dinomaly")  # conftest.QUICK_ARGS
STORED = REPO_ROOT / "benchmarks" / "results" / "bench256"


def test_tables_have_every_row_metric_and_gain(quick_run: Path) -> None:
    for baseline in QUICK_BASELINES:
        table = json.loads((quick_run / "tables" / f"{CATEGORY}_{baseline}.json").read_text())
        assert table["num_seeds"] == 2
        assert table["config"]["image_size"] == cli.QUICK["image_size"]
        assert table["config"]["steps"] == cli.QUICK["steps"]
        kinds = [(r["arm"], r["score"]) for r in table["rows"]]
        assert kinds == [("baseline", "recon")] + [("+ArcAD", k) for k in SCORE_KINDS]
        assert "gain" not in table["rows"][0]["metrics"]["i_auroc"]
        for row in table["rows"]:
            assert row["seeds"] == [0, 1]
            assert set(row["metrics"]) == set(METRICS)
            assert row["train_time_s"]["mean"] > 0
        base_values = table["rows"][0]["metrics"]
        for row in table["rows"][1:]:
            for metric in METRICS:
                entry = row["metrics"][metric]
                if not math.isfinite(entry["mean"]):
                    continue
                # The gain is the difference of the means, and the paired gains average to the same number.
                assert entry["gain"] == pytest.approx(entry["mean"] - base_values[metric]["mean"])
                assert entry["paired_gain_mean"] == pytest.approx(entry["gain"])
        markdown = (quick_run / "tables" / f"{CATEGORY}_{baseline}.md").read_text()
        assert markdown.count("\n| ") == 1 + len(table["rows"])  # header + rows
        for label in METRIC_LABELS.values():
            assert label in markdown


def test_summary_states_configuration_machine_and_diagnostics(quick_run: Path) -> None:
    summary = json.loads((quick_run / "summary.json").read_text())
    for key in ("steps", "batch_size", "image_size", "num_prototypes", "lambdas", "seeds"):
        assert key in summary["config"]
    assert summary["machine"]["cpu_count"] >= 1
    assert len(summary["tables"]) == len(QUICK_BASELINES)
    assert summary["total_wall_time_s"] > 0
    assert summary["command"].startswith("python -m benchmarks.coldstart --quick")
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
    # one row per run, each naming its arm (several arms share a category, detector and seed)
    rows = [line for line in (quick_run / "diagnostics.md").read_text().splitlines() if line.startswith("| ")][1:]
    assert len(rows) == len(diag)
    assert sorted(row.split(" | ")[2] for row in rows) == sorted(entry["arm"] for entry in diag)
    for row in rows:
        cells = row.strip("| ").split(" | ")
        assert "→" in cells[7]  # the reconstruction loss, first -> last, for every run
        if cells[2] == "baseline":
            assert cells[4:7] == ["n/a"] * 3 and cells[8:] == ["n/a"] * 5


def test_tables_only_rewrites_the_tables_without_running(
    quick_run: Path, capsys: pytest.CaptureFixture[str], run_bench
) -> None:
    table = quick_run / "tables" / f"{CATEGORY}_rd4ad.json"
    before = json.loads(table.read_text())
    table.unlink()
    args = ["--quick", "--output", str(quick_run), "--seeds", "0", "--baselines", "rd4ad", "--tables-only"]
    assert run_bench(args) == 0
    assert "[run ]" not in capsys.readouterr().out
    after = json.loads(table.read_text())
    # Only seed 0 was asked for: the same rows, each from one seed, equal to that seed's stored value.
    assert [(r["arm"], r["score"]) for r in after["rows"]] == [(r["arm"], r["score"]) for r in before["rows"]]
    for row_before, row_after in zip(before["rows"], after["rows"]):
        assert row_after["seeds"] == [0]
        for metric in METRICS:
            assert row_after["metrics"][metric]["values"] == row_before["metrics"][metric]["values"][:1]
    summary = json.loads((quick_run / "summary.json").read_text())
    assert "--tables-only" not in summary["command"]


def test_fusion_summary_states_weights_and_in_sample_and_test_auroc(
    quick_run: Path, run_bench, quick_args: list[str]
) -> None:
    assert run_bench([*quick_args, "--output", str(quick_run), "--tables-only"]) == 0
    rows = json.loads((quick_run / "fusion.json").read_text())
    arcad_runs = list((quick_run / "runs").rglob("arcad/seed*.json"))
    assert len([r for r in rows if r["arm"] == "arcad"]) == len(arcad_runs) > 0
    for row in rows:
        assert sum(row["weights"].values()) == pytest.approx(1.0)
        assert row["fitted_on"] == "training" and row["fit_images"] >= 1
        assert set(row["train_p_auroc"]) == set(row["test_p_auroc"]) == set(FUSED_KINDS)
        record = RunRecord.load(quick_run / "runs" / row["category"] / row["baseline"] / row["arm"]
                                / f"seed{row['seed']}.json")
        for kind in FUSED_KINDS:
            assert row["test_p_auroc"][kind] == pytest.approx(record.percent(kind, "p_auroc"))
    assert "in-sample" in (quick_run / "fusion.md").read_text()


def test_exported_runs_rebuild_the_same_tables_elsewhere(
    quick_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], run_bench, quick_args: list[str]
) -> None:
    """Runs exported in compact form and read back with --stored (another output, another data folder): nothing
    is run again, and the tables and diagnostics equal those of the full runs."""
    exported = tmp_path / "published"
    assert run_bench([*quick_args, "--output", str(quick_run), "--tables-only", "--export", str(exported)]) == 0
    compact = sorted((exported / "runs").rglob("*.json"))
    assert len(compact) == len(sorted((quick_run / "runs").rglob("*.json")))
    for path in compact:
        record = RunRecord.load(path)
        assert record.is_compact and isinstance(record.diagnostics_summary, dict)
        assert '"/' not in path.read_text()  # no absolute local path
        assert "/" not in record.split and "/" not in record.settings["data_root"]
    capsys.readouterr()

    elsewhere = tmp_path / "elsewhere"
    assert run_bench([*quick_args, "--output", str(elsewhere), "--stored", str(exported)]) == 0
    out = capsys.readouterr().out
    asked = [p for p in compact if p.parent.name in DEFAULT_ARMS]  # other arms join the tables silently
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


def test_stored_runs_with_other_settings_are_refused(quick_run: Path, tmp_path: Path, run_bench) -> None:
    exported = tmp_path / "published"
    base = ["--quick", "--seeds", "0", "--baselines", "rd4ad"]
    assert run_bench([*base, "--output", str(quick_run), "--tables-only", "--export", str(exported)]) == 0
    with pytest.raises(ValueError, match="steps"):
        run_bench([*base, "--output", str(tmp_path / "other"), "--stored", str(exported), "--steps", "3"])
    with pytest.raises(SystemExit, match="other settings.*steps: stored 2, now 3"):  # also without training
        run_bench([*base, "--stored", str(exported), "--steps", "3", "--tables-only"])


def test_tables_only_needs_neither_data_nor_an_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The published tables from the stored runs alone: no --data-root, nothing trained, no harness run."""
    out = tmp_path / "tables"
    assert cli.main(["--stored", str(STORED), "--tables-only", "--output", str(out)]) == 0
    assert "[run ]" not in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["tables"]) >= {f"{c}/{d}" for c in ("magnetic_tile", "tire")
                                      for d in ("dinomaly", "rd4ad", "recontrast")}
    assert set(summary["tables"]) == {f"{r.category}/{r.baseline}" for r in load_runs(STORED)}
    assert summary["config"]["seeds"] == [0, 1, 2] and summary["config"]["steps"] == 1000
    assert not (out / "runs").exists() and not (out / "splits").exists()
    # settings given on the command line are checked against the stored runs'
    assert cli.main(["--stored", str(STORED), "--tables-only", "--steps", "1000", "--image-size", "256"]) == 0
    with pytest.raises(SystemExit, match="image_size: stored 256, now 128"):
        cli.main(["--stored", str(STORED), "--tables-only", "--image-size", "128"])
    with pytest.raises(SystemExit, match="needs runs"):
        cli.main(["--tables-only"])
    with pytest.raises(SystemExit, match="--output is required"):
        cli.main(["--stored", str(STORED)])


def test_runs_of_one_table_with_different_settings_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    shutil.copytree(STORED / "runs" / "tire" / "rd4ad" / "baseline", folder / "runs" / "tire" / "rd4ad" / "baseline")
    path = folder / "runs" / "tire" / "rd4ad" / "baseline" / "seed1.json"
    data = json.loads(path.read_text())
    data["settings"]["steps"] = 500
    path.write_text(json.dumps(data, indent=1) + "\n")
    with pytest.raises(SystemExit, match="different settings.*steps"):
        cli.main(["--stored", str(folder), "--tables-only"])


def test_write_docs_regenerates_the_blocks_and_check_docs_sees_a_stale_page(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page = tmp_path / "page.md"
    fresh = ("# Page\n\nkept\n\n<!-- generated: comparison tire/rd4ad arms=baseline,arcad -->\nold\n"
             "<!-- end generated -->\n\nkept too\n")
    page.write_text(fresh)
    args = ["--stored", str(STORED), "--tables-only"]
    assert cli.main([*args, "--check-docs", str(page)]) == 1
    assert "not up to date" in capsys.readouterr().out
    assert cli.main([*args, "--write-docs", str(page)]) == 0
    text = page.read_text()
    assert text.startswith("# Page\n\nkept\n\n") and text.endswith("<!-- end generated -->\n\nkept too\n")
    assert "#### tire: RD4AD-style, EfficientNet-Lite0" in text
    assert "| +ArcAD | recon | 3 | 78.7 ± 3.1 (-2.5 ± 6.2) |" in text
    assert "+L_spm" not in text  # only the arms asked for
    assert cli.main([*args, "--check-docs", str(page)]) == 0
    assert cli.main([*args, "--write-docs", str(page)]) == 0 and page.read_text() == text  # idempotent


def test_command_arguments_leave_out_what_only_reads_or_renders() -> None:
    argv = ["--quick", "--stored", "a", "b", "--seeds", "0", "--tables-only", "--export=x", "--write-docs", "p.md",
            "--check-docs", "q.md", "--steps", "3"]
    assert cli.command_arguments(argv) == ["--quick", "--seeds", "0", "--steps", "3"]


def test_the_former_script_forwards_to_the_package() -> None:
    """``python benchmarks/cold_start.py ...`` still works: it runs ``python -m benchmarks.coldstart ...``."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "cold_start.py"), "--stored", str(STORED), "--tables-only",
         "--check-docs", str(REPO_ROOT / "docs" / "results.md")],
        capture_output=True, text=True, cwd=REPO_ROOT / "docs", timeout=120,
    )
    assert result.returncode == 0, result.stderr
