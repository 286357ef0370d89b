"""The detectors of the examples and their registry.

Each module holds one reconstruction-based detector, modelled on a published one and built by default on the
offline EfficientNet-Lite0 encoder (see docs/examples.md for what differs from the official recipes):

* :mod:`~arcad_harness.detectors.dinomaly`: Dinomaly-style (frozen token encoder, noisy MLP bottleneck,
  linear-attention decoder, loose reconstruction);
* :mod:`~arcad_harness.detectors.rd4ad`: RD4AD-style (frozen CNN, OCBE bottleneck, reverse decoder);
* :mod:`~arcad_harness.detectors.recontrast`: ReContrast-style (RD4AD-style with a trainable encoder copy and
  contrastive reconstruction).

Each defines its :class:`~arcad_harness.detector.Detector` subclass, ``build(cfg) -> Setup`` and
``train_step(...) -> StepOutput`` (the three ArcAD lines are in ``build`` and ``train_step``), and registers them
under its name (:func:`get_detector`).
"""

from __future__ import annotations

from .registry import DETECTORS, DetectorSpec, get_detector, register_detector

# Importing the built-in detectors registers them (in this order: the order of BASELINES).
from . import dinomaly, rd4ad, recontrast  # noqa: E402  isort: skip

__all__ = ["DETECTORS", "DetectorSpec", "dinomaly", "get_detector", "rd4ad", "recontrast", "register_detector"]
