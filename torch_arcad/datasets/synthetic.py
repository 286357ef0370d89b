"""A small deterministic data set in the MVTec AD layout, generated with numpy and cached on disk.

Three categories, each with normal images that vary (position, scale, orientation, lighting, sensor
noise) and several defect kinds drawn with exact binary masks:

- ``grid``: a periodic weave (two crossed thread families) with random period, phase, tilt, tint,
  lighting gradient and noise. Defects: ``scratch``, ``hole``, ``color``.
- ``fabric``: a stochastic texture, Gaussian noise smoothed anisotropically with random correlation
  lengths, lighting and noise. Defects: ``stain``, ``scratch``, ``color``.
- ``washer``: an object, a shaded metal washer (disk with a centred hole) on a dark background, with
  jittered centre, radii and light direction. Defects: ``scratch``, ``hole``, ``missing``, ``color``.

Defects: ``scratch`` a thin bright or dark line segment; ``hole`` a dark round pit; ``stain`` a
darker irregular blob; ``color`` an irregular blob tinted with a saturated colour; ``missing`` a bite
out of the washer's rim that shows the background. The mask of a defect image is exactly the set of
pixels the defect changed, written as ``<stem>_mask.png`` with values 0 / 255.

Files are PNGs written with :mod:`zlib` (no image library needed). Generation is deterministic:
each image draws from its own ``numpy.random.default_rng`` seeded by ``(seed, category, part,
defect kind, index)``, so the same parameters give byte-identical files on a given platform.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import tempfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np

from torch_arcad.datasets.mvtec import GOOD, GROUND_TRUTH_DIR, MASK_SUFFIX, TEST_DIR, TRAIN_DIR

__all__ = [
    "CACHE_ENV",
    "GENERATOR_VERSION",
    "SYNTHETIC_CATEGORIES",
    "default_cache_dir",
    "make_synthetic_dataset",
    "render_sample",
    "write_png",
]

PathLike = Union[str, "os.PathLike[str]"]

#: Bumped whenever the generated images change, so that stale caches are not reused.
GENERATOR_VERSION: int = 2
#: Environment variable that overrides the cache folder.
CACHE_ENV: str = "TORCH_ARCAD_CACHE"
#: Cache folder used when neither ``root`` nor :data:`CACHE_ENV` is given.
DEFAULT_CACHE_DIR: Path = Path("~") / ".cache" / "torch_arcad"
#: Categories and their defect kinds.
SYNTHETIC_CATEGORIES: dict[str, tuple[str, ...]] = {
    "grid": ("scratch", "hole", "color"),
    "fabric": ("stain", "scratch", "color"),
    "washer": ("scratch", "hole", "missing", "color"),
}
#: Default :func:`make_synthetic_dataset` ``defect_strength``: how far a defect moves its pixels towards the
#: defect's own appearance (1.0: fully drawn, the version-1 images). Chosen so that the RD4AD-style baseline of
#: ``examples/quickstart.py`` is off the ceiling (image AUROC in the 80s, see ``examples/README.md``) and the
#: defects stay visible.
DEFAULT_DEFECT_STRENGTH: float = 0.4
#: Smallest image side the shapes are drawn reliably at.
MIN_IMAGE_SIZE: int = 16
#: Name of the JSON file that records the generation parameters inside a generated data set.
PARAMS_FILE: str = "synthetic.json"

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_BIT_DEPTH = 8
_PNG_COLOUR_TYPES = {1: 0, 3: 2}  # channels -> PNG colour type (grey, RGB)
_PNG_COMPRESSION = 9
_MAX_PIXEL = 255
_MAX_DRAW_ATTEMPTS = 32
_DATASET_DIR_MODE = 0o755
_PART_CODES = {"train": 0, "test_good": 1, "test_defect": 2}

# Drawing parameters, as fractions of the image side unless stated.
_NOISE_STD = 0.02  # sensor noise, in intensity units
_BRIGHTNESS_RANGE = (0.88, 1.12)
_GRADIENT_STD = 0.06  # lighting gradient across the image, intensity units
_GRID_CELLS = (6.5, 8.5)  # weave periods per image side
_GRID_TILT_STD = 0.04  # radians
_FABRIC_CORRELATION = ((0.010, 0.020), (0.035, 0.070))  # Gaussian smoothing sigma along x, along y
_FABRIC_CONTRAST = 0.11
_WASHER_CENTRE_STD = 0.025
_WASHER_OUTER = (0.31, 0.37)
_WASHER_INNER = (0.36, 0.44)  # fraction of the outer radius
_BACKGROUND_LEVEL = 0.12
_SCRATCH_LENGTH = (0.25, 0.5)
_SCRATCH_HALF_WIDTH = (0.006, 0.014)
_MIN_SCRATCH_HALF_WIDTH = 0.75  # pixels: keeps 1-px scratches 8-connected at tiny sizes
_HOLE_RADIUS = (0.035, 0.07)
_MIN_HOLE_RADIUS = 1.5  # pixels
_BLOB_RADIUS = (0.06, 0.12)
_MIN_BLOB_RADIUS = 2.0  # pixels
_BLOB_LOBES = (3, 6)  # number of ellipses whose union forms a blob
_BITE_RADIUS = (0.25, 0.4)  # fraction of the washer's outer radius
_DEFECT_MARGIN = 0.1  # keep defect centres this far from the image border
_COLOURS = np.array([[0.85, 0.15, 0.1], [0.1, 0.6, 0.15], [0.15, 0.25, 0.85], [0.9, 0.75, 0.05]])


@dataclass
class _Canvas:
    """A normal image being drawn: ``image`` float64 (S, S, 3) in [0, 1]; ``region`` bool (S, S) where
    defects may lie; ``background`` float64 (S, S, 3) shown where a part is missing."""

    image: np.ndarray
    region: np.ndarray
    background: np.ndarray


def default_cache_dir() -> Path:
    """``$TORCH_ARCAD_CACHE`` when set, otherwise ``~/.cache/torch_arcad`` (expanded)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else DEFAULT_CACHE_DIR.expanduser()


