"""The torch ``Dataset`` over samples in the MVTec AD layout: images and masks read lazily with Pillow.

Scanning folders and reading split manifests is :mod:`torch_arcad.datasets.mvtec`'s job (standard library only);
this module adds the part that decodes images, so that Pillow stays an optional dependency
(``pip install "torch-arcad[examples]"``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .mvtec import (
    MASK_THRESHOLD,
    MAX_PIXEL_VALUE,
    RESAMPLE_CHOICES,
    TEST_DIR,
    TRAIN_DIR,
    MVTecSample,
    PathLike,
    load_split,
    scan_category,
    split_samples,
)

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image as PILImage

__all__ = ["MVTecDataset"]


def _require_pil() -> Any:
    try:
        from PIL import Image
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            'MVTecDataset reads images with Pillow, which is not installed: pip install "torch-arcad[examples]"'
        ) from error
    return Image


def _resample_filter(image_module: Any, name: str) -> Any:
    return {
        "nearest": image_module.Resampling.NEAREST,
        "bilinear": image_module.Resampling.BILINEAR,
        "bicubic": image_module.Resampling.BICUBIC,
    }[name]


def _to_uint8(image_module: Any, image: PILImage.Image) -> PILImage.Image:
    """8-bit version of a 16-bit or 32-bit grey-scale image.

    ``I;16*`` images are scaled by 65535. ``I`` / ``F`` images by the smallest of 1 (float images),
    255, 65535 that bounds their values (so 8-bit data stored as 32-bit stays as is), else their maximum.
    """
    if not (image.mode.startswith("I;16") or image.mode in ("I", "F")):
        return image
    array = np.asarray(image, dtype=np.float64)
    top = float(array.max()) if array.size else 0.0
    if image.mode.startswith("I;16"):
        full = float(np.iinfo(np.uint16).max)
    else:
        ranges = ((1.0,) if image.mode == "F" else ()) + (MAX_PIXEL_VALUE, float(np.iinfo(np.uint16).max))
        full = next((r for r in ranges if top <= r), top)
    scaled = np.clip(array / full * MAX_PIXEL_VALUE, 0.0, MAX_PIXEL_VALUE).round().astype(np.uint8)
    return image_module.fromarray(scaled)


class MVTecDataset(Dataset):
    """A torch ``Dataset`` over :class:`MVTecSample` s that loads images lazily with Pillow.

    Each item is a dict:

    - ``"image"``: float32 tensor ``(3, H, W)`` in [0, 1], RGB (grey-scale images are repeated over
      the three channels). No normalisation: backbones apply their own.
    - ``"mask"``: float32 tensor ``(1, H, W)`` with values in {0, 1}; zeros for normal images (and for
      defect images without a mask).
    - ``"label"``: int64 scalar tensor, 0 normal / 1 defective.
    - ``"category"``, ``"defect"``, ``"path"``: strings (the image path as given by the sample).

    ``(H, W)`` is ``image_size`` (an int gives a square). Masks are resized with ``mask_resample``
    and then thresholded at :data:`MASK_THRESHOLD` times the resized mask's own peak, so a thin defect that the
    resize fades is kept (an absolute threshold would erase a 1-pixel scratch shrunk four times).

    Args:
        samples: the samples to serve, in order.
        image_size: output size, an int ``S`` for ``S x S`` or a pair ``(H, W)``.
        resample: image filter, one of ``"nearest"``, ``"bilinear"``, ``"bicubic"`` (default).
        mask_resample: mask filter before thresholding, ``"bilinear"`` (default) or ``"nearest"``.
        transform: optional callable applied to each item dict (e.g. augmentation); it receives and
            returns the dict.

    Raises:
        ImportError: Pillow is not installed.
        TypeError / ValueError: ``samples`` holds something else than :class:`MVTecSample`, or a size
            or filter is invalid.
    """

    def __init__(
        self,
        samples: Sequence[MVTecSample],
        image_size: int | tuple[int, int] = 256,
        *,
        resample: str = "bicubic",
        mask_resample: str = "bilinear",
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        self._image_module = _require_pil()
        self.samples: list[MVTecSample] = list(samples)
        for index, sample in enumerate(self.samples):
            if not isinstance(sample, MVTecSample):
                raise TypeError(
                    f"samples must be MVTecSample objects, got {type(sample).__name__} at index {index}; "
                    "use scan_category() or torch_arcad.coldstart.split_samples() to build them"
                )
        self.image_size = _check_size(image_size)
        for name, value in (("resample", resample), ("mask_resample", mask_resample)):
            if value not in RESAMPLE_CHOICES:
                raise ValueError(f"{name} must be one of {RESAMPLE_CHOICES}, got {value!r}")
        self.resample = resample
        self.mask_resample = mask_resample
        self.transform = transform

    @classmethod
    def from_root(
        cls,
        root: PathLike,
        category: str,
        part: str = "train",
        image_size: int | tuple[int, int] = 256,
        **kwargs: Any,
    ) -> MVTecDataset:
        """The standard (unsupervised) split of one category.

        Args:
            root: data set root.
            category: category name.
            part: ``"train"`` (``train/good``) or ``"test"`` (``test/good`` then every defect folder).
            image_size: see the class.
            **kwargs: forwarded to the constructor.
        """
        if part not in (TRAIN_DIR, TEST_DIR):
            raise ValueError(f"part must be 'train' or 'test', got {part!r}")
        scan = scan_category(root, category, check_masks=False)
        samples = scan.train_good if part == TRAIN_DIR else scan.test_good + scan.test_defects
        return cls(samples, image_size, **kwargs)

    @classmethod
    def from_split(
        cls,
        split: Mapping[str, Any] | PathLike,
        part: str = "train",
        image_size: int | tuple[int, int] = 256,
        *,
        categories: str | Sequence[str] | None = None,
        root: PathLike | None = None,
        **kwargs: Any,
    ) -> MVTecDataset:
        """A part of a cold-start split manifest (see :mod:`torch_arcad.coldstart`).

        Args:
            split: the manifest dict (from :func:`~torch_arcad.coldstart.make_split` or
                :func:`~torch_arcad.coldstart.load_split`) or the path of its JSON file.
            part: ``"train"`` or ``"test"``.
            image_size: see the class.
            categories: one category, several, or ``None`` for all of the manifest.
            root: data set root overriding the one stored in the manifest.
            **kwargs: forwarded to the constructor.
        """
        manifest = split if isinstance(split, Mapping) else load_split(split)
        samples = split_samples(manifest, part, categories=categories, root=root)
        return cls(samples, image_size, **kwargs)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        height, width = self.image_size
        image_module = self._image_module
        with image_module.open(sample.image) as opened:
            image = _to_uint8(image_module, opened).convert("RGB")
        image = image.resize((width, height), _resample_filter(image_module, self.resample))
        image_tensor = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float() / MAX_PIXEL_VALUE
        if sample.mask is not None:
            with image_module.open(sample.mask) as opened:
                mask = _to_uint8(image_module, opened).convert("L")
            mask = mask.resize((width, height), _resample_filter(image_module, self.mask_resample))
            mask_array = np.asarray(mask, dtype=np.float32) / MAX_PIXEL_VALUE
            # relative to the resized mask's own peak, as ArcAD reads masks: a thin defect that the resize fades
            # (a 1-pixel scratch shrunk 4x peaks near 0.16) keeps its pixels instead of vanishing
            mask_array = mask_array > MASK_THRESHOLD * mask_array.max() if mask_array.max() > 0 else mask_array > 0
            mask_tensor = torch.from_numpy(mask_array.astype(np.float32))[None]
        else:
            mask_tensor = torch.zeros(1, height, width, dtype=torch.float32)
        item: dict[str, Any] = {
            "image": image_tensor.contiguous(),
            "mask": mask_tensor,
            "label": torch.tensor(sample.label, dtype=torch.int64),
            "category": sample.category,
            "defect": sample.defect,
            "path": str(sample.image),
        }
        if self.transform is not None:
            item = self.transform(item)
        return item

    def labels(self) -> Tensor:
        """Image labels of all samples without loading images: int64 tensor ``(len(self),)``."""
        return torch.tensor([s.label for s in self.samples], dtype=torch.int64)

    def __repr__(self) -> str:
        n_anomalous = sum(s.label for s in self.samples)
        return (
            f"{type(self).__name__}({len(self)} samples: {len(self) - n_anomalous} normal, {n_anomalous} defective; "
            f"image_size={self.image_size})"
        )


def _check_size(image_size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(image_size, bool):
        raise TypeError(f"image_size must be an int or a pair of ints, got {image_size!r}")
    if isinstance(image_size, int):
        size = (image_size, image_size)
    elif isinstance(image_size, (tuple, list)) and len(image_size) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) for v in image_size
    ):
        size = (int(image_size[0]), int(image_size[1]))
    else:
        raise TypeError(f"image_size must be an int or a pair of ints (H, W), got {image_size!r}")
    if min(size) <= 0:
        raise ValueError(f"image_size must be positive, got {image_size!r}")
    return size
