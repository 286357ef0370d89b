"""Helpers shared by the test modules (imported as ``helpers``: ``tests/`` is on pytest's ``pythonpath``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

#: The repository's root (the folder holding README.md, examples/ and benchmarks/).
REPO_ROOT = Path(__file__).resolve().parents[1]


def unit(*shape: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random unit rows of ``shape`` (last dimension normalised)."""
    x = torch.randn(*shape, generator=generator)
    return x / x.norm(dim=-1, keepdim=True)


#: Environment variable naming the folder of the real data set (MVTec AD layout: magnetic_tile, tire).
REAL_DATA_ENV = "TORCH_ARCAD_DATA"
#: Where the real data set is looked for when the variable is not set: beside the repository.
REAL_DATA_BESIDE_REPO = REPO_ROOT.parent / "shared" / "data"


def find_real_data(*categories: str) -> Path:
    """The real data set's root holding ``categories``, for the tests that need it.

    ``$TORCH_ARCAD_DATA`` when set (the test fails if it lacks a category: the variable asked for these tests to
    run), otherwise ``../shared/data`` beside the repository; without either the test is skipped, naming where it
    looked.
    """
    configured = os.environ.get(REAL_DATA_ENV)
    if configured:
        root = Path(configured).expanduser()
        missing = [c for c in categories if not (root / c).is_dir()]
        if missing:
            pytest.fail(f"{REAL_DATA_ENV}={configured} does not hold the categories {missing} (folders {root}/<name>)")
        return root
    if all((REAL_DATA_BESIDE_REPO / c).is_dir() for c in categories):
        return REAL_DATA_BESIDE_REPO
    pytest.skip(
        f"needs the real data set with categories {', '.join(categories)}: {REAL_DATA_ENV} is not set and "
        f"{REAL_DATA_BESIDE_REPO} does not hold them (set {REAL_DATA_ENV} to the data set's folder)"
    )
