from __future__ import annotations

import json
import math
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from torch_arcad.coldstart import (
    SPLIT_FORMAT,
    load_split,
    main,
    make_split,
    num_train_anomalies,
    num_train_normals,
    save_split,
    split_samples,
    stratified_counts,
)
from torch_arcad.datasets.images import MVTecDataset
from torch_arcad.datasets.mvtec import scan_category
from torch_arcad.datasets.synthetic import SYNTHETIC_CATEGORIES, make_synthetic_dataset

from helpers import REPO_ROOT

REPO = REPO_ROOT
TINY = dict(image_size=16, num_train=13, num_test_good=3, num_defects_per_kind=3)


def expected_counts(num_good: int, normal_fraction: str, anomaly_ratio: str) -> tuple[int, int]:
    """Section 4.1 in exact rational arithmetic (fractions given as decimal strings)."""
    f, r = Fraction(normal_fraction), Fraction(anomaly_ratio)
    n_normal = max(1, math.floor(f * num_good + Fraction(1, 2)))
    n_anomaly = max(1, math.ceil(r * n_normal / (1 - r)))
    return n_normal, n_anomaly


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("cache"), seed=3, **TINY)


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def make_category(root: Path, name: str, n_train: int, defects: dict[str, int], empty: int = 0) -> None:
    """A hand-made category; the first ``empty`` defects of every kind get an all-zero mask."""
    image = np.full((4, 4), 128, dtype=np.uint8)
    for i in range(n_train):
        write_png(root / name / "train" / "good" / f"{i:03d}.png", image)
    (root / name / "test" / "good").mkdir(parents=True, exist_ok=True)
    for kind, count in defects.items():
        for i in range(count):
            write_png(root / name / "test" / kind / f"{i:03d}.png", image)
            mask = np.zeros((4, 4), dtype=np.uint8)
            if i >= empty:
                mask[1:3, 1:3] = 255
            write_png(root / name / "ground_truth" / kind / f"{i:03d}_mask.png", mask)


# ----------------------------------------------------------------------------- counting rules


@pytest.mark.parametrize("num_good", [1, 2, 3, 5, 7, 10, 13, 20, 33, 100, 210, 762, 1001])
@pytest.mark.parametrize("fractions", [("0.3", "0.1"), ("0.3", "0.05"), ("0.5", "0.03"), ("0.25", "0.2")])
def test_counts_follow_section_4_1(num_good, fractions):
    normal_fraction, anomaly_ratio = fractions
    n_normal, n_anomaly = expected_counts(num_good, normal_fraction, anomaly_ratio)
    assert num_train_normals(num_good, float(normal_fraction)) == n_normal
    assert num_train_anomalies(n_normal, float(anomaly_ratio)) == n_anomaly


def test_counts_of_the_real_categories_and_rounding_edges():
    assert num_train_normals(762, 0.3) == 229 and num_train_anomalies(229, 0.1) == 26
    assert num_train_normals(210, 0.3) == 63 and num_train_anomalies(63, 0.1) == 7  # 0.1 * 63 / 0.9 = 7.000...1
    assert num_train_normals(5, 0.5) == 3  # 2.5 rounds half up
    assert num_train_normals(1, 0.3) == 1  # at least one
    assert num_train_anomalies(1, 0.01) == 1  # at least one
    with pytest.raises(ValueError, match=r"open interval \(0, 1\)"):
        num_train_normals(10, 1.0)
    with pytest.raises(ValueError, match=r"open interval \(0, 1\)"):
        num_train_anomalies(10, 0.0)


