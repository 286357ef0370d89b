"""Fixtures of the cold-start benchmark's tests: a quick benchmark (synthetic data, two steps) per test module."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks.coldstart import cli

#: The detectors of the quick benchmark.
QUICK_BASELINES: tuple[str, ...] = ("rd4ad", "dinomaly")
#: The quick benchmark's arguments (two seeds of the default arms).
QUICK_ARGS: tuple[str, ...] = ("--quick", "--seeds", "0", "1", "--baselines", *QUICK_BASELINES)


def _run_main(args: list[str]) -> int:
    """Run the benchmark's command line on one torch thread (tiny tensors: threads only add contention), then
    restore torch's threads."""
    threads = torch.get_num_threads()
    try:
        return cli.main([*args, "--threads", "1"])
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A quick benchmark's output folder, made once per test module (its tests run in file order and may add to
    it; a copy would not do: the runs and splits name their folder)."""
    pytest.importorskip("PIL")
    out = tmp_path_factory.mktemp("coldstart_quick")
    assert _run_main([*QUICK_ARGS, "--output", str(out)]) == 0
    return out


@pytest.fixture
def run_bench():
    """The benchmark's command line on one torch thread: ``run_bench(args) -> exit status``."""
    return _run_main


@pytest.fixture
def quick_args() -> list[str]:
    """The quick benchmark's arguments (without ``--output``)."""
    return list(QUICK_ARGS)