def write_png(path: PathLike, array: np.ndarray) -> None:
    """Write an 8-bit grey-scale or RGB PNG with the standard library.

    Args:
        path: output file.
        array: uint8 array ``(H, W)`` (grey) or ``(H, W, 3)`` (RGB).

    Raises:
        TypeError: ``array`` is not uint8.
        ValueError: ``array`` has another shape.
    """
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8:
        raise TypeError(f"array must be a uint8 numpy array, got {getattr(array, 'dtype', type(array).__name__)}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in _PNG_COLOUR_TYPES or min(array.shape[:2]) == 0:
        raise ValueError(f"array must have shape (H, W) or (H, W, 3) with H, W > 0, got {array.shape}")
    height, width, channels = array.shape
    rows = np.ascontiguousarray(array).reshape(height, width * channels)
    raw = np.concatenate([np.zeros((height, 1), dtype=np.uint8), rows], axis=1).tobytes()  # filter 0 per row

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, _PNG_BIT_DEPTH, _PNG_COLOUR_TYPES[channels], 0, 0, 0)
    data = (
        _PNG_SIGNATURE
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, _PNG_COMPRESSION))
        + chunk(b"IEND", b"")
    )
    Path(path).write_bytes(data)


# ------------------------------------------------------------------------------------------- drawing


