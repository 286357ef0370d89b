import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hypothesis import settings

from helpers import find_real_data

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
