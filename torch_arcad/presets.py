"""Named configurations: the paper's method and the authors' released code.

The released code departs from the paper at several points (see docs/presets.md). ``"paper"`` follows the text;
``"official"`` reproduces each departure, so results of either can be reproduced by name. Numerically fragile
choices of the released code that change no result when they do not fail (the exp-domain Sinkhorn without shift,
zero prototypes when the k-means file is missing) are fixed in both.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

__all__ = ["ArcADPreset", "PRESETS", "get_preset"]


@dataclass(frozen=True)
class ArcADPreset:
    """Every setting a preset decides.

    Attributes:
        temperature: tau of eq. 4.
        epsilon: Sinkhorn regularisation.
        sinkhorn_iterations: Sinkhorn rounds.
        momentum: prototype EMA momentum.
        sigma: synthesis noise (eq. 5).
        num_candidates: N_cand (eq. 6).
        clamp_push: relu on eq. 8's push term.
        cls_anomalies: which real patches are positives of eq. 9: ``"masked"`` (mask-selected patches) or
            ``"image"`` (every patch of a defective image).
        cls_weighting: ``"union"`` (one mean over all features) or ``"balanced"``
            (0.5 (FL_normal + FL_synthetic) + FL_real).
        discriminator_norm: ``"none"`` or ``"batch"`` (BatchNorm1d between the two layers).
        alpha: focal weight of the positives.
        gamma: focal exponent.
    """

    temperature: float = 0.1
    epsilon: float = 0.05
    sinkhorn_iterations: int = 3
    momentum: float = 0.99
    sigma: float = 0.015
    num_candidates: int = 5
    clamp_push: bool = False
    cls_anomalies: str = "masked"
    cls_weighting: str = "union"
    discriminator_norm: str = "none"
    alpha: float = 0.75
    gamma: float = 2.0


PRESETS: dict[str, ArcADPreset] = {
    "paper": ArcADPreset(),
    "official": ArcADPreset(
        num_candidates=50,
        clamp_push=True,
        cls_anomalies="image",
        cls_weighting="balanced",
        discriminator_norm="batch",
    ),
}


def get_preset(name: str, **overrides: object) -> ArcADPreset:
    """The preset ``name`` with the non-``None`` ``overrides`` applied.

    Raises:
        ValueError: for an unknown preset or an unknown setting.
    """
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {tuple(PRESETS)}, got {name!r}")
    known = {f.name for f in fields(ArcADPreset)}
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"unknown preset settings {sorted(unknown)}; known: {sorted(known)}")
    return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})