def _coords(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(yy, xx)``, float64 (S, S)."""
    axis = np.arange(size, dtype=np.float64) + 0.5
    return np.meshgrid(axis, axis, indexing="ij")


def _lighting(rng: np.random.Generator, size: int) -> np.ndarray:
    """Brightness factor times a linear gradient, float64 (S, S)."""
    yy, xx = _coords(size)
    gy, gx = rng.normal(0.0, _GRADIENT_STD, size=2)
    brightness = rng.uniform(*_BRIGHTNESS_RANGE)
    return brightness + gy * (yy / size - 0.5) + gx * (xx / size - 0.5)


def _gaussian_smooth(noise: np.ndarray, sigma_y: float, sigma_x: float) -> np.ndarray:
    """Periodic Gaussian smoothing through the FFT, (S, S) -> (S, S)."""
    fy = np.fft.fftfreq(noise.shape[0])[:, None]
    fx = np.fft.rfftfreq(noise.shape[1])[None, :]
    kernel = np.exp(-2.0 * np.pi**2 * ((sigma_y * fy) ** 2 + (sigma_x * fx) ** 2))
    return np.fft.irfft2(np.fft.rfft2(noise) * kernel, s=noise.shape)


def _render_grid(rng: np.random.Generator, size: int) -> _Canvas:
    yy, xx = _coords(size)
    period = size / rng.uniform(*_GRID_CELLS)
    tilt = rng.normal(0.0, _GRID_TILT_STD)
    phase_u, phase_v = rng.uniform(0.0, 2.0 * np.pi, size=2)
    u = 2.0 * np.pi / period * (xx * np.cos(tilt) + yy * np.sin(tilt)) + phase_u
    v = 2.0 * np.pi / period * (-xx * np.sin(tilt) + yy * np.cos(tilt)) + phase_v
    weave = 0.5 + 0.18 * np.tanh(2.5 * np.sin(u)) * np.tanh(2.5 * np.sin(v)) + 0.06 * (np.cos(2 * u) + np.cos(2 * v))
    tint = np.array([0.78, 0.84, 0.95]) * rng.uniform(0.97, 1.03, size=3)
    image = (weave * _lighting(rng, size))[..., None] * tint
    return _Canvas(image=image, region=np.ones((size, size), dtype=bool), background=image.copy())


def _render_fabric(rng: np.random.Generator, size: int) -> _Canvas:
    (sx_lo, sx_hi), (sy_lo, sy_hi) = _FABRIC_CORRELATION
    sigma_x = max(0.5, size * rng.uniform(sx_lo, sx_hi))
    sigma_y = max(1.0, size * rng.uniform(sy_lo, sy_hi))
    texture = _gaussian_smooth(rng.standard_normal((size, size)), sigma_y, sigma_x)
    texture = (texture - texture.mean()) / max(texture.std(), np.finfo(np.float64).eps)
    value = 0.55 + _FABRIC_CONTRAST * texture
    tint = np.array([0.95, 0.82, 0.62]) * rng.uniform(0.97, 1.03, size=3)
    image = (value * _lighting(rng, size))[..., None] * tint
    return _Canvas(image=image, region=np.ones((size, size), dtype=bool), background=image.copy())


def _render_washer(rng: np.random.Generator, size: int) -> _Canvas:
    yy, xx = _coords(size)
    cy, cx = size / 2.0 + rng.normal(0.0, _WASHER_CENTRE_STD * size, size=2)
    outer = size * rng.uniform(*_WASHER_OUTER)
    inner = outer * rng.uniform(*_WASHER_INNER)
    rho = np.hypot(yy - cy, xx - cx)
    angle = np.arctan2(yy - cy, xx - cx)
    body = (rho <= outer) & (rho >= inner)
    light = rng.uniform(0.0, 2.0 * np.pi)
    shade = 0.62 + 0.12 * np.cos(angle - light) * rho / outer + 0.03 * np.sin(rho * 2.0 * np.pi / (size / 18.0))
    background = np.full((size, size), _BACKGROUND_LEVEL) + 0.03 * (yy / size)
    lighting = _lighting(rng, size)
    value = np.where(body, shade, background) * lighting
    tint = np.array([0.92, 0.93, 0.97])
    return _Canvas(image=value[..., None] * tint, region=body, background=(background * lighting)[..., None] * tint)


_RENDERERS: dict[str, Callable[[np.random.Generator, int], _Canvas]] = {
    "grid": _render_grid,
    "fabric": _render_fabric,
    "washer": _render_washer,
}


def _pick_centre(rng: np.random.Generator, region: np.ndarray) -> tuple[float, float]:
    """A random pixel centre inside ``region``, away from the border."""
    size = region.shape[0]
    margin = int(_DEFECT_MARGIN * size)
    inner = np.zeros_like(region)
    inner[margin : size - margin, margin : size - margin] = True
    candidates = np.flatnonzero(region & inner)
    if candidates.size == 0:
        candidates = np.flatnonzero(region)
    flat = int(candidates[rng.integers(candidates.size)])
    return flat // size + 0.5, flat % size + 0.5


def _scratch_mask(rng: np.random.Generator, canvas: _Canvas) -> np.ndarray:
    size = canvas.region.shape[0]
    yy, xx = _coords(size)
    cy, cx = _pick_centre(rng, canvas.region)
    theta = rng.uniform(0.0, np.pi)
    half_length = 0.5 * size * rng.uniform(*_SCRATCH_LENGTH)
    half_width = max(_MIN_SCRATCH_HALF_WIDTH, size * rng.uniform(*_SCRATCH_HALF_WIDTH))
    dy, dx = np.sin(theta), np.cos(theta)
    along = np.clip((yy - cy) * dy + (xx - cx) * dx, -half_length, half_length)
    dist = np.hypot(yy - (cy + along * dy), xx - (cx + along * dx))
    return dist <= half_width


def _disk_mask(
    rng: np.random.Generator, canvas: _Canvas, radius_range: tuple[float, float], minimum: float
) -> np.ndarray:
    size = canvas.region.shape[0]
    yy, xx = _coords(size)
    cy, cx = _pick_centre(rng, canvas.region)
    radius = max(minimum, size * rng.uniform(*radius_range))
    return np.hypot(yy - cy, xx - cx) <= radius


def _blob_mask(rng: np.random.Generator, canvas: _Canvas) -> np.ndarray:
    """Union of a few random ellipses around one centre: an irregular blob."""
    size = canvas.region.shape[0]
    yy, xx = _coords(size)
    cy, cx = _pick_centre(rng, canvas.region)
    radius = max(_MIN_BLOB_RADIUS, size * rng.uniform(*_BLOB_RADIUS))
    mask = np.hypot(yy - cy, xx - cx) <= 0.6 * radius
    for _ in range(int(rng.integers(_BLOB_LOBES[0], _BLOB_LOBES[1] + 1))):
        oy, ox = rng.normal(0.0, 0.4 * radius, size=2)
        ry, rx = radius * rng.uniform(0.35, 0.8, size=2)
        theta = rng.uniform(0.0, np.pi)
        py, px = yy - cy - oy, xx - cx - ox
        a = py * np.cos(theta) - px * np.sin(theta)
        b = py * np.sin(theta) + px * np.cos(theta)
        mask |= (a / ry) ** 2 + (b / rx) ** 2 <= 1.0
    return mask


def _bite_mask(rng: np.random.Generator, canvas: _Canvas) -> np.ndarray:
    """A disk centred on the rim of the object: the part that goes missing."""
    size = canvas.region.shape[0]
    yy, xx = _coords(size)
    rows, cols = np.nonzero(canvas.region)
    cy, cx = rows.mean() + 0.5, cols.mean() + 0.5
    outer = np.hypot(rows + 0.5 - cy, cols + 0.5 - cx).max()
    phi = rng.uniform(0.0, 2.0 * np.pi)
    radius = max(_MIN_BLOB_RADIUS, outer * rng.uniform(*_BITE_RADIUS))
    by, bx = cy + outer * np.sin(phi), cx + outer * np.cos(phi)
    return np.hypot(yy - by, xx - bx) <= radius


def _apply_defect(rng: np.random.Generator, canvas: _Canvas, kind: str, strength: float) -> np.ndarray:
    """Draw a defect into ``canvas.image`` in place, blended with weight ``strength`` in (0, 1] over the normal
    pixels; returns its exact mask, bool (S, S)."""
    for _ in range(_MAX_DRAW_ATTEMPTS):
        if kind == "scratch":
            mask = _scratch_mask(rng, canvas)
        elif kind == "hole":
            mask = _disk_mask(rng, canvas, _HOLE_RADIUS, _MIN_HOLE_RADIUS)
        elif kind in ("stain", "color"):
            mask = _blob_mask(rng, canvas)
        elif kind == "missing":
            mask = _bite_mask(rng, canvas)
        else:  # pragma: no cover - guarded by SYNTHETIC_CATEGORIES
            raise ValueError(f"unknown defect kind {kind!r}")
        mask &= canvas.region
        if mask.any():
            break
    else:  # pragma: no cover - the region always has room for a defect
        raise RuntimeError(f"could not place a {kind!r} defect")
    image = canvas.image
    before = image[mask].copy()
    if kind == "scratch":
        level = 0.95 if rng.random() < 0.5 else 0.08
        drawn = 0.25 * before + 0.75 * level
    elif kind == "hole":
        drawn = 0.04 + 0.1 * before
    elif kind == "stain":
        drawn = before * np.array([0.55, 0.45, 0.35])
    elif kind == "color":
        colour = _COLOURS[rng.integers(len(_COLOURS))]
        drawn = 0.35 * before + 0.65 * colour
    else:  # missing
        drawn = canvas.background[mask]
    image[mask] = before + strength * (drawn - before)
    return mask


def render_sample(
    category: str,
    size: int,
    rng: np.random.Generator,
    defect: str | None = None,
    defect_strength: float = DEFAULT_DEFECT_STRENGTH,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one image of a synthetic category.

    Args:
        category: one of :data:`SYNTHETIC_CATEGORIES`.
        size: image side ``S`` in pixels (at least :data:`MIN_IMAGE_SIZE`).
        rng: the random generator to draw from.
        defect: ``None`` for a normal image, otherwise one of the category's defect kinds.
        defect_strength: in (0, 1]: the defect's pixels move this fraction of the way from the normal image to the
            fully drawn defect (default :data:`DEFAULT_DEFECT_STRENGTH`; 1.0 draws it fully).

    Returns:
        ``(image, mask)``: uint8 ``(S, S, 3)`` and bool ``(S, S)`` (all ``False`` for a normal image;
        exactly the changed pixels otherwise).
    """
    _check_category(category)
    _check_strength(defect_strength)
    if defect is not None and defect not in SYNTHETIC_CATEGORIES[category]:
        raise ValueError(
            f"defect must be None or one of {SYNTHETIC_CATEGORIES[category]} for category {category!r}, got {defect!r}"
        )
    canvas = _RENDERERS[category](rng, size)
    canvas.image = canvas.image + rng.normal(0.0, _NOISE_STD, size=canvas.image.shape)
    mask = np.zeros((size, size), dtype=bool) if defect is None else _apply_defect(rng, canvas, defect, defect_strength)
    image = np.rint(np.clip(canvas.image, 0.0, 1.0) * _MAX_PIXEL).astype(np.uint8)
    return image, mask


# ------------------------------------------------------------------------------------------- data set


def _check_category(category: str) -> None:
    if category not in SYNTHETIC_CATEGORIES:
        raise ValueError(f"unknown synthetic category {category!r}; available: {', '.join(SYNTHETIC_CATEGORIES)}")


def _check_count(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _check_strength(value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
        raise TypeError(f"defect_strength must be a number in (0, 1], got {type(value).__name__}")
    if not 0.0 < value <= 1.0:
        raise ValueError(f"defect_strength must be in (0, 1], got {value}")


def _image_seed(seed: int, category: str, part: str, kind: str, index: int) -> np.random.Generator:
    entropy = [seed, zlib.crc32(category.encode()), _PART_CODES[part], zlib.crc32(kind.encode()), index]
    return np.random.default_rng(np.random.SeedSequence(entropy))


def _generate(root: Path, params: dict[str, object]) -> None:
    """Write every category of the data set under ``root`` (which exists and is empty)."""
    size = int(params["image_size"])  # type: ignore[call-overload]
    seed = int(params["seed"])  # type: ignore[call-overload]
    strength = float(params["defect_strength"])  # type: ignore[arg-type]
    counts = {
        "train": int(params["num_train"]),  # type: ignore[call-overload]
        "test_good": int(params["num_test_good"]),  # type: ignore[call-overload]
        "test_defect": int(params["num_defects_per_kind"]),  # type: ignore[call-overload]
    }
    digits = max(3, len(str(max(counts.values()) - 1)))
    for category in params["categories"]:  # type: ignore[attr-defined]
        base = root / category
        jobs: list[tuple[str, str | None, Path, Path | None]] = []
        for part, folder in (("train", base / TRAIN_DIR / GOOD), ("test_good", base / TEST_DIR / GOOD)):
            jobs += [(part, None, folder / f"{i:0{digits}d}.png", None) for i in range(counts[part])]
        for kind in SYNTHETIC_CATEGORIES[category]:
            for i in range(counts["test_defect"]):
                name = f"{i:0{digits}d}"
                jobs.append(
                    (
                        "test_defect",
                        kind,
                        base / TEST_DIR / kind / f"{name}.png",
                        base / GROUND_TRUTH_DIR / kind / f"{name}{MASK_SUFFIX}.png",
                    )
                )
        for part, kind, image_path, mask_path in jobs:
            index = int(image_path.stem)
            rng = _image_seed(seed, category, part, kind or GOOD, index)
            image, mask = render_sample(category, size, rng, kind, strength)
            image_path.parent.mkdir(parents=True, exist_ok=True)
            write_png(image_path, image)
            if mask_path is not None:
                mask_path.parent.mkdir(parents=True, exist_ok=True)
                write_png(mask_path, mask.astype(np.uint8) * np.uint8(_MAX_PIXEL))
        if counts["test_good"] == 0:
            (base / TEST_DIR / GOOD).mkdir(parents=True, exist_ok=True)
    (root / PARAMS_FILE).write_text(json.dumps(params, indent=1, sort_keys=True) + "\n")


def make_synthetic_dataset(
    root: PathLike | None = None,
    *,
    categories: Sequence[str] = tuple(SYNTHETIC_CATEGORIES),
    image_size: int = 128,
    num_train: int = 60,
    num_test_good: int = 20,
    num_defects_per_kind: int = 8,
    defect_strength: float = DEFAULT_DEFECT_STRENGTH,
    seed: int = 0,
) -> Path:
    """Generate (or reuse from the cache) a synthetic data set in the MVTec AD layout.

    The data set lands in ``<cache>/synthetic-v<GENERATOR_VERSION>-<hash of the parameters>``. It is
    written into a temporary folder beside it and renamed into place when complete, so concurrent
    callers and interrupted runs never see a partial data set. An existing folder is reused as is.

    Args:
        root: cache folder; ``None`` means :func:`default_cache_dir` (``$TORCH_ARCAD_CACHE`` or
            ``~/.cache/torch_arcad``).
        categories: names from :data:`SYNTHETIC_CATEGORIES` (default: all three).
        image_size: side ``S`` of the square images, at least :data:`MIN_IMAGE_SIZE` (default 128).
        num_train: normal images in ``train/good`` per category (>= 1).
        num_test_good: normal images in ``test/good`` per category (>= 0).
        num_defects_per_kind: images in each ``test/<defect>`` folder (>= 1), each with its mask.
        defect_strength: in (0, 1]: how strongly the defects are drawn (see :func:`render_sample`); lower is
            harder to detect.
        seed: non-negative int; the same parameters and seed give byte-identical files.

    Returns:
        The data set root, to pass to :func:`~torch_arcad.datasets.mvtec.list_categories`,
        :func:`~torch_arcad.coldstart.make_split`, ...

    Raises:
        ValueError / TypeError: an unknown or repeated category, or a count / size / seed out of range.
    """
    names = [categories] if isinstance(categories, str) else list(categories)
    if not names:
        raise ValueError("categories must name at least one category, got an empty sequence")
    for name in names:
        _check_category(name)
    if len(set(names)) != len(names):
        raise ValueError(f"categories must not repeat, got {names}")
    _check_count("image_size", image_size, MIN_IMAGE_SIZE)
    _check_count("num_train", num_train, 1)
    _check_count("num_test_good", num_test_good, 0)
    _check_count("num_defects_per_kind", num_defects_per_kind, 1)
    _check_count("seed", seed, 0)
    _check_strength(defect_strength)
    params: dict[str, object] = {
        "generator_version": GENERATOR_VERSION,
        "categories": names,
        "image_size": int(image_size),
        "num_train": int(num_train),
        "num_test_good": int(num_test_good),
        "num_defects_per_kind": int(num_defects_per_kind),
        "defect_strength": float(defect_strength),
        "seed": int(seed),
    }
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    cache = default_cache_dir() if root is None else Path(root).expanduser()
    target = cache / f"synthetic-v{GENERATOR_VERSION}-{digest}"
    if target.is_dir():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=cache))
    try:
        _generate(scratch, params)
        os.chmod(scratch, _DATASET_DIR_MODE)  # mkdtemp makes the folder private
        try:
            os.rename(scratch, target)
        except OSError:
            if not target.is_dir():
                raise
            shutil.rmtree(scratch, ignore_errors=True)  # another process finished first
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return target