def test_stratified_counts_largest_remainder():
    # Tire at seed 0: 7 of (5, 28, 27, 27) -> quotas 0.40, 2.25, 2.17, 2.17 -> floors 0, 2, 2, 2 + 1 to "combined".
    assert stratified_counts({"combined": 5, "contamination": 28, "cut": 27, "hole": 27}, 7) == {
        "combined": 1, "contamination": 2, "cut": 2, "hole": 2,
    }
    rng = np.random.default_rng(0)
    for _ in range(50):
        available = {f"k{i}": int(c) for i, c in enumerate(rng.integers(0, 20, size=rng.integers(1, 6)))}
        pool = sum(available.values())
        total = int(rng.integers(0, pool + 1))
        counts = stratified_counts(available, total, np.random.default_rng(1))
        assert sum(counts.values()) == total
        for kind, c in available.items():
            share = Fraction(total * c, max(pool, 1))
            assert math.floor(share) <= counts[kind] <= min(c, math.ceil(share))
    with pytest.raises(ValueError, match="<= the number of available"):
        stratified_counts({"a": 1}, 2)


# ----------------------------------------------------------------------------- splitting


def test_split_counts_disjointness_and_coverage(synthetic_root):
    split = make_split(synthetic_root, seed=0)
    assert split["format"] == SPLIT_FORMAT and split["version"] == 1
    assert Path(split["root"]) == synthetic_root.resolve()
    n_normal, n_anomaly = expected_counts(TINY["num_train"], "0.3", "0.1")
    for category, kinds in SYNTHETIC_CATEGORIES.items():
        train, test = split["categories"][category]["train"], split["categories"][category]["test"]
        assert sum(s["label"] == 0 for s in train) == n_normal
        assert sum(s["label"] == 1 for s in train) == n_anomaly
        n_defects = len(kinds) * TINY["num_defects_per_kind"]
        assert len(test) == (TINY["num_train"] - n_normal) + TINY["num_test_good"] + (n_defects - n_anomaly)
        train_images, test_images = {s["image"] for s in train}, {s["image"] for s in test}
        assert not train_images & test_images
        scan = scan_category(synthetic_root, category)
        every = {
            p.image.relative_to(synthetic_root).as_posix() for p in scan.train_good + scan.test_good + scan.test_defects
        }
        assert train_images | test_images == every
        assert all(s["image"].startswith(f"{category}/train/good/") for s in train if s["label"] == 0)
        for sample in train + test:
            assert (sample["mask"] is None) == (sample["label"] == 0)
            assert (synthetic_root / sample["image"]).is_file()


def test_defects_are_stratified_over_kinds(synthetic_root):
    # washer has 4 kinds x 3 images. 0.75 * 13 -> 10 normals -> ceil(10 / 9) = 2 anomalies: every kind's
    # quota is 0.5, so the two go to two different kinds.
    split = make_split(synthetic_root, categories=["washer"], normal_fraction=0.75, anomaly_ratio=0.1, seed=5)
    train = split["categories"]["washer"]["train"]
    assert sum(s["label"] == 0 for s in train) == 10
    defects = [s["defect"] for s in train if s["label"] == 1]
    assert len(defects) == 2 and len(set(defects)) == 2
    # 0.9 * 13 -> 12 normals -> ceil(0.25 * 12 / 0.75) = 4 anomalies: one of each kind.
    split = make_split(synthetic_root, categories=["washer"], normal_fraction=0.9, anomaly_ratio=0.25, seed=5)
    defects = sorted(s["defect"] for s in split["categories"]["washer"]["train"] if s["label"] == 1)
    assert defects == sorted(SYNTHETIC_CATEGORIES["washer"])


def test_split_is_deterministic_per_seed(synthetic_root):
    first = make_split(synthetic_root, seed=11)
    assert make_split(synthetic_root, seed=11) == first
    others = [make_split(synthetic_root, seed=s) for s in (12, 13)]
    for other in others:
        assert any(
            other["categories"][c]["train"] != first["categories"][c]["train"] for c in SYNTHETIC_CATEGORIES
        )


def test_split_of_selected_categories_ignores_the_others(synthetic_root):
    alone = make_split(synthetic_root, categories=["grid"], seed=4)
    together = make_split(synthetic_root, seed=4)
    assert list(alone["categories"]) == ["grid"]
    assert alone["categories"]["grid"] == together["categories"]["grid"]


