from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import torch_arcad.datasets.synthetic as synthetic
from torch_arcad.datasets.images import MVTecDataset
from torch_arcad.datasets.mvtec import list_categories, scan_category
from torch_arcad.datasets.synthetic import (
    SYNTHETIC_CATEGORIES,
    make_synthetic_dataset,
    render_sample,
    write_png,
)

TINY = dict(image_size=32, num_train=3, num_test_good=2, num_defects_per_kind=2)


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("cache"), seed=0, **TINY)


def test_layout_and_counts(tiny_root):
    assert list_categories(tiny_root) == sorted(SYNTHETIC_CATEGORIES)
    for category, kinds in SYNTHETIC_CATEGORIES.items():
        scan = scan_category(tiny_root, category)
        assert len(scan.train_good) == TINY["num_train"]
        assert len(scan.test_good) == TINY["num_test_good"]
        assert scan.defect_kinds == sorted(kinds)
        per_kind = {k: len(v) for k, v in scan.defects_by_kind().items()}
        assert per_kind == {k: TINY["num_defects_per_kind"] for k in kinds}
        assert scan.empty_masks == []
        for sample in scan.test_defects:
            image = np.asarray(Image.open(sample.image))
            mask = np.asarray(Image.open(sample.mask))
            assert image.shape == (32, 32, 3) and image.dtype == np.uint8
            assert mask.shape == (32, 32) and set(np.unique(mask).tolist()) == {0, 255}


def test_defect_mask_is_exactly_where_the_image_changed():
    # render_sample draws the normal image first, then the defect, from the same generator: with the
    # same seed, the normal and defective renderings differ only inside the mask.
    for category, kinds in SYNTHETIC_CATEGORIES.items():
        for kind in kinds:
            for seed in range(3):
                normal, empty = render_sample(category, 32, np.random.default_rng(seed))
                defective, mask = render_sample(category, 32, np.random.default_rng(seed), kind)
                assert not empty.any() and mask.any()
                changed = (normal != defective).any(axis=2)
                assert not (changed & ~mask).any(), (category, kind)
                assert changed.sum() >= 0.8 * mask.sum(), (category, kind)


def test_normal_images_vary(tiny_root):
    for category in SYNTHETIC_CATEGORIES:
        samples = scan_category(tiny_root, category).train_good
        train = [np.asarray(Image.open(s.image), dtype=np.float64) for s in samples]
        assert np.abs(train[0] - train[1]).mean() > 1.0


def test_same_seed_gives_identical_bytes_and_other_seeds_differ(tmp_path, tiny_root):
    again = make_synthetic_dataset(tmp_path / "a", seed=0, **TINY)
    assert again != tiny_root and again.name == tiny_root.name
    assert files_of(again) == files_of(tiny_root)
    other = make_synthetic_dataset(tmp_path / "a", seed=1, **TINY)
    assert other.name != again.name
    a, b = files_of(again), files_of(other)
    assert a.keys() == b.keys()
    assert sum(a[k] != b[k] for k in a if k.endswith(".png")) == sum(k.endswith(".png") for k in a)


def test_cache_is_reused_and_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(synthetic.CACHE_ENV, str(tmp_path / "env_cache"))
    root = make_synthetic_dataset(categories=["grid"], **TINY)
    assert root.parent == tmp_path / "env_cache"
    assert root.name.startswith(f"synthetic-v{synthetic.GENERATOR_VERSION}-")

    def fail(*args, **kwargs):
        raise AssertionError("the cached data set should have been reused")

    monkeypatch.setattr(synthetic, "_generate", fail)
    assert make_synthetic_dataset(categories=["grid"], **TINY) == root
    monkeypatch.delenv(synthetic.CACHE_ENV)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert synthetic.default_cache_dir() == tmp_path / "home" / ".cache" / "torch_arcad"


