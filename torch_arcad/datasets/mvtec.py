"""Reading data sets stored in the MVTec AD folder layout.

Layout of one data set root::

    <root>/<category>/train/good/*.png                  normal training images
    <root>/<category>/test/good/*.png                   normal test images
    <root>/<category>/test/<defect>/*.png               defective test images, one folder per defect kind
    <root>/<category>/ground_truth/<defect>/<stem>_mask.png   binary defect masks (0 / 255)

Images may be PNG, JPEG or BMP (extensions matched case-insensitively); files whose name starts
with a dot and files with other extensions are ignored. Folders beside ``train`` / ``test`` /
``ground_truth`` (``validation``, licence files, ...) are ignored as well.

Scanning (:func:`list_categories`, :func:`scan_category`) uses the standard library only, so the
cold-start command line tool runs without an image library. Checking whether a defect mask is all
zero is done by decoding the PNG stream with :mod:`zlib` (:func:`png_is_blank`).
:class:`~torch_arcad.datasets.images.MVTecDataset` (``torch_arcad.datasets.images``) loads the images lazily with
Pillow, which is an optional dependency (``pip install "torch-arcad[examples]"``).

A cold-start split (:mod:`torch_arcad.coldstart`) is stored as a JSON manifest of such samples; reading, checking
and writing it (:func:`load_split`, :func:`split_samples`, :func:`save_split`) is done here, so that
:meth:`~torch_arcad.datasets.images.MVTecDataset.from_split` does not depend on the module that makes splits.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union


__all__ = [
    "IMAGE_EXTENSIONS",
    "MASK_SUFFIX",
    "NORMAL_LABEL",
    "ANOMALY_LABEL",
    "GOOD",
    "CategoryScan",
    "MVTecSample",
    "SPLIT_FORMAT",
    "SPLIT_VERSION",
    "list_categories",
    "load_split",
    "png_is_blank",
    "save_split",
    "scan_category",
    "split_samples",
]

PathLike = Union[str, "os.PathLike[str]"]

#: File extensions (lower case) accepted as images and masks.
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp")
#: Suffix of a mask file's stem: ``ground_truth/<defect>/<stem>_mask.png`` belongs to ``test/<defect>/<stem>.*``.
MASK_SUFFIX: str = "_mask"
#: Name of the defect-free folders (``train/good``, ``test/good``) and the defect kind of normal samples.
GOOD: str = "good"
#: Image label of a normal sample.
NORMAL_LABEL: int = 0
#: Image label of a defective sample.
ANOMALY_LABEL: int = 1
#: Sub-folders of a category.
TRAIN_DIR, TEST_DIR, GROUND_TRUTH_DIR = "train", "test", "ground_truth"
#: Mask values above this fraction of full scale (after resizing to [0, 1]) count as defect.
MASK_THRESHOLD: float = 0.5
#: Largest 8-bit pixel value; images are divided by it to land in [0, 1].
MAX_PIXEL_VALUE: float = 255.0
#: Resampling filters accepted by :class:`MVTecDataset`.
RESAMPLE_CHOICES: tuple[str, ...] = ("nearest", "bilinear", "bicubic")
#: Value of the cold-start split manifest's ``"format"`` key (see :mod:`torch_arcad.coldstart`).
SPLIT_FORMAT: str = "torch-arcad-coldstart"
#: Current manifest version.
SPLIT_VERSION: int = 1
#: Parts of a split.
PARTS: tuple[str, ...] = (TRAIN_DIR, TEST_DIR)

_SAMPLE_KEYS = ("image", "mask", "label", "defect")
_TOP_KEYS = ("format", "version", "root", "normal_fraction", "anomaly_ratio", "seed", "categories")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Samples per pixel for the PNG colour types whose zero value means black (grey, RGB, grey+alpha, RGBA).
_PNG_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}
_BITS_PER_BYTE = 8


@dataclass(frozen=True)
class MVTecSample:
    """One image of a data set.

    Attributes:
        image: path of the image file.
        mask: path of its ground-truth mask, or ``None`` (normal images; defect images only when
            missing masks were explicitly allowed).
        label: :data:`NORMAL_LABEL` (0) or :data:`ANOMALY_LABEL` (1).
        defect: ``"good"`` for normal images, otherwise the defect kind (the ``test/<defect>`` folder).
        category: the category folder name.
    """

    image: Path
    mask: Path | None
    label: int
    defect: str
    category: str


@dataclass(frozen=True)
class CategoryScan:
    """The files of one category, each list sorted by file name.

    Attributes:
        category: the category folder name.
        root: the data set root the category lies in.
        train_good: samples of ``train/good``.
        test_good: samples of ``test/good`` (may be empty).
        test_defects: samples of every ``test/<defect>`` folder, ordered by defect kind then name.
        empty_masks: masks of ``test_defects`` that are all zero (only filled when the scan checked
            masks; masks that :func:`png_is_blank` cannot decode count as non-empty).
    """

    category: str
    root: Path
    train_good: list[MVTecSample]
    test_good: list[MVTecSample]
    test_defects: list[MVTecSample]
    empty_masks: list[Path] = field(default_factory=list)

    @property
    def defect_kinds(self) -> list[str]:
        """Sorted defect kinds that have at least one image."""
        return sorted({s.defect for s in self.test_defects})

    def defects_by_kind(self) -> dict[str, list[MVTecSample]]:
        """Defective samples grouped by kind (kinds sorted, samples in scan order)."""
        groups: dict[str, list[MVTecSample]] = {kind: [] for kind in self.defect_kinds}
        for sample in self.test_defects:
            groups[sample.defect].append(sample)
        return groups


def _is_image_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def _list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name."""
    return sorted((p for p in folder.iterdir() if _is_image_file(p)), key=lambda p: p.name)