def test_capped_anomalies_warn_and_empty_masks_are_skipped(tmp_path):
    # 40 good -> 12 normals -> 2 anomalies wanted; 3 defects but 2 have empty masks.
    make_category(tmp_path, "few", n_train=40, defects={"dent": 3}, empty=2)
    with pytest.warns(UserWarning, match=r"'few': 2 training anomalies are needed.*only 1"):
        split = make_split(tmp_path, seed=0)
    train = split["categories"]["few"]["train"]
    assert [s["image"] for s in train if s["label"] == 1] == ["few/test/dent/002.png"]
    assert len(split["categories"]["few"]["test"]) == 28 + 2
    split = make_split(tmp_path, seed=0, include_empty_masks=True)
    assert sum(s["label"] for s in split["categories"]["few"]["train"]) == 2


def test_split_errors(tmp_path, synthetic_root):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make_split(tmp_path / "missing")
    with pytest.raises(ValueError, match=r"normal_fraction must lie in the open interval \(0, 1\), got 0"):
        make_split(synthetic_root, normal_fraction=0)
    with pytest.raises(ValueError, match=r"anomaly_ratio must lie in the open interval \(0, 1\), got 1.5"):
        make_split(synthetic_root, anomaly_ratio=1.5)
    with pytest.raises(ValueError, match=r"unknown categories \['marble'\].*available: fabric, grid, washer"):
        make_split(synthetic_root, categories=["grid", "marble"])
    with pytest.raises(ValueError, match="seed must be >= 0"):
        make_split(synthetic_root, seed=-1)
    (tmp_path / "hollow" / "train" / "good").mkdir(parents=True)
    (tmp_path / "hollow" / "test").mkdir()
    with pytest.raises(ValueError, match=r"category 'hollow' is empty: no images"):
        make_split(tmp_path)


# ----------------------------------------------------------------------------- manifests


def test_save_load_round_trip_and_samples(tmp_path, synthetic_root):
    split = make_split(synthetic_root, seed=0)
    path = save_split(split, tmp_path / "out" / "split.json")
    loaded = load_split(path)
    assert loaded == json.loads(json.dumps(split))
    samples = split_samples(loaded, "train", categories="fabric")
    assert len(samples) == len(split["categories"]["fabric"]["train"])
    assert all(s.image.is_absolute() and s.image.is_file() and s.category == "fabric" for s in samples)
    assert all((s.mask is None) == (s.label == 0) for s in samples)
    assert len(split_samples(loaded, "test")) == sum(len(v["test"]) for v in split["categories"].values())
    moved = split_samples(loaded, "test", categories=["grid"], root=tmp_path / "elsewhere")
    assert all(str(s.image).startswith(str(tmp_path / "elsewhere")) for s in moved)
    with pytest.raises(ValueError, match="part must be"):
        split_samples(loaded, "val")
    with pytest.raises(ValueError, match=r"unknown categories \['marble'\]"):
        split_samples(loaded, "train", categories="marble")
    dataset = MVTecDataset.from_split(path, "train", image_size=8, categories="grid")
    item = dataset[len(dataset) - 1]
    assert item["label"].item() == 1 and item["mask"].sum() > 0 and item["category"] == "grid"


