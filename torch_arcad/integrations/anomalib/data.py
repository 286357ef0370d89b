"""Cold-start datamodules on anomalib's ``MVTecAD`` / ``Folder`` and a sampler with defects in every batch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import torch


from anomalib.data import Folder, MVTecAD
from torch.utils.data import DataLoader, Sampler

from torch_arcad.coldstart import load_split, make_split


PathLike = Union[str, "os.PathLike[str]"]


# -------------------------------------------------------------------------------------------------- data


class DefectBatchSampler(Sampler[list[int]]):
    """Batches that each hold ``defects_per_batch`` defective images and ``batch_size - defects_per_batch`` normal
    ones.

    Every pass (epoch) permutes the normal images and cuts them into batches (the last one may be smaller); the
    defective images are drawn in turn from their own permutations, renewed whenever they run out, so each is used
    about equally often. Seeded: a pass depends on ``seed`` and its number only.

    Args:
        labels: (N,) image labels of the dataset, 0 normal, 1 defective.
        batch_size: images per batch.
        defects_per_batch: defective images per batch, in ``[1, batch_size)``.
        seed: seed of the permutations.
    """

    def __init__(self, labels: Sequence[int], batch_size: int, defects_per_batch: int, seed: int = 0) -> None:
        labels_t = torch.as_tensor(list(labels), dtype=torch.long)
        self.normal = (labels_t == 0).nonzero().flatten()
        self.defective = (labels_t != 0).nonzero().flatten()
        if not 1 <= defects_per_batch < batch_size:
            raise ValueError(
                f"defects_per_batch must be in [1, batch_size={batch_size}), got {defects_per_batch}"
            )
        if self.defective.numel() == 0:
            raise ValueError("defects_per_batch needs defective images in the training set, and it has none")
        if self.normal.numel() == 0:
            raise ValueError("the training set has no normal image")
        self.batch_size = batch_size
        self.defects_per_batch = defects_per_batch
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return math.ceil(self.normal.numel() / (self.batch_size - self.defects_per_batch))

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        self.epoch += 1
        normal = self.normal[torch.randperm(self.normal.numel(), generator=generator)]
        queue = torch.empty(0, dtype=torch.long)
        step = self.batch_size - self.defects_per_batch
        for start in range(0, normal.numel(), step):
            while queue.numel() < self.defects_per_batch:
                queue = torch.cat([queue, self.defective[torch.randperm(self.defective.numel(), generator=generator)]])
            defects, queue = queue[: self.defects_per_batch], queue[self.defects_per_batch :]
            batch = torch.cat([normal[start : start + step], defects])
            yield batch[torch.randperm(batch.numel(), generator=generator)].tolist()


class _ColdStart:
    """The cold-start split applied to the samples anomalib's datamodule lists (mixed into a datamodule class)."""

    category_name: str

    def _init_cold_start(
        self,
        split: Mapping[str, Any] | PathLike | None,
        split_category: str | None,
        train_defects: bool,
        defects_per_batch: int,
        sampler_seed: int,
    ) -> None:
        if not isinstance(defects_per_batch, int) or defects_per_batch < 0:
            raise ValueError(f"defects_per_batch must be an int >= 0, got {defects_per_batch!r}")
        if defects_per_batch and not train_defects:
            raise ValueError("defects_per_batch needs train_defects=True")
        self.split = split
        self.split_category = split_category
        self.train_defects = train_defects
        self.defects_per_batch = defects_per_batch
        self.sampler_seed = sampler_seed

    def _manifest(self) -> Mapping[str, Any]:  # pragma: no cover - overridden
        raise NotImplementedError

    def _cold_start_samples(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Path]:
        manifest = self._manifest()
        categories = manifest["categories"]
        name = self.split_category
        if name is None:
            if len(categories) != 1:
                raise ValueError(f"the split holds several categories {sorted(categories)}: pass split_category")
            name = next(iter(categories))
        if name not in categories:
            raise ValueError(f"the split has no category {name!r}; it has {sorted(categories)}")
        entry = categories[name]
        return list(entry["train"]), list(entry["test"]), Path(manifest["root"])

    def _setup(self, _stage: str | None = None) -> None:
        import pandas as pd

        super()._setup(_stage)  # type: ignore[misc]
        train, test, root = self._cold_start_samples()
        listed = pd.concat([self.train_data.samples, self.test_data.samples], ignore_index=True)
        by_path = {str(Path(p).resolve()): i for i, p in enumerate(listed.image_path)}

        def rows(records: list[dict[str, Any]]) -> pd.DataFrame:
            missing = [r["image"] for r in records if str((root / r["image"]).resolve()) not in by_path]
            if missing:
                raise ValueError(
                    f"{len(missing)} image(s) of the cold-start split are not among the images anomalib lists for "
                    f"this datamodule, e.g. {missing[:3]}: the split was made for another data set or root"
                )
            frame = listed.iloc[[by_path[str((root / r["image"]).resolve())] for r in records]].copy()
            frame["label_index"] = [int(r["label"]) for r in records]
            frame["mask_path"] = [str(root / r["mask"]) if r.get("mask") else "" for r in records]
            return frame.reset_index(drop=True)

        train_frame = rows(train)
        test_frame = rows(test)
        if not self.train_defects:
            train_frame = train_frame[train_frame.label_index == 0].reset_index(drop=True)
        train_frame["split"] = "train"
        test_frame["split"] = "test"
        for frame in (train_frame, test_frame):
            frame.attrs["task"] = "segmentation"
        self.train_data.samples = train_frame
        self.test_data.samples = test_frame

    def train_dataloader(self) -> DataLoader:
        """anomalib's shuffled loader, or with ``defects_per_batch`` a :class:`DefectBatchSampler`'s batches."""
        if not self.defects_per_batch:
            return super().train_dataloader()  # type: ignore[misc]
        sampler = DefectBatchSampler(
            list(self.train_data.samples.label_index),
            self.train_batch_size,  # type: ignore[attr-defined]
            self.defects_per_batch,
            self.sampler_seed,
        )
        return DataLoader(
            dataset=self.train_data,
            batch_sampler=sampler,
            num_workers=self.num_workers,  # type: ignore[attr-defined]
            collate_fn=self.external_collate_fn or self.train_data.collate_fn,  # type: ignore[attr-defined]
        )