def _list_subdirs(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def _check_root(root: PathLike) -> Path:
    path = Path(root).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"data set root {str(path)!r} does not exist")
    if not path.is_dir():
        raise NotADirectoryError(f"data set root {str(path)!r} is not a folder")
    return path


def list_categories(root: PathLike) -> list[str]:
    """Names of the categories under an MVTec-layout root, sorted.

    A category is a sub-folder of ``root`` that holds a ``train`` or a ``test`` folder (whether it is
    complete is checked by :func:`scan_category`).

    Args:
        root: the data set root, e.g. ``.../mvtec_anomaly_detection``.

    Returns:
        The sorted category names.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ValueError: no sub-folder of ``root`` looks like a category (the message says what was
            expected, and hints at passing the parent when ``root`` is itself a category).
    """
    path = _check_root(root)
    categories = [
        d.name for d in _list_subdirs(path) if (d / TRAIN_DIR).is_dir() or (d / TEST_DIR).is_dir()
    ]
    if not categories:
        hint = ""
        if (path / TRAIN_DIR).is_dir() or (path / TEST_DIR).is_dir():
            hint = f"; {str(path)!r} looks like a single category, pass its parent folder {str(path.parent)!r}"
        raise ValueError(
            f"{str(path)!r} is not in the MVTec AD layout: expected sub-folders <category>/{TRAIN_DIR}/{GOOD} "
            f"and <category>/{TEST_DIR}/<defect or good>, found none{hint}"
        )
    return categories


def _find_masks(folder: Path) -> dict[str, Path]:
    """Mask files of one ``ground_truth/<defect>`` folder keyed by the image stem they belong to."""
    masks: dict[str, Path] = {}
    if not folder.is_dir():
        return masks
    suffix = MASK_SUFFIX.lower()
    for path in _list_images(folder):
        stem = path.stem
        if stem.lower().endswith(suffix):
            image_stem = stem[: len(stem) - len(suffix)]
            # Prefer a PNG mask when several extensions exist for one stem.
            if image_stem not in masks or path.suffix.lower() == ".png":
                masks[image_stem] = path
    return masks


