"""The shared harness of the torch-arcad examples: data, training loop, evaluation, reports, figures and CLI.

The baselines themselves (model, loss, anomaly map and the training step with its three ArcAD lines) live in
``examples/dinomaly.py``, ``examples/rd4ad.py`` and ``examples/recontrast.py``; the harness loads them by name.

Programmatic use::

    import sys
    sys.path.insert(0, "<repo>/examples")
    from arcad_harness import ExperimentConfig, run_experiment

    result = run_experiment(ExperimentConfig(baseline="rd4ad", data_root="/data/mvtec", categories=["bottle"]))
    result["categories"]["bottle"]["recon"]["i_auroc"]
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import torch_arcad  # noqa: F401
except ImportError:  # a source checkout without installing: the package is two folders up
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from .cli import TINY, main, tiny_config
from .config import BASELINES, SCORE_KINDS, ExperimentConfig, default_num_prototypes, resolve_config
from .detector import Detector, Reconstruction, Setup, StepOutput, arcad_kwargs, load_example
from .experiment import run_comparison, run_experiment

__all__ = [
    "BASELINES",
    "Detector",
    "ExperimentConfig",
    "Reconstruction",
    "SCORE_KINDS",
    "Setup",
    "StepOutput",
    "TINY",
    "arcad_kwargs",
    "default_num_prototypes",
    "load_example",
    "main",
    "resolve_config",
    "run_comparison",
    "run_experiment",
    "tiny_config",
]
