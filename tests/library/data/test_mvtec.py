from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from torch_arcad.datasets.images import MVTecDataset
from torch_arcad.datasets.mvtec import (
    MVTecSample,
    list_categories,
    png_is_blank,
    scan_category,
)

SIZE = 12


def save(path: Path, array: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def pattern(seed: int, channels: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (SIZE, SIZE, channels) if channels > 1 else (SIZE, SIZE)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def square_mask(y: int, x: int, side: int = 4) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    mask[y : y + side, x : x + side] = 255
    return mask


def make_category(root: Path, name: str = "widget", n_train: int = 4, n_test_good: int = 2) -> Path:
    """A tiny category: RGB PNG / upper-case JPG / BMP images, two defect kinds with masks."""
    base = root / name
    for i in range(n_train):
        save(base / "train" / "good" / f"{i:03d}.png", pattern(i))
    for i in range(n_test_good):
        save(base / "test" / "good" / f"{i:03d}.png", pattern(100 + i))
    save(base / "test" / "crack" / "000.PNG", pattern(200))
    save(base / "test" / "crack" / "001.JPG", pattern(201), quality=95)
    save(base / "test" / "stain" / "000.bmp", pattern(202))
    save(base / "ground_truth" / "crack" / "000_mask.png", square_mask(1, 1))
    save(base / "ground_truth" / "crack" / "001_mask.png", square_mask(6, 6))
    save(base / "ground_truth" / "stain" / "000_mask.png", np.zeros((SIZE, SIZE), dtype=np.uint8))  # empty
    return base


# ----------------------------------------------------------------------------- scanning


def test_list_categories_ignores_files_and_unrelated_folders(tmp_path):
    make_category(tmp_path, "b_cat")
    make_category(tmp_path, "a_cat")
    (tmp_path / "notes").mkdir()
    (tmp_path / ".hidden" / "train").mkdir(parents=True)
    (tmp_path / "README.md").write_text("x")
    assert list_categories(tmp_path) == ["a_cat", "b_cat"]
    assert list_categories(str(tmp_path)) == ["a_cat", "b_cat"]


def test_list_categories_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_categories(tmp_path / "missing")
    (tmp_path / "stuff").mkdir()
    with pytest.raises(ValueError, match="not in the MVTec AD layout"):
        list_categories(tmp_path)
    base = make_category(tmp_path / "data")
    with pytest.raises(ValueError, match="single category, pass its parent"):
        list_categories(base)


def test_scan_category_lists_every_sample(tmp_path):
    make_category(tmp_path)
    (tmp_path / "widget" / "train" / "good" / ".DS_Store").write_text("x")
    (tmp_path / "widget" / "train" / "good" / "notes.txt").write_text("x")
    (tmp_path / "widget" / "validation" / "good").mkdir(parents=True)
    scan = scan_category(tmp_path, "widget")
    assert [s.image.name for s in scan.train_good] == ["000.png", "001.png", "002.png", "003.png"]
    assert all(s.label == 0 and s.defect == "good" and s.mask is None for s in scan.train_good + scan.test_good)
    assert len(scan.test_good) == 2
    assert [(s.image.name, s.defect, s.label) for s in scan.test_defects] == [
        ("000.PNG", "crack", 1),
        ("001.JPG", "crack", 1),
        ("000.bmp", "stain", 1),
    ]
    assert [s.mask.name for s in scan.test_defects] == ["000_mask.png", "001_mask.png", "000_mask.png"]
    assert all(s.category == "widget" for s in scan.train_good + scan.test_defects)
    assert scan.defect_kinds == ["crack", "stain"]
    assert {k: len(v) for k, v in scan.defects_by_kind().items()} == {"crack": 2, "stain": 1}
    assert scan.empty_masks == [tmp_path / "widget" / "ground_truth" / "stain" / "000_mask.png"]
    assert scan_category(tmp_path, "widget", check_masks=False).empty_masks == []


def test_scan_category_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError):
        scan_category(tmp_path / "nowhere", "widget")
    make_category(tmp_path)
    with pytest.raises(ValueError, match=r"unknown category 'gadget'.*available categories: widget"):
        scan_category(tmp_path, "gadget")

    (tmp_path / "only_test" / "test" / "good").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"missing folder .*only_test[/\\]train[/\\]good"):
        scan_category(tmp_path, "only_test")
    (tmp_path / "only_train" / "train" / "good").mkdir(parents=True)
    save(tmp_path / "only_train" / "train" / "good" / "0.png", pattern(0))
    with pytest.raises(ValueError, match=r"missing folder .*only_train[/\\]test'"):
        scan_category(tmp_path, "only_train")

    (tmp_path / "empty" / "train" / "good").mkdir(parents=True)
    (tmp_path / "empty" / "test").mkdir()
    with pytest.raises(ValueError, match=r"category 'empty' is empty"):
        scan_category(tmp_path, "empty")


