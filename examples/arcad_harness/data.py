"""Data for an experiment: the data root (or the generated synthetic set), the cold-start split, images in memory
and the random batches of training."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from torch_arcad.coldstart import load_split, make_split, split_samples
from torch_arcad.datasets import MVTecDataset, MVTecSample, list_categories, make_synthetic_dataset

from .config import ExperimentConfig

__all__ = [
    "Batch",
    "DataSource",
    "ImageSet",
    "RandomBatches",
    "category_test_samples",
    "hold_out_defects",
    "iter_image_sets",
    "load_images",
    "prepare_data",
    "split_counts",
    "train_samples",
]

#: Largest 8-bit value: images are stored as uint8 and divided by it on the way to the model.
MAX_PIXEL: float = 255.0
#: Keyword defaults of the generated synthetic data set (its own defaults, spelled out to be recorded).
SYNTHETIC_DEFAULTS: dict[str, Any] = {
    "image_size": 128,
    "num_train": 60,
    "num_test_good": 20,
    "num_defects_per_kind": 8,
}


class Batch(NamedTuple):
    """One batch on the model's device.

    Attributes:
        images: float32 (B, 3, H, W), RGB in [0, 1].
        masks: float32 (B, H, W), 1 on defect pixels.
        labels: int64 (B,), 0 normal, 1 defective.
        paths: the images' paths (their identity for the feature cache).
        features: the frozen encoder's output for the images when cached (see :mod:`arcad_harness.cache`),
            ``None`` otherwise: the detector then runs its encoder.
    """

    images: Tensor
    masks: Tensor
    labels: Tensor
    paths: tuple[str, ...] = ()
    features: list[Tensor] | None = None


@dataclass
class DataSource:
    """Where the images come from.

    Attributes:
        root: the data set root.
        split: the cold-start manifest (see :mod:`torch_arcad.coldstart`).
        categories: the categories of this experiment, in manifest order.
        synthetic: whether ``root`` is the generated synthetic data set.
    """

    root: Path
    split: dict[str, Any]
    categories: list[str]
    synthetic: bool


def prepare_data(cfg: ExperimentConfig) -> DataSource:
    """Resolve the data root and the cold-start split of ``cfg``.

    With no ``data_root`` and no ``split_path``, the synthetic data set is generated (or reused from its cache).
    With a ``split_path``, the manifest is loaded; ``data_root`` then overrides the root stored in it.
    Otherwise the split is made from ``data_root`` with ``split_seed``.

    Raises:
        FileNotFoundError: the data root, the manifest or a file it names does not exist.
        ValueError: the root is not in the MVTec AD layout, a category has defect images without masks, the split
            is empty or lacks a category, or a category's test set lacks normal or defective images.
    """
    synthetic = cfg.data_root is None and cfg.split_path is None
    if synthetic:
        options = {**SYNTHETIC_DEFAULTS, **cfg.synthetic}
        root = make_synthetic_dataset(**options)
    elif cfg.data_root is not None:
        root = Path(cfg.data_root).expanduser()
        list_categories(root)  # clear errors for a missing or malformed root
    else:
        root = None
    if cfg.split_path is not None:
        split = load_split(cfg.split_path)
        if root is None:
            root = Path(split["root"])
    else:
        assert root is not None
        split = make_split(root, categories=cfg.categories, seed=cfg.split_seed)
    available = list(split["categories"])
    if not available:
        raise ValueError(f"the split {cfg.split_path!r} holds no category")
    if cfg.categories is None:
        categories = available
    else:
        categories = list(cfg.categories)
        missing = [c for c in categories if c not in split["categories"]]
        if missing:
            raise ValueError(f"categories {missing} are not in the split; it holds: {', '.join(available)}")
    for category in categories:
        _check_category(split, category, root)
    return DataSource(root=Path(root), split=split, categories=categories, synthetic=synthetic)


def _check_category(split: dict[str, Any], category: str, root: Path) -> None:
    entry = split["categories"][category]
    train, test = entry["train"], entry["test"]
    if not any(s["label"] == 0 for s in train):
        raise ValueError(f"category {category!r}: the split has no normal training image")
    test_defects = sum(1 for s in test if s["label"] == 1)
    if not test or test_defects == 0 or test_defects == len(test):
        raise ValueError(
            f"category {category!r}: the split's test set has {len(test) - test_defects} normal and {test_defects} "
            "defective images; the metrics need both"
        )
    for record in (*train, *test):
        for key in ("image", "mask"):
            if record[key] is not None and not (root / record[key]).is_file():
                raise FileNotFoundError(
                    f"category {category!r}: the split names {record[key]!r}, but {str(root / record[key])!r} does "
                    "not exist (pass --data-root to point at the data set the split was made from)"
                )


def train_samples(data: DataSource, categories: Sequence[str], *, with_defects: bool) -> list[MVTecSample]:
    """Training samples of ``categories``: all of them, or the normal ones only (``with_defects=False``)."""
    samples = split_samples(data.split, "train", categories=list(categories), root=data.root)
    return samples if with_defects else [s for s in samples if s.label == 0]


def hold_out_defects(
    samples: Sequence[MVTecSample], count: int, seed: int
) -> tuple[list[MVTecSample], list[MVTecSample]]:
    """Withhold ``count`` defective images of each category from training.

    The held-out images are taken one at a time from the defect kind with the most images still in training (ties
    broken by a seeded draw), so training keeps every kind for as long as it can; within a kind the image is drawn
    with the same generator. Everything is deterministic for a given ``seed``.

    Args:
        samples: training samples (normal and defective) of one or more categories.
        count: defective images to withhold per category (0 withholds nothing).
        seed: seed of the draws.

    Returns:
        ``(kept, held_out)``: the samples left for training, in their original order, and the withheld ones, in
        the order they were drawn.

    Raises:
        ValueError: ``count`` is negative, or a category would keep no defective training image (ArcAD's L_dgc
            and L_cls need at least one); the message names the category and its number of defects.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"count must be an int >= 0, got {count!r}")
    if count == 0:
        return list(samples), []
    generator = torch.Generator().manual_seed(seed)
    chosen: list[int] = []
    categories = sorted({s.category for s in samples})
    for category in categories:
        by_kind: dict[str, list[int]] = {}
        for index, sample in enumerate(samples):
            if sample.category == category and sample.label == 1:
                by_kind.setdefault(sample.defect, []).append(index)
        total = sum(len(v) for v in by_kind.values())
        if count >= total:
            raise ValueError(
                f"category {category!r} has {total} defective training image(s); withholding {count} would leave "
                "none for training (withhold at most one fewer)"
            )
        for _ in range(count):
            most = max(len(v) for v in by_kind.values())
            kinds = sorted(kind for kind, v in by_kind.items() if len(v) == most)
            kind = kinds[int(torch.randint(len(kinds), (1,), generator=generator))]
            pool = by_kind[kind]
            chosen.append(pool.pop(int(torch.randint(len(pool), (1,), generator=generator))))
    held = set(chosen)
    return [s for i, s in enumerate(samples) if i not in held], [samples[i] for i in chosen]


