"""The typed run record: every stored run loads and writes back unchanged, compaction, settings checks, and the
records the old single-file benchmark wrote."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks.coldstart import records
from benchmarks.coldstart.records import RunRecord, SettingsMismatch

from helpers import REPO_ROOT

STORED = REPO_ROOT / "benchmarks" / "results" / "bench256"


def test_every_stored_run_loads_and_writes_back_byte_for_byte(tmp_path: Path) -> None:
    paths = sorted((STORED / "runs").rglob("seed*.json"))
    assert len(paths) >= 94
    loaded = records.load_runs(STORED)
    assert len(loaded) == len(paths)
    for path, record in zip(paths, loaded):
        assert record.key == (*path.relative_to(STORED / "runs").parts[:3], int(path.stem.removeprefix("seed")))
        assert record.is_compact and record.encoder == "efficientnet_lite0"
        out = tmp_path / "copy.json"
        record.save(out)
        assert out.read_bytes() == path.read_bytes(), path
        assert record.compact() == record  # already compact


def _old_full_record() -> dict:
    """A run as the single-file benchmark (``benchmarks/cold_start.py`` before the package) wrote it: the full
    per-step history and local paths, no diagnostics summary."""
    history = [{"step": i, "initialized": i > 0, "loss": 1.0 / (i + 1), "loss_spm": 0.5, "disc_acc_normal": 0.25}
               for i in range(40)]
    return {
        "format_version": 1,
        "settings": {"data_root": "/data/sets/mvtec", "steps": 10, "encoder": "efficientnet_lite0"},
        "category": "tire", "baseline": "rd4ad", "arm": "arcad", "seed": 0, "split": "/somewhere/seed0.json",
        "scores": {"recon": {"i_auroc": 0.75, "p_auroc": 0.5, "p_f1_max": 0.25, "aupro": 0.125}},
        "train_time_s": 3.0, "eval_time_s": 1.0, "wall_time_s": 4.5, "torch_threads": 1,
        "diagnostics": {"tire": {"history": history, "prototype_usage": [3, 1], "patch_grid": [16, 16]}},
        "fusion": None,
        "harness_config": {"data_root": "/data/sets/mvtec", "split_path": "/out/seed0.json", "output_dir": None,
                           "resume_dir": "/out/snapshots/tire/rd4ad/arcad/seed0", "num_prototypes": 2},
        "harness_split": {"tire": {"train_normal": 63}},
    }


def test_a_full_record_of_the_old_benchmark_loads_and_compacts(tmp_path: Path) -> None:
    path = tmp_path / "seed0.json"
    path.write_text(json.dumps(_old_full_record(), indent=1) + "\n")
    record = RunRecord.load(path)
    assert not record.is_compact
    assert record.percent("recon", "i_auroc") == pytest.approx(75.0)
    assert math.isnan(record.percent("prototype", "i_auroc"))
    assert record.model_diagnostics()["patch_grid"] == [16, 16]
    record.save(tmp_path / "again.json")
    assert (tmp_path / "again.json").read_bytes() == path.read_bytes()

    compact = record.compact()
    assert compact.diagnostics is None and compact.split == "seed0.json"
    assert compact.settings == {"data_root": "mvtec", "steps": 10, "encoder": "efficientnet_lite0"}
    assert compact.harness_config == {"data_root": "mvtec", "split_path": "seed0.json", "output_dir": None,
                                      "resume_dir": "seed0", "num_prototypes": 2}
    assert compact.scores == record.scores
    assert compact.diagnostics_summary == records.diagnostics_summary(record.diagnostics, "tire")
    assert compact.summary() == record.summary()  # the tables read the same from both
    assert compact.compact() == compact  # compacting twice changes nothing
    assert len(record.diagnostics["tire"]["history"]) == 40  # the input is left alone
    assert '"/' not in json.dumps(compact.to_dict())  # no absolute local path


def test_older_files_without_the_later_keys_load() -> None:
    data = _old_full_record()
    for key in ("torch_threads", "harness_split", "fusion", "format_version"):
        del data[key]
    data["something_new"] = {"kept": True}
    record = RunRecord.from_dict(data)
    assert record.torch_threads is None and record.format_version == records.RUN_FORMAT_VERSION
    assert record.to_dict()["something_new"] == {"kept": True}  # unknown keys are kept, not dropped


def test_files_that_are_not_run_records_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a run record: no scores"):
        RunRecord.from_dict({"category": "tire", "baseline": "rd4ad", "arm": "arcad", "seed": 0})
    with pytest.raises(ValueError, match="newer"):
        RunRecord.from_dict({**_old_full_record(), "format_version": records.RUN_FORMAT_VERSION + 1})
    bad = tmp_path / "seed0.json"
    bad.write_text("{}")
    with pytest.raises(ValueError, match=str(bad)):
        RunRecord.load(bad)
    with pytest.raises(FileNotFoundError, match="no runs under"):
        records.load_runs(tmp_path)


def test_settings_check_names_each_difference_and_ignores_where_the_data_lies() -> None:
    record = RunRecord.from_dict(_old_full_record())
    record.check_settings({"data_root": "/elsewhere", "steps": 10, "encoder": "efficientnet_lite0"},
                          records.STORED_IGNORED)
    with pytest.raises(SettingsMismatch, match="data_root: stored '/data/sets/mvtec', now '/elsewhere'"):
        record.check_settings({"data_root": "/elsewhere", "steps": 10, "encoder": "efficientnet_lite0"})
    with pytest.raises(SettingsMismatch, match="steps: stored 10, now 20.*other --output"):
        record.check_settings({"steps": 20, "encoder": "efficientnet_lite0"}, records.STORED_IGNORED)
    # resume-only settings never count
    record.check_settings({"data_root": "/data/sets/mvtec", "steps": 10, "encoder": "efficientnet_lite0",
                           "seeds": [0, 1], "arms": ["arcad"], "log_every": 5})


def test_run_file_layout() -> None:
    assert records.run_file(Path("out"), "tire", "rd4ad", "arcad", 2) == Path("out/runs/tire/rd4ad/arcad/seed2.json")


def test_diagnostics_summary_reads_the_harness_layout() -> None:
    steps = 40
    history = [{"step": 1, "loss_spm": 0.0, "initialized": False}]  # before initialisation: left out
    history += [
        {"step": i, "loss_spm": float(i), "initialized": True, "anomalous_fraction": 0.1 * (i % 2),
         "disc_acc_normal": 0.5}
        for i in range(2, steps + 2)
    ]
    diagnostics = {"tire": {"history": history, "prototype_usage": [0, 3, 1, 0]}}
    s = records.diagnostics_summary(diagnostics, "tire")
    # first = mean of the first 5% of the 40 initialised steps (2 steps), last = mean of the last 10% (4 steps).
    assert s["terms"]["loss_spm"] == {"first": pytest.approx(2.5), "last": pytest.approx((38 + 39 + 40 + 41) / 4)}
    assert s["anomalous_fraction"]["mean"] == pytest.approx(0.05)
    assert s["discriminator_accuracy"]["normal"]["last"] == pytest.approx(0.5)
    assert (s["prototypes_used"], s["num_prototypes"], s["max_share"]) == (2, 4, pytest.approx(0.75))
    assert s["effective_prototypes"] == pytest.approx(math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))))
    assert records.diagnostics_summary(None) == {}
