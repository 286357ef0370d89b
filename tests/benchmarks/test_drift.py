"""benchmarks.drift: the windows and per-run counts of the training diagnostics, from a record built here."""

import json
import math

import pytest

from benchmarks import drift


def record(steps: int = 6) -> dict:
    history = []
    for step in range(1, steps + 1):
        row = {"step": step, "loss": 1.0, "loss_recon": 1.0 / step, "loss_dgc": 0.5, "initialized": True,
               "anomalous_patches": 0 if step % 3 == 0 else 4, "prototypes_in_use": 8 - step % 2,
               "normal_similarity": 1.0 - 0.1 * step}
        if step % 3:
            row["anomalous_similarity"] = 0.5
        if step % 2 == 0:
            row.update(grad_recon=2.0, grad_spm=0.1, grad_dgc=0.3, grad_cls=0.01, cos_spm=0.2, cos_dgc=-0.4,
                       cos_cls=0.0)
        history.append(row)
    diagnostics = {"tire": {"history": history, "test_recon_error": {"tire": {"normal": 0.1, "defect": 0.4}}}}
    scores = {"recon": {"i_auroc": 0.8, "p_auroc": 0.99, "p_f1_max": 0.3, "aupro": 0.95}}
    return {"category": "tire", "baseline": "rd4ad", "arm": "arcad", "seed": 0, "diagnostics": diagnostics,
            "scores": scores}


def test_windows_average_each_key_over_its_steps():
    rows = drift.windows(record()["diagnostics"]["tire"]["history"], 3)
    assert [r["steps"] for r in rows] == ["1-3", "4-6"]
    assert rows[0]["normal_similarity"] == pytest.approx(0.8)
    assert rows[1]["loss_recon"] == pytest.approx((1 / 4 + 1 / 5 + 1 / 6) / 3)
    assert rows[0]["anomalous_similarity"] == pytest.approx(0.5)  # steps without anomalies do not count


def test_run_summary_counts_batches_without_defects_and_keeps_the_logged_gradients(tmp_path, capsys):
    summary = drift.summarize_run(record(), 3)
    assert summary["steps_without_defect"] == 2 and summary["arcad_steps"] == 6
    assert [g["step"] for g in summary["gradients"]] == [2, 4, 6]
    assert summary["test_recon_error"] == {"normal": 0.1, "defect": 0.4}
    path = tmp_path / "seed0.json"
    path.write_text(json.dumps(record()))
    assert drift.main([str(path), "--window", "3"]) == 0
    out = capsys.readouterr().out
    assert "steps without an anomalous patch: 2 of 6" in out and "| 4 | 2.0000 |" in out
    baseline = record()
    for row in baseline["diagnostics"]["tire"]["history"]:
        for key in list(row):
            if key not in ("step", "loss", "loss_recon"):
                del row[key]
    plain = drift.summarize_run(baseline, 3)
    assert plain["arcad_steps"] == 0 and math.isnan(plain["windows"][0]["normal_similarity"])