def _manifest(tmp_path: Path, synthetic_root: Path) -> dict:
    return json.loads(json.dumps(make_split(synthetic_root, categories=["grid"], seed=0)))


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda m: m.pop("seed"), r"lacks the keys \['seed'\]"),
        (lambda m: m.update(format="other"), "has format 'other'"),
        (lambda m: m.update(version=2), "version 2"),
        (lambda m: m.update(normal_fraction=1.0), r"'normal_fraction' must be a number in \(0, 1\)"),
        (lambda m: m.update(categories={}), "'categories' must be a non-empty object"),
        (lambda m: m["categories"]["grid"].pop("test"), r"exactly the keys \['test', 'train'\]"),
        (lambda m: m["categories"]["grid"]["train"][0].update(label=2), r"\['train'\]\[0\]: 'label' must be 0 or 1"),
        (lambda m: m["categories"]["grid"]["train"][0].update(defect="dent"), "does not match defect 'dent'"),
        (lambda m: m["categories"]["grid"]["train"][0].update(mask="x.png"), "normal sample must have mask null"),
        (lambda m: m["categories"]["grid"]["train"][0].update(image="/abs.png"), "must be relative"),
        (lambda m: m["categories"]["grid"]["train"][0].pop("defect"), "must be an object with keys"),
        (
            lambda m: m["categories"]["grid"]["test"].append(dict(m["categories"]["grid"]["train"][0])),
            "appears twice",
        ),
        (
            lambda m: m["categories"]["grid"].update(train=[s for s in m["categories"]["grid"]["train"] if s["label"]]),
            "no normal training image",
        ),
    ],
)
def test_load_split_rejects_malformed_manifests(tmp_path, synthetic_root, mutate, match):
    manifest = _manifest(tmp_path, synthetic_root)
    mutate(manifest)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=match):
        load_split(path)


def test_load_split_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_split(tmp_path / "none.json")
    (tmp_path / "garbage.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_split(tmp_path / "garbage.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(ValueError, match="must be a JSON object"):
        load_split(tmp_path / "list.json")


# ----------------------------------------------------------------------------- command line


def test_cli_writes_a_valid_manifest(tmp_path, synthetic_root, capsys):
    out = tmp_path / "split.json"
    argv = ["--root", str(synthetic_root), "--out", str(out), "--normal-fraction", "0.3",
            "--anomaly-ratio", "0.10", "--seed", "0", "--categories", "grid", "washer"]
    assert main(argv) == 0
    printed = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in printed[:2]] == ["grid", "washer"]
    n_normal, n_anomaly = expected_counts(TINY["num_train"], "0.3", "0.1")
    assert f"train {n_normal} normal + {n_anomaly} defective" in printed[0]
    assert load_split(out) == json.loads(json.dumps(make_split(synthetic_root, categories=["grid", "washer"])))


def test_cli_reports_bad_input(tmp_path, synthetic_root, capsys):
    out = tmp_path / "split.json"
    assert main(["--root", str(synthetic_root), "--out", str(out), "--anomaly-ratio", "1"]) == 2
    assert "anomaly_ratio must lie in the open interval" in capsys.readouterr().err
    assert main(["--root", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["--root", str(synthetic_root), "--out", str(out), "--categories", "marble"]) == 2
    assert "unknown categories" in capsys.readouterr().err
    assert not out.exists()


def test_split_needs_no_image_library(tmp_path, synthetic_root, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)  # any "import PIL" now fails
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    assert main(["--root", str(synthetic_root), "--out", str(tmp_path / "split.json")]) == 0
    assert set(load_split(tmp_path / "split.json")["categories"]) == set(SYNTHETIC_CATEGORIES)


def test_module_entry_point(tmp_path, synthetic_root):
    out = tmp_path / "split.json"
    result = subprocess.run(
        [sys.executable, "-m", "torch_arcad.coldstart", "--root", str(synthetic_root), "--out", str(out),
         "--categories", "fabric"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert list(load_split(out)["categories"]) == ["fabric"]


# ----------------------------------------------------------------------------- real data


def test_real_data_split_counts(real_data):
    root = real_data("magnetic_tile", "tire")
    split = make_split(root, categories=["magnetic_tile", "tire"], seed=0)
    expected = {"magnetic_tile": (229, 26, 1089), "tire": (63, 7, 252)}
    for category, (n_normal, n_anomaly, n_test) in expected.items():
        train, test = split["categories"][category]["train"], split["categories"][category]["test"]
        assert (sum(s["label"] == 0 for s in train), sum(s["label"] == 1 for s in train), len(test)) == (
            n_normal, n_anomaly, n_test,
        )
        assert not {s["image"] for s in train} & {s["image"] for s in test}
        # Training defects have non-empty masks.
        for sample in train:
            if sample["label"]:
                assert np.asarray(Image.open(root / sample["mask"])).any()