def scan_category(
    root: PathLike,
    category: str,
    *,
    allow_missing_masks: bool = False,
    check_masks: bool = True,
) -> CategoryScan:
    """List the samples of one category without loading any image.

    Args:
        root: the data set root.
        category: a category folder name under ``root``.
        allow_missing_masks: when ``False`` (default) every defect image must have a mask
            ``ground_truth/<defect>/<stem>_mask.<ext>``; when ``True`` a missing mask gives ``mask=None``.
        check_masks: decode every defect mask with the standard library and record the all-zero
            ones in :attr:`CategoryScan.empty_masks` (empty masks are allowed).

    Returns:
        The :class:`CategoryScan` of the category.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ValueError: ``category`` is not a folder of ``root`` (the message lists the categories found);
            a required folder (``train/good``, ``test``) is missing (the message names it);
            ``train/good`` holds no image; the category has defect images but no ``ground_truth``
            folder, or a defect image has no mask (the message names the category and an image).
    """
    path = _check_root(root)
    cat_dir = path / category
    if not cat_dir.is_dir():
        try:
            available = ", ".join(list_categories(path))
        except ValueError:
            available = "none"
        raise ValueError(f"unknown category {category!r} under {str(path)!r}; available categories: {available}")
    for required in (cat_dir / TRAIN_DIR / GOOD, cat_dir / TEST_DIR):
        if not required.is_dir():
            raise ValueError(
                f"category {category!r} is not in the MVTec AD layout: missing folder {str(required)!r}"
            )

    def make(image: Path, mask: Path | None, label: int, defect: str) -> MVTecSample:
        return MVTecSample(image=image, mask=mask, label=label, defect=defect, category=category)

    train_good = [make(p, None, NORMAL_LABEL, GOOD) for p in _list_images(cat_dir / TRAIN_DIR / GOOD)]
    if not train_good:
        raise ValueError(
            f"category {category!r} is empty: no images ({', '.join(IMAGE_EXTENSIONS)}) in "
            f"{str(cat_dir / TRAIN_DIR / GOOD)!r}"
        )
    test_good_dir = cat_dir / TEST_DIR / GOOD
    test_good = (
        [make(p, None, NORMAL_LABEL, GOOD) for p in _list_images(test_good_dir)] if test_good_dir.is_dir() else []
    )

    gt_dir = cat_dir / GROUND_TRUTH_DIR
    test_defects: list[MVTecSample] = []
    for defect_dir in _list_subdirs(cat_dir / TEST_DIR):
        if defect_dir.name == GOOD:
            continue
        images = _list_images(defect_dir)
        if not images:
            continue
        if not gt_dir.is_dir() and not allow_missing_masks:
            raise ValueError(
                f"category {category!r} has defect images (e.g. {str(images[0])!r}) but no ground-truth masks: "
                f"missing folder {str(gt_dir)!r} with <defect>/<image stem>{MASK_SUFFIX}.png files"
            )
        masks = _find_masks(gt_dir / defect_dir.name)
        for image in images:
            mask = masks.get(image.stem)
            if mask is None and not allow_missing_masks:
                expected = gt_dir / defect_dir.name / f"{image.stem}{MASK_SUFFIX}.png"
                raise ValueError(
                    f"category {category!r}: defect image {str(image)!r} has no ground-truth mask "
                    f"(expected {str(expected)!r}); pass allow_missing_masks=True to accept it without one"
                )
            test_defects.append(make(image, mask, ANOMALY_LABEL, defect_dir.name))

    empty: list[Path] = []
    if check_masks:
        empty = [s.mask for s in test_defects if s.mask is not None and png_is_blank(s.mask) is True]
    return CategoryScan(
        category=category,
        root=path,
        train_good=train_good,
        test_good=test_good,
        test_defects=test_defects,
        empty_masks=empty,
    )