class ColdStartMVTecAD(_ColdStart, MVTecAD):
    """anomalib's ``MVTecAD`` datamodule on the cold-start split (section 4.1) of one category.

    anomalib lists the category's images as usual; the split then decides which go to training and which to
    testing: ``normal_fraction`` of ``train/good`` plus defective images with their masks (``anomaly_ratio`` of the
    new training set) for training, everything else for testing (validation: the test set, as ``MVTecAD``). The
    split is :func:`torch_arcad.coldstart.make_split` of ``root`` for ``category``, or a given manifest.

    Args:
        root, category, train_batch_size, eval_batch_size, num_workers, *_augmentations, test_split_mode,
        test_split_ratio, val_split_mode, val_split_ratio, seed: as anomalib's ``MVTecAD``.
        split: ``None`` (make it here), a manifest dict, or the path of a manifest written by
            ``python -m torch_arcad.coldstart``.
        normal_fraction, anomaly_ratio, split_seed: :func:`~torch_arcad.coldstart.make_split`'s (paper: 0.3, 0.10).
        train_defects: put the split's defective images in training (``False``: its normal images only, the
            baseline's training set; the test set is the same either way).
        defects_per_batch: 0 (anomalib's shuffle) or the number of defective images in every training batch.
        sampler_seed: seed of :class:`DefectBatchSampler`.
    """

    def __init__(
        self,
        root: PathLike = "./datasets/MVTecAD",
        category: str = "bottle",
        train_batch_size: int = 32,
        eval_batch_size: int = 32,
        num_workers: int = 8,
        train_augmentations: Any = None,
        val_augmentations: Any = None,
        test_augmentations: Any = None,
        augmentations: Any = None,
        test_split_mode: str = "from_dir",
        test_split_ratio: float = 0.2,
        val_split_mode: str = "same_as_test",
        val_split_ratio: float = 0.5,
        seed: int | None = None,
        *,
        split: Mapping[str, Any] | PathLike | None = None,
        normal_fraction: float = 0.3,
        anomaly_ratio: float = 0.1,
        split_seed: int = 0,
        train_defects: bool = True,
        defects_per_batch: int = 0,
        sampler_seed: int = 0,
    ) -> None:
        super().__init__(
            root=root,
            category=category,
            train_batch_size=train_batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            train_augmentations=train_augmentations,
            val_augmentations=val_augmentations,
            test_augmentations=test_augmentations,
            augmentations=augmentations,
            test_split_mode=test_split_mode,
            test_split_ratio=test_split_ratio,
            val_split_mode=val_split_mode,
            val_split_ratio=val_split_ratio,
            seed=seed,
        )
        self.normal_fraction = normal_fraction
        self.anomaly_ratio = anomaly_ratio
        self.split_seed = split_seed
        self._init_cold_start(split, category, train_defects, defects_per_batch, sampler_seed)

    def _manifest(self) -> Mapping[str, Any]:
        if self.split is None:
            self.split = make_split(
                self.root,
                categories=[self.category],
                normal_fraction=self.normal_fraction,
                anomaly_ratio=self.anomaly_ratio,
                seed=self.split_seed,
            )
        return self.split if isinstance(self.split, Mapping) else load_split(self.split)


class ColdStartFolder(_ColdStart, Folder):
    """anomalib's ``Folder`` datamodule on a cold-start split manifest (``python -m torch_arcad.coldstart``).

    ``Folder`` lists the images of its directories (``normal_dir``, ``abnormal_dir``, ``normal_test_dir``,
    ``mask_dir``, as in anomalib); the manifest decides which go to training (with their masks) and which to
    testing, as in :class:`ColdStartMVTecAD`. Every image of the manifest's category must be among them.

    Args:
        name, normal_dir, root, abnormal_dir, normal_test_dir, mask_dir, extensions, train_batch_size,
        eval_batch_size, num_workers, ...: as anomalib's ``Folder``.
        split: a manifest dict or its path.
        split_category: the manifest's category to use (default: its only one).
        train_defects, defects_per_batch, sampler_seed: as :class:`ColdStartMVTecAD`.
    """

    def __init__(
        self,
        name: str,
        normal_dir: PathLike | Sequence[PathLike],
        *args: Any,
        split: Mapping[str, Any] | PathLike,
        split_category: str | None = None,
        train_defects: bool = True,
        defects_per_batch: int = 0,
        sampler_seed: int = 0,
        val_split_mode: str = "same_as_test",
        **kwargs: Any,
    ) -> None:
        super().__init__(name, normal_dir, *args, val_split_mode=val_split_mode, **kwargs)
        self._init_cold_start(split, split_category, train_defects, defects_per_batch, sampler_seed)

    def _manifest(self) -> Mapping[str, Any]:
        return self.split if isinstance(self.split, Mapping) else load_split(self.split)
