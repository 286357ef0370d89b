"""Fixtures of the harness tests: one torch thread, a private synthetic-data cache per module."""

from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny tensors run faster on one thread (no intra-op synchronisation), especially on a busy machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory):
    """A private synthetic-data cache for the module (also for the command line, through the environment)."""
    folder = tmp_path_factory.mktemp("synthetic_cache")
    previous = os.environ.get("TORCH_ARCAD_CACHE")
    os.environ["TORCH_ARCAD_CACHE"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("TORCH_ARCAD_CACHE", None)
    else:
        os.environ["TORCH_ARCAD_CACHE"] = previous