def png_is_blank(path: PathLike) -> bool | None:
    """Whether a PNG image is all zero, decoded with the standard library only.

    Works for non-interlaced grey-scale and RGB images (with or without alpha; alpha samples are
    checked too) at any bit depth. Un-filtering is not needed: a PNG row filter predicts each byte
    from earlier bytes, so the first non-zero pixel byte in scan order is stored unchanged, and the
    image is all zero exactly when every filtered byte except the per-row filter type is zero.

    Args:
        path: a file path.

    Returns:
        ``True`` (all zero), ``False`` (some non-zero sample), or ``None`` when the file is not a
        PNG this function decodes (palette or interlaced PNG, another format, a damaged file).
    """
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    if not data.startswith(_PNG_SIGNATURE):
        return None
    pos = len(_PNG_SIGNATURE)
    header: tuple[int, ...] | None = None
    idat: list[bytes] = []
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length  # length, type, body, CRC
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    if header is None or not idat:
        return None
    width, height, bit_depth, colour_type, _, _, interlace = header
    if colour_type not in _PNG_CHANNELS or interlace != 0:
        return None
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error:
        return None
    row_bytes = -(-width * _PNG_CHANNELS[colour_type] * bit_depth // _BITS_PER_BYTE)
    stride = row_bytes + 1
    if len(raw) < stride * height:
        return None
    raw = raw[: stride * height]
    filter_bytes = raw[::stride]
    nonzero_total = len(raw) - raw.count(0)
    nonzero_filters = len(filter_bytes) - filter_bytes.count(0)
    return nonzero_total == nonzero_filters


# ------------------------------------------------------------------------------------ split manifests


def save_split(split: Mapping[str, Any], path: PathLike) -> Path:
    """Validate ``split`` and write it as JSON (atomically: a temporary file is renamed into place).

    Returns:
        The path written.
    """
    _validate(dict(split), source="split")
    out = Path(path).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(split, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, out)
    return out


def load_split(path: PathLike) -> dict[str, Any]:
    """Read and validate a cold-start manifest written by :func:`save_split` or the command line.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not JSON or not a valid manifest (the message names the first problem,
            e.g. the key and sample index).
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"split manifest {str(file)!r} does not exist")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"split manifest {str(file)!r} is not valid JSON: {error}") from error
    return _validate(data, source=str(file))


def _validate(data: Any, source: str) -> dict[str, Any]:
    where = f"split manifest {source!r}"
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a JSON object, got {type(data).__name__}")
    missing = [k for k in _TOP_KEYS if k not in data]
    if missing:
        raise ValueError(f"{where} lacks the keys {missing}; expected {list(_TOP_KEYS)}")
    if data["format"] != SPLIT_FORMAT:
        raise ValueError(f"{where} has format {data['format']!r}, expected {SPLIT_FORMAT!r}")
    if data["version"] != SPLIT_VERSION:
        raise ValueError(f"{where} has version {data['version']!r}; this library reads version {SPLIT_VERSION}")
    if not isinstance(data["root"], str):
        raise ValueError(f"{where}: 'root' must be a string, got {type(data['root']).__name__}")
    for key in ("normal_fraction", "anomaly_ratio"):
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
            raise ValueError(f"{where}: {key!r} must be a number in (0, 1), got {value!r}")
    if isinstance(data["seed"], bool) or not isinstance(data["seed"], int):
        raise ValueError(f"{where}: 'seed' must be an int, got {data['seed']!r}")
    categories = data["categories"]
    if not isinstance(categories, dict) or not categories:
        raise ValueError(f"{where}: 'categories' must be a non-empty object of category -> {{'train', 'test'}}")
    for name, entry in categories.items():
        if not isinstance(entry, dict) or set(entry) != set(PARTS):
            keys = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
            raise ValueError(f"{where}: category {name!r} must have exactly the keys ['test', 'train'], got {keys}")
        seen: dict[str, str] = {}
        for part in PARTS:
            samples = entry[part]
            if not isinstance(samples, list):
                raise ValueError(f"{where}: categories[{name!r}][{part!r}] must be a list of samples")
            for index, sample in enumerate(samples):
                _validate_sample(sample, f"{where}: categories[{name!r}][{part!r}][{index}]")
                image = sample["image"]
                if image in seen:
                    raise ValueError(
                        f"{where}: image {image!r} of category {name!r} appears twice ({seen[image]} and {part})"
                    )
                seen[image] = part
        if not any(s["label"] == NORMAL_LABEL for s in entry["train"]):
            raise ValueError(f"{where}: category {name!r} has no normal training image")
    return data


def _validate_sample(sample: Any, where: str) -> None:
    if not isinstance(sample, dict) or set(sample) != set(_SAMPLE_KEYS):
        got = sorted(sample) if isinstance(sample, dict) else type(sample).__name__
        raise ValueError(f"{where} must be an object with keys {sorted(_SAMPLE_KEYS)}, got {got}")
    if not isinstance(sample["image"], str) or not sample["image"]:
        raise ValueError(f"{where}: 'image' must be a non-empty relative path, got {sample['image']!r}")
    if sample["mask"] is not None and not isinstance(sample["mask"], str):
        raise ValueError(f"{where}: 'mask' must be a relative path or null, got {sample['mask']!r}")
    for key in ("image", "mask"):
        value = sample[key]
        if isinstance(value, str) and (value.startswith("/") or Path(value).is_absolute()):
            raise ValueError(f"{where}: {key!r} must be relative to the manifest root, got {value!r}")
    label = sample["label"]
    if isinstance(label, bool) or label not in (NORMAL_LABEL, ANOMALY_LABEL):
        raise ValueError(f"{where}: 'label' must be 0 or 1, got {label!r}")
    defect = sample["defect"]
    if not isinstance(defect, str) or not defect:
        raise ValueError(f"{where}: 'defect' must be 'good' or a defect kind, got {defect!r}")
    if (label == NORMAL_LABEL) != (defect == GOOD):
        raise ValueError(f"{where}: label {label} does not match defect {defect!r} (label 0 <=> defect 'good')")
    if label == NORMAL_LABEL and sample["mask"] is not None:
        raise ValueError(f"{where}: a normal sample must have mask null, got {sample['mask']!r}")


def split_samples(
    split: Mapping[str, Any],
    part: str = "train",
    *,
    categories: str | Sequence[str] | None = None,
    root: PathLike | None = None,
) -> list[MVTecSample]:
    """Samples of one part of a manifest, with absolute paths, ready for :class:`MVTecDataset`.

    Args:
        split: a manifest (from :func:`~torch_arcad.coldstart.make_split` or :func:`load_split`).
        part: ``"train"`` or ``"test"``.
        categories: one category, several, or ``None`` for all (in manifest order).
        root: data set root overriding the manifest's ``"root"`` (e.g. after moving the data).

    Returns:
        :class:`MVTecSample` list in manifest order.

    Raises:
        ValueError: ``part`` is not ``"train"`` / ``"test"``, or a category is not in the manifest.
    """
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    available = list(split["categories"])
    if categories is None:
        names = available
    else:
        names = [categories] if isinstance(categories, str) else list(categories)
        unknown = [c for c in names if c not in split["categories"]]
        if unknown:
            raise ValueError(f"unknown categories {unknown} in the split; it holds: {', '.join(available)}")
    base = Path(root if root is not None else split["root"]).expanduser()
    return [
        MVTecSample(
            image=base / record["image"],
            mask=None if record["mask"] is None else base / record["mask"],
            label=int(record["label"]),
            defect=record["defect"],
            category=name,
        )
        for name in names
        for record in split["categories"][name][part]
    ]


# ----------------------------------------------------------------------------------------------- loading