def test_failed_generation_leaves_nothing_behind(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(synthetic, "write_png", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        make_synthetic_dataset(tmp_path, categories=["fabric"], **TINY)
    assert list(tmp_path.iterdir()) == []


def test_dataset_loads_synthetic_images(tiny_root):
    scan = scan_category(tiny_root, "washer")
    item = MVTecDataset(scan.test_defects[:1], image_size=32)[0]
    expected = np.asarray(Image.open(scan.test_defects[0].mask)) > 0
    assert np.array_equal(item["mask"][0].numpy() > 0, expected)


def test_write_png_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, size=(6, 3), dtype=np.uint8)
    write_png(tmp_path / "rgb.png", rgb)
    write_png(tmp_path / "grey.png", grey)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "rgb.png")), rgb)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "grey.png")), grey)
    with pytest.raises(TypeError, match="uint8"):
        write_png(tmp_path / "x.png", rgb.astype(np.float32))
    with pytest.raises(ValueError, match=r"\(H, W\) or \(H, W, 3\)"):
        write_png(tmp_path / "x.png", rng.integers(0, 256, size=(2, 2, 4), dtype=np.uint8))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"categories": ["marble"]}, ValueError, "unknown synthetic category 'marble'"),
        ({"categories": []}, ValueError, "at least one"),
        ({"categories": ["grid", "grid"]}, ValueError, "repeat"),
        ({"image_size": 8}, ValueError, "image_size must be >= 16"),
        ({"num_train": 0}, ValueError, "num_train must be >= 1"),
        ({"num_defects_per_kind": 0}, ValueError, "num_defects_per_kind must be >= 1"),
        ({"seed": -1}, ValueError, "seed must be >= 0"),
        ({"num_test_good": 1.5}, TypeError, "num_test_good must be an int"),
    ],
)
def test_argument_errors(tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        make_synthetic_dataset(tmp_path, **{**TINY, **kwargs})
    with pytest.raises(ValueError, match="defect must be None or one of"):
        render_sample("grid", 32, np.random.default_rng(0), "missing")


def test_defect_strength_scales_the_change_inside_the_mask():
    for category, kinds in SYNTHETIC_CATEGORIES.items():
        for kind in kinds:
            normal, _ = render_sample(category, 64, np.random.default_rng(5))
            changes = []
            for strength in (0.2, 0.6, 1.0):
                defective, mask = render_sample(category, 64, np.random.default_rng(5), kind, strength)
                diff = np.abs(defective.astype(np.float64) - normal.astype(np.float64)).sum(axis=2)
                assert not (diff[~mask] > 0).any()
                changes.append(diff[mask].mean())
            # the blend is linear in the strength (up to the 8-bit rounding and the clip to [0, 1])
            assert changes[0] < changes[1] < changes[2], (category, kind)
            assert abs(changes[0] / changes[2] - 0.2) < 0.1, (category, kind)


def test_defect_strength_is_recorded_and_part_of_the_cache_key(tmp_path):
    weak = make_synthetic_dataset(tmp_path, categories=["grid"], defect_strength=0.3, **TINY)
    full = make_synthetic_dataset(tmp_path, categories=["grid"], defect_strength=1.0, **TINY)
    assert weak != full
    assert json.loads((weak / synthetic.PARAMS_FILE).read_text())["defect_strength"] == 0.3
    default = make_synthetic_dataset(tmp_path, categories=["grid"], **TINY)
    params = json.loads((default / synthetic.PARAMS_FILE).read_text())
    assert params["defect_strength"] == synthetic.DEFAULT_DEFECT_STRENGTH
    assert params["generator_version"] == synthetic.GENERATOR_VERSION == 2


@pytest.mark.parametrize("value, error", [(0.0, ValueError), (1.5, ValueError), (-0.2, ValueError),
                                          ("0.5", TypeError), (True, TypeError)])
def test_defect_strength_errors(tmp_path, value, error):
    with pytest.raises(error, match="defect_strength"):
        make_synthetic_dataset(tmp_path, defect_strength=value, **TINY)
    with pytest.raises(error, match="defect_strength"):
        render_sample("grid", 32, np.random.default_rng(0), "hole", value)
