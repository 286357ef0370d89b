"""torch-arcad-defects on a generated MVTec-layout folder: thin scratches against blobs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from torch_arcad.defects import main

SIZE = 64


def make_category(root: Path, name: str, thin: bool) -> None:
    base = root / name
    rng = np.random.default_rng(0)
    for part, count in (("train/good", 12), ("test/good", 4), ("test/defect", 6)):
        folder = base / part
        folder.mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    masks = base / "ground_truth" / "defect"
    masks.mkdir(parents=True)
    for i in range(6):
        mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
        if thin:
            mask[10 + 5 * i, 4:60] = 255  # a 1-pixel scratch
        else:
            mask[8:40, 8 + 2 * i : 40 + 2 * i] = 255  # a blob over whole patches
        Image.fromarray(mask).save(masks / f"{i:03d}_mask.png")


@pytest.mark.parametrize("thin", [True, False])
def test_the_command_tells_thin_defects_from_filling_ones(tmp_path, capsys, thin):
    make_category(tmp_path, "widget", thin)
    assert main(["--data-root", str(tmp_path), "--category", "widget", "--grid", "4", "--image-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "images with a defect: 6 of 6" in out
    assert ("thin defects" in out) == thin and ("fill their patches" in out) == (not thin)
    if thin:
        assert "mean 5.5%" in out  # 56 pixels of one row over 4 patches of 16 x 16 pixels
    # the split's defective training images only
    assert main(["--data-root", str(tmp_path), "--category", "widget", "--grid", "4", "--image-size", "64",
                 "--split-seed", "0"]) == 0
    assert "cold-start split (seed 0)" in capsys.readouterr().out


def test_a_category_without_masks_is_an_error(tmp_path):
    (tmp_path / "bare" / "train" / "good").mkdir(parents=True)
    (tmp_path / "bare" / "test" / "good").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "bare" / "train" / "good" / "0.png")
    with pytest.raises(SystemExit):
        main(["--data-root", str(tmp_path), "--category", "bare"])