def test_scan_category_missing_masks(tmp_path):
    base = make_category(tmp_path)
    (base / "ground_truth" / "crack" / "001_mask.png").unlink()
    with pytest.raises(ValueError, match=r"001\.JPG.*has no ground-truth mask.*001_mask\.png"):
        scan_category(tmp_path, "widget")
    scan = scan_category(tmp_path, "widget", allow_missing_masks=True)
    assert [s.mask is None for s in scan.test_defects] == [False, True, False]

    for path in sorted((base / "ground_truth").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (base / "ground_truth").rmdir()
    message = r"category 'widget' has defect images \(e\.g\. .*000\.PNG.*no ground-truth masks"
    with pytest.raises(ValueError, match=message):
        scan_category(tmp_path, "widget")


@pytest.mark.parametrize(
    "mode, dtype, channels",
    [("L", np.uint8, 1), ("RGB", np.uint8, 3), ("RGBA", np.uint8, 4), ("LA", np.uint8, 2), ("I;16", np.uint16, 1)],
)
def test_png_is_blank_agrees_with_pillow(tmp_path, mode, dtype, channels):
    rng = np.random.default_rng(0)
    shape = (9, 13) if channels == 1 else (9, 13, channels)
    for trial in range(4):
        array = np.zeros(shape, dtype=dtype)
        if trial:  # a few non-zero samples somewhere, at growing density
            flat = array.reshape(-1)
            flat[rng.choice(flat.size, size=trial**2, replace=False)] = rng.integers(1, 200, size=trial**2)
        path = tmp_path / f"{mode.replace(';', '')}_{trial}.png"
        image = Image.fromarray(array)
        assert image.mode == mode
        image.save(path, optimize=bool(trial % 2))
        expected = not np.asarray(Image.open(path)).any()
        assert png_is_blank(path) is expected


def test_png_is_blank_one_bit_and_unsupported(tmp_path):
    bits = np.zeros((5, 11), dtype=bool)
    Image.fromarray(bits).save(tmp_path / "blank1.png")
    bits[4, 10] = True
    Image.fromarray(bits).save(tmp_path / "dot1.png")
    assert png_is_blank(tmp_path / "blank1.png") is True
    assert png_is_blank(tmp_path / "dot1.png") is False
    Image.fromarray(np.zeros((4, 4), np.uint8)).convert("P").save(tmp_path / "palette.png")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "grey.jpg")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    for name in ("palette.png", "grey.jpg", "broken.png", "missing.png"):
        assert png_is_blank(tmp_path / name) is None


# ----------------------------------------------------------------------------- dataset


def test_dataset_items_have_the_documented_types(tmp_path):
    base = make_category(tmp_path)
    scan = scan_category(tmp_path, "widget")
    dataset = MVTecDataset(scan.train_good[:1] + scan.test_defects, image_size=SIZE)
    assert len(dataset) == 4
    normal = dataset[0]
    assert normal["image"].shape == (3, SIZE, SIZE) and normal["image"].dtype == torch.float32
    assert normal["mask"].shape == (1, SIZE, SIZE) and normal["mask"].dtype == torch.float32
    assert normal["label"].dtype == torch.int64 and normal["label"].item() == 0
    assert normal["mask"].sum() == 0
    assert normal["category"] == "widget" and normal["defect"] == "good"
    assert normal["path"] == str(base / "train" / "good" / "000.png")
    # At the native size, the image is the file's pixels / 255 exactly.
    assert torch.equal(normal["image"], torch.from_numpy(pattern(0)).permute(2, 0, 1).float() / 255)
    crack = dataset[1]
    assert crack["label"].item() == 1
    assert torch.equal(crack["mask"][0], torch.from_numpy(square_mask(1, 1) > 0).float())
    assert dataset[3]["mask"].sum() == 0  # the empty stain mask
    assert torch.equal(dataset.labels(), torch.tensor([0, 1, 1, 1]))


def test_dataset_resizes_like_pillow_and_binarises_masks(tmp_path):
    make_category(tmp_path)
    scan = scan_category(tmp_path, "widget")
    sample = scan.test_defects[0]
    item = MVTecDataset([sample], image_size=(7, 10))[0]
    assert item["image"].shape == (3, 7, 10) and item["mask"].shape == (1, 7, 10)
    expected = np.asarray(Image.open(sample.image).convert("RGB").resize((10, 7), Image.Resampling.BICUBIC))
    assert torch.equal(item["image"], torch.from_numpy(expected.copy()).permute(2, 0, 1).float() / 255)
    mask = np.asarray(Image.open(sample.mask).convert("L").resize((10, 7), Image.Resampling.BILINEAR)) / 255 > 0.5
    assert torch.equal(item["mask"][0], torch.from_numpy(mask).float())
    assert set(item["mask"].unique().tolist()) <= {0.0, 1.0}
    assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0


def test_dataset_grey_scale_becomes_three_equal_channels(tmp_path):
    grey = save(tmp_path / "g" / "train" / "good" / "0.png", pattern(5, channels=1))
    sample = MVTecSample(image=grey, mask=None, label=0, defect="good", category="g")
    image = MVTecDataset([sample], image_size=SIZE)[0]["image"]
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    assert torch.equal(image[0], torch.from_numpy(pattern(5, channels=1)).float() / 255)


