"""The registry of detectors: a name (``ExperimentConfig.baseline``, ``--baseline``) -> :class:`DetectorSpec`.

The three built-in detectors (:mod:`~arcad_harness.detectors.dinomaly`, :mod:`~arcad_harness.detectors.rd4ad`,
:mod:`~arcad_harness.detectors.recontrast`) register themselves when :mod:`arcad_harness.detectors` is imported.
A detector of your own is one call::

    from arcad_harness import register_detector

    register_detector("mine", build=build, train_step=train_step, model=MyDetector, description="...")

where ``build(cfg) -> Setup`` builds the model, its optimiser and (with ``cfg.arcad``) ArcAD in its own parameter
group, and ``train_step(model, arcad, optimizer, batch, progress) -> StepOutput`` is one optimiser step
(:mod:`arcad_harness.detector` describes both). This module imports nothing of the harness, so that any module
may look a detector up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

__all__ = ["DETECTORS", "DetectorSpec", "get_detector", "register_detector"]


@dataclass
class DetectorSpec:
    """How the harness builds and trains one detector.

    Attributes:
        name: the registry name (``ExperimentConfig.baseline``).
        build: ``build(cfg: ExperimentConfig) -> Setup``: the model, its optimiser and, with ``cfg.arcad``, the
            ArcAD module in its own parameter group.
        train_step: ``train_step(model, arcad, optimizer, batch, progress) -> StepOutput``: one optimiser step on
            a :class:`~arcad_harness.data.Batch` (images (B, 3, H, W), masks (B, H, W), labels (B,)); ``progress``
            in [0, 1).
        model: the :class:`~arcad_harness.detector.Detector` subclass ``build`` returns.
        description: one line naming the detector and what it is modelled on.
    """

    name: str
    build: Callable[..., object]
    train_step: Callable[..., object]
    model: type[nn.Module]
    description: str = ""


#: Every registered detector by name, in registration order.
DETECTORS: dict[str, DetectorSpec] = {}


def register_detector(
    name: str,
    *,
    build: Callable[..., object],
    train_step: Callable[..., object],
    model: type[nn.Module],
    description: str = "",
    replace: bool = False,
) -> DetectorSpec:
    """Register a detector under ``name`` and return its :class:`DetectorSpec`.

    Raises:
        ValueError: ``name`` is empty or already registered (pass ``replace=True`` to replace it).
        TypeError: ``build`` or ``train_step`` is not callable.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"a detector's name must be a non-empty string, got {name!r}")
    if name in DETECTORS and not replace:
        raise ValueError(f"a detector named {name!r} is already registered (replace=True replaces it)")
    for label, function in (("build", build), ("train_step", train_step)):
        if not callable(function):
            raise TypeError(f"{label} of the detector {name!r} must be callable, got {type(function).__name__}")
    spec = DetectorSpec(name, build, train_step, model, description)
    DETECTORS[name] = spec
    return spec


def get_detector(name: str) -> DetectorSpec:
    """The :class:`DetectorSpec` registered under ``name``.

    Raises:
        ValueError: no detector of that name, naming the registered ones.
    """
    try:
        return DETECTORS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown detector {name!r}: registered are {', '.join(DETECTORS) or 'none'}") from None