def category_test_samples(data: DataSource, category: str) -> list[MVTecSample]:
    """Test samples of one category, in manifest order."""
    return split_samples(data.split, "test", categories=[category], root=data.root)


def split_counts(data: DataSource) -> dict[str, dict[str, int]]:
    """``{category: {"train_normal", "train_defective", "test", "test_normal", "test_defective"}}``."""
    counts = {}
    for category in data.categories:
        entry = data.split["categories"][category]
        train_defective = sum(s["label"] for s in entry["train"])
        test_defective = sum(s["label"] for s in entry["test"])
        counts[category] = {
            "train_normal": len(entry["train"]) - train_defective,
            "train_defective": train_defective,
            "test": len(entry["test"]),
            "test_normal": len(entry["test"]) - test_defective,
            "test_defective": test_defective,
        }
    return counts


@dataclass
class ImageSet:
    """Images held in memory as uint8, with masks and labels.

    Attributes:
        images: uint8 (N, 3, H, W).
        masks: bool (N, H, W).
        labels: int64 (N,).
        categories: category of each image.
        paths: image path of each image.
    """

    images: Tensor
    masks: Tensor
    labels: Tensor
    categories: list[str]
    paths: list[str]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batch(self, index: Tensor, device: torch.device | str) -> Batch:
        """Images ``index`` (int64 (B,)) as a float :class:`Batch` on ``device``."""
        images = self.images[index].to(device=device, dtype=torch.float32) / MAX_PIXEL
        masks = self.masks[index].to(device=device, dtype=torch.float32)
        paths = tuple(self.paths[i] for i in index.tolist())
        return Batch(images, masks, self.labels[index].to(device), paths)


def load_images(samples: Sequence[MVTecSample], image_size: int) -> ImageSet:
    """Read and resize ``samples`` (bicubic images, masks resized then thresholded) into an :class:`ImageSet`."""
    if not samples:
        raise ValueError("no images to load: the sample list is empty")
    dataset = MVTecDataset(samples, image_size)
    items = [dataset[i] for i in range(len(dataset))]
    images = torch.stack([torch.round(item["image"] * MAX_PIXEL).to(torch.uint8) for item in items])
    masks = torch.stack([item["mask"][0] > 0 for item in items])
    labels = torch.stack([item["label"] for item in items])
    return ImageSet(
        images=images,
        masks=masks,
        labels=labels,
        categories=[item["category"] for item in items],
        paths=[item["path"] for item in items],
    )


def iter_image_sets(samples: Sequence[MVTecSample], image_size: int, chunk: int) -> Iterator[ImageSet]:
    """:func:`load_images` over consecutive chunks of ``samples`` (for test sets too large to hold at once)."""
    for start in range(0, len(samples), chunk):
        yield load_images(samples[start : start + chunk], image_size)


class RandomBatches:
    """Endless random batches of indices: consecutive seeded permutations of ``range(n)``, cut into batches.

    Every image appears once per pass; batches are always full (a batch may span two passes), so a training set
    smaller than the batch is repeated within the batch.

    Args:
        n: number of images.
        batch_size: indices per batch.
        seed: seed of the permutations.
    """

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        if n < 1 or batch_size < 1:
            raise ValueError(f"n and batch_size must be >= 1, got n={n}, batch_size={batch_size}")
        self.n = n
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self._queue = torch.empty(0, dtype=torch.int64)

    def __iter__(self) -> RandomBatches:
        return self

    def __next__(self) -> Tensor:
        while self._queue.numel() < self.batch_size:
            self._queue = torch.cat([self._queue, torch.randperm(self.n, generator=self.generator)])
        index, self._queue = self._queue[: self.batch_size], self._queue[self.batch_size :]
        return index