def test_dataset_reads_16_bit_grey_scale(tmp_path):
    deep = (np.arange(SIZE * SIZE, dtype=np.uint16).reshape(SIZE, SIZE) * 400).astype(np.uint16)
    path = save(tmp_path / "d" / "0.png", deep)
    sample = MVTecSample(image=path, mask=None, label=0, defect="good", category="d")
    image = MVTecDataset([sample], image_size=SIZE)[0]["image"]
    expected = torch.from_numpy(np.round(deep / 65535.0 * 255.0)).float() / 255
    assert torch.allclose(image[0], expected) and torch.equal(image[0], image[2])


def test_dataset_from_root_and_dataloader(tmp_path):
    make_category(tmp_path)
    train = MVTecDataset.from_root(tmp_path, "widget", "train", image_size=8)
    test = MVTecDataset.from_root(tmp_path, "widget", "test", image_size=8)
    assert len(train) == 4 and len(test) == 5
    assert test.labels().tolist() == [0, 0, 1, 1, 1]
    batch = next(iter(torch.utils.data.DataLoader(test, batch_size=5)))
    assert batch["image"].shape == (5, 3, 8, 8) and batch["mask"].shape == (5, 1, 8, 8)
    assert batch["label"].tolist() == [0, 0, 1, 1, 1] and len(batch["path"]) == 5
    with pytest.raises(ValueError, match="part must be"):
        MVTecDataset.from_root(tmp_path, "widget", "validation")


def test_dataset_without_pillow_says_how_to_install_it(tmp_path, monkeypatch):
    make_category(tmp_path)
    monkeypatch.setitem(sys.modules, "PIL", None)
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    samples = scan_category(tmp_path, "widget").test_defects  # scanning works without Pillow
    with pytest.raises(ImportError, match=r'pip install "torch-arcad\[examples\]"'):
        MVTecDataset(samples, image_size=8)


def test_dataset_argument_errors(tmp_path):
    make_category(tmp_path)
    samples = scan_category(tmp_path, "widget").train_good
    with pytest.raises(TypeError, match="MVTecSample"):
        MVTecDataset([str(samples[0].image)], image_size=8)
    with pytest.raises(ValueError, match="positive"):
        MVTecDataset(samples, image_size=0)
    with pytest.raises(TypeError, match="image_size"):
        MVTecDataset(samples, image_size=(8, 8, 8))
    with pytest.raises(ValueError, match="resample"):
        MVTecDataset(samples, image_size=8, resample="lanczos")
    transformed = MVTecDataset(samples, image_size=8, transform=lambda item: {**item, "image": item["image"] * 0})
    assert transformed[0]["image"].abs().sum() == 0


# ----------------------------------------------------------------------------- real data


def test_real_data_layout_counts(real_data):
    root = real_data("magnetic_tile", "tire")
    assert {"magnetic_tile", "tire"} <= set(list_categories(root))
    tile = scan_category(root, "magnetic_tile")
    assert (len(tile.train_good), len(tile.test_good), len(tile.test_defects)) == (762, 190, 392)
    assert {k: len(v) for k, v in tile.defects_by_kind().items()} == {
        "blowhole": 115, "break": 85, "crack": 57, "fray": 32, "uneven": 103,
    }
    # Empty masks, cross-checked with Pillow; all of them are "uneven".
    pillow_empty = [s.mask for s in tile.test_defects if not np.asarray(Image.open(s.mask)).any()]
    assert sorted(tile.empty_masks) == sorted(pillow_empty)
    assert pillow_empty and all(p.parent.name == "uneven" for p in pillow_empty)
    tire = scan_category(root, "tire")
    assert (len(tire.train_good), len(tire.test_good), len(tire.test_defects)) == (210, 25, 87)
    item = MVTecDataset(tile.test_defects[:1], image_size=256)[0]
    expected = np.asarray(Image.open(tile.test_defects[0].mask)) > 127
    assert item["image"].shape == (3, 256, 256) and torch.equal(item["mask"][0], torch.from_numpy(expected).float())


def test_a_thin_scratch_survives_a_shrinking_resize(tmp_path):
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[30, 5:60] = 255  # a 1-pixel scratch
    image = save(tmp_path / "scratch.png", np.zeros((64, 64, 3), dtype=np.uint8))
    mask_path = save(tmp_path / "scratch_mask.png", mask)
    sample = MVTecSample(image=image, label=1, category="widget", defect="scratch", mask=mask_path)
    faded = np.asarray(Image.fromarray(mask).resize((16, 16), Image.Resampling.BILINEAR), dtype=np.float32) / 255
    assert 0 < faded.max() < 0.5  # an absolute threshold at 0.5 would erase the scratch
    out = MVTecDataset([sample], 16)[0]["mask"][0]
    assert out.sum() > 0 and set(out.unique().tolist()) <= {0.0, 1.0}
    assert out[7:9].sum() == out.sum()  # still a line, where the scratch was (row 30 of 64 -> row 7.5 of 16)
