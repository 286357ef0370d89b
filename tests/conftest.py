import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hypothesis import settings

# The examples' harness is imported as ``arcad_harness`` from examples/ (its encoder backbones are tested here too).
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))

# CI runs the property tests on a fixed example sequence so that a run is reproducible; locally they explore anew.
settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def unit(*shape: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random unit rows (last dimension normalised)."""
    x = torch.randn(*shape, generator=generator)
    return x / x.norm(dim=-1, keepdim=True)


#: Environment variable naming the folder of the real data set (MVTec AD layout: magnetic_tile, tire).
REAL_DATA_ENV = "TORCH_ARCAD_DATA"
#: Where the real data set is looked for when the variable is not set: beside the repository.
REAL_DATA_BESIDE_REPO = Path(__file__).resolve().parents[2] / "shared" / "data"


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


@pytest.fixture
def real_data() -> Callable[..., Path]:
    """``real_data(*categories)``: see :func:`find_real_data`."""
    return find_real_data
