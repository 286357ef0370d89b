"""Every setting of :class:`~torch_arcad.ArcAD` in one frozen, validated dataclass, and the named presets.

``"paper"`` follows the text of the paper; ``"official"`` reproduces each point where the authors' released code
departs from it (docs/presets.md), so results of either can be reproduced by name. Numerically fragile choices of
the released code that change no result when they do not fail (the exp-domain Sinkhorn without shift, zero
prototypes when the k-means file is missing) are fixed in both.

Overrides go by name: ``get_preset("official", num_candidates=5)`` or ``ArcAD(dim, K, preset="official",
num_candidates=5)``. Each setting is checked once, here, when a configuration is made.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, fields, replace

__all__ = ["ArcADConfig", "PRESETS", "get_preset"]

#: Which real anomalies eq. 8 and eq. 9 calibrate (see :attr:`ArcADConfig.calibrate`).
CALIBRATE: tuple[str, ...] = ("all", "missed")
#: How a real anomaly patch is weighted in L_dgc and L_cls (see :attr:`ArcADConfig.mask_weighting`).
MASK_WEIGHTINGS: tuple[str, ...] = ("binary", "fraction")


@dataclass(frozen=True)
class ArcADConfig:
    """Every setting of ArcAD, validated when the configuration is made.

    Eq. 10:
        lambda_spm, lambda_dgc, lambda_cls: lambda_1..3 (``>= 0``).

    Prototypes (section 3.2, eq. 2-4):
        temperature: tau of eq. 4 (``> 0``).
        epsilon: Sinkhorn regularisation (``> 0``).
        sinkhorn_iterations: Sinkhorn rounds (``>= 0``).
        momentum: prototype EMA momentum, in ``[0, 1]``.
        few_patch_assignment: the plan Q when a batch has no more normal patches than prototypes: ``"sinkhorn"``
            (always eq. 3) or ``"softmax"`` (``softmax(S / epsilon)``, the released code).
        init_factor: the prototypes initialise from the first ``init_factor * K`` normal patches (``>= 1``).
        seed: seed of the prototype initialisation.

    Synthesis (section 3.3, eq. 5-6):
        sigma: noise standard deviation of eq. 5 (``>= 0``).
        num_candidates: N_cand of eq. 6 (``>= 1``).

    Real anomalies (eq. 7) and their weights:
        mask_level: a floating mask pixel is a defect pixel when it exceeds this share of its own mask's peak, in
            ``[0, 1)``: 0.5 binarises a soft mask at half its peak, 0.0 lets every non-zero pixel count (the released
            code's ``adaptive_max_pool2d(mask) > 0`` on bilinearly resized masks). Taken relative to the peak, a
            thin defect that a smoothing resize has faded (a 1-pixel scratch resized from 256 to 64 px peaks near
            0.16) is never lost. Integer and boolean masks count at non-zero either way.
        mask_threshold: defect fraction above which a patch is a real anomaly, in ``[0, 1)`` (0.0: any defect
            pixel, the paper).
        mask_weighting: ``"binary"`` (the paper and the released code: every real anomaly has weight 1 in eq. 8
            and in eq. 9's real group) or ``"fraction"`` (its terms times its defect fraction, the means still
            over the anomalous patches: a patch a thin defect only grazes is pushed with that share of eq. 8's
            force; an option of this library).

    Defect-guided calibration (eq. 8):
        clamp_push: ``relu`` on eq. 8's push term (the released code).
        ema_before_synthesis: run the prototype EMA before eqs. 5-8, so the synthesis and eq. 8's push see the
            updated prototypes (the released code); L_spm uses the pre-update prototypes either way.
        pool_without_normals: eq. 8's pseudo-anomalies when the batch has no normal image: ``"none"`` (the pull
            term is then the constant 1) or ``"prototypes"`` (synthesised from the prototypes, the released code).

    Discriminator (section 3.4, eq. 9):
        hidden_dim: its width (``None``: D / 1.5, the released code's).
        discriminator_norm: ``"none"`` or ``"batch"`` (BatchNorm1d between the two layers).
        discriminator_batches: ``"joint"`` (normal, synthetic and real features in one batch) or ``"grouped"``
            (each group normalised with its own BatchNorm statistics, as the released code's three calls do).
        discriminator_init: ``"default"`` (PyTorch's) or ``"trunc_normal"`` (the released code's).
        cls_anomalies: eq. 9's real positives: ``"masked"`` (mask-selected patches) or ``"image"`` (every patch
            of a defective image, the released code).
        cls_weighting: ``"union"`` (one mean over all features) or ``"balanced"`` (0.5 (FL_normal +
            FL_synthetic) + FL_real, the released code).
        alpha: focal weight of the positives, in ``[0, 1]``.
        gamma: focal exponent (``>= 0``).
    """

    lambda_spm: float = 0.1
    lambda_dgc: float = 0.1
    lambda_cls: float = 0.1
    temperature: float = 0.1
    epsilon: float = 0.05
    sinkhorn_iterations: int = 3
    momentum: float = 0.99
    few_patch_assignment: str = "sinkhorn"
    init_factor: float = 4.0
    seed: int = 0
    sigma: float = 0.015
    num_candidates: int = 5
    mask_level: float = 0.5
    mask_threshold: float = 0.0
    mask_weighting: str = "binary"
    calibrate: str = "all"
    clamp_push: bool = False
    ema_before_synthesis: bool = False
    pool_without_normals: str = "none"
    hidden_dim: int | None = None
    discriminator_norm: str = "none"
    discriminator_batches: str = "joint"
    discriminator_init: str = "default"
    cls_anomalies: str = "masked"
    cls_weighting: str = "union"
    alpha: float = 0.75
    gamma: float = 2.0

    def __post_init__(self) -> None:
        for name in ("lambda_spm", "lambda_dgc", "lambda_cls", "sigma", "gamma"):
            _number(name, getattr(self, name), low=0.0)
        for name in ("temperature", "epsilon"):
            _number(name, getattr(self, name), low=0.0, strict=True)
        _number("momentum", self.momentum, low=0.0, high=1.0)
        _number("alpha", self.alpha, low=0.0, high=1.0)
        _number("init_factor", self.init_factor, low=1.0)
        for name in ("mask_level", "mask_threshold"):
            _number(name, getattr(self, name), low=0.0, high=1.0, open_high=True)
        _integer("sinkhorn_iterations", self.sinkhorn_iterations, 0)
        _integer("num_candidates", self.num_candidates, 1)
        _integer("seed", self.seed, None)
        if self.hidden_dim is not None:
            _integer("hidden_dim", self.hidden_dim, 1)
        for name in ("clamp_push", "ema_before_synthesis"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        _choice("few_patch_assignment", self.few_patch_assignment, ("sinkhorn", "softmax"))
        _choice("mask_weighting", self.mask_weighting, MASK_WEIGHTINGS)
        _choice("calibrate", self.calibrate, CALIBRATE)
        _choice("pool_without_normals", self.pool_without_normals, ("none", "prototypes"))
        _choice("discriminator_norm", self.discriminator_norm, ("none", "batch"))
        _choice("discriminator_batches", self.discriminator_batches, ("joint", "grouped"))
        _choice("discriminator_init", self.discriminator_init, ("default", "trunc_normal"))
        _choice("cls_anomalies", self.cls_anomalies, ("masked", "image"))
        _choice("cls_weighting", self.cls_weighting, ("union", "balanced"))

    def to_dict(self) -> dict[str, object]:
        """The settings by name (for logs and run records)."""
        return asdict(self)

    def changes(self, base: ArcADConfig | None = None) -> dict[str, object]:
        """The settings that differ from ``base`` (default: the paper preset), by name."""
        base = PRESETS["paper"] if base is None else base
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != getattr(base, f.name)}


def _number(
    name: str, value: object, *, low: float, high: float | None = None, strict: bool = False, open_high: bool = False
) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    too_low = value <= low if strict else value < low
    too_high = high is not None and (value >= high if open_high else value > high)
    if not math.isfinite(value) or too_low or too_high:
        if high is None:
            raise ValueError(f"{name} must be {'>' if strict else '>='} {low:g} and finite, got {value!r}")
        left, right = "(" if strict else "[", ")" if open_high else "]"
        raise ValueError(f"{name} must be in {left}{low:g}, {high:g}{right}, got {value!r}")


def _integer(name: str, value: object, minimum: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


PRESETS: dict[str, ArcADConfig] = {
    "paper": ArcADConfig(),
    "official": ArcADConfig(
        num_candidates=50,
        clamp_push=True,
        cls_anomalies="image",
        cls_weighting="balanced",
        discriminator_norm="batch",
        mask_level=0.0,
        few_patch_assignment="softmax",
        ema_before_synthesis=True,
        pool_without_normals="prototypes",
        discriminator_batches="grouped",
        discriminator_init="trunc_normal",
    ),
}


def get_preset(name: str | ArcADConfig = "paper", **overrides: object) -> ArcADConfig:
    """The preset ``name`` (or a given :class:`ArcADConfig`) with the non-``None`` ``overrides`` applied.

    Raises:
        ValueError: for an unknown preset, an unknown setting or a value out of range (``TypeError`` for a value
            of the wrong type).
    """
    if isinstance(name, ArcADConfig):
        base = name
    elif isinstance(name, str) and name in PRESETS:
        base = PRESETS[name]
    else:
        raise ValueError(f"preset must be one of {tuple(PRESETS)} or an ArcADConfig, got {name!r}")
    known = {f.name for f in fields(ArcADConfig)}
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"unknown preset settings {sorted(unknown)}; known: {sorted(known)}")
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})
