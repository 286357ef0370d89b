"""Tests of ``torch_arcad.integrations`` against the real frameworks (anomalib 2.7.0), run in their own environment.

They need the framework installed (``pip install anomalib==2.7.0 -e ".[anomalib,test]"`` on torch 2.14.1 /
torchvision 0.29.1, see README.md); without it (the core environment) this folder is not collected. The second
environment runs them explicitly (``python -m pytest -q tests/integrations``), so they cannot be skipped silently
there: without anomalib nothing is collected and pytest exits with an error (no tests ran).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

if importlib.util.find_spec("anomalib") is None:
    collect_ignore_glob = ["test_*.py"]


def write_mvtec_category(root: Path, category: str = "widget", size: int = 64, seed: int = 0) -> Path:
    """A tiny data set in the MVTec AD layout: 20 ``train/good``, 6 ``test/good`` and 2 x 5 defects with masks.

    Normal images are a noisy grey texture; a defect is a bright (``scratch``) or dark (``hole``) square whose
    mask is the square. Returns ``root``.
    """
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)

    def texture() -> np.ndarray:
        return np.clip(128 + 20 * rng.standard_normal((size, size, 3)), 0, 255).astype(np.uint8)

    base = root / category
    for folder, count in (("train/good", 20), ("test/good", 6)):
        (base / folder).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray(texture()).save(base / folder / f"{i:03d}.png")
    for kind, value in (("scratch", 255), ("hole", 0)):
        (base / "test" / kind).mkdir(parents=True, exist_ok=True)
        (base / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
        for i in range(5):
            image = texture()
            mask = np.zeros((size, size), np.uint8)
            y, x = rng.integers(4, size - 20, size=2)
            image[y : y + 16, x : x + 16] = value
            mask[y : y + 16, x : x + 16] = 255
            Image.fromarray(image).save(base / "test" / kind / f"{i:03d}.png")
            Image.fromarray(mask).save(base / "ground_truth" / kind / f"{i:03d}_mask.png")
    return root


@pytest.fixture(scope="session")
def mvtec_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of a generated MVTec-layout data set with the category ``widget``."""
    return write_mvtec_category(tmp_path_factory.mktemp("mvtec"))
