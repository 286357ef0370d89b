import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hypothesis import settings

from helpers import find_real_data

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


@pytest.fixture
def real_data() -> Callable[..., Path]:
    """``real_data(*categories)``: see :func:`find_real_data`."""
    return find_real_data
