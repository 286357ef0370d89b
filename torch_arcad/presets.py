"""Named configurations: the paper's method and the authors' released code.

The released code departs from the paper at several points (see docs/presets.md). ``"paper"`` follows the text;
``"official"`` reproduces each departure, so results of either can be reproduced by name. Numerically fragile
choices of the released code that change no result when they do not fail (the exp-domain Sinkhorn without shift,
zero prototypes when the k-means file is missing) are fixed in both.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from ._validation import check_choice

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
        mask_level: a floating mask pixel above this value is a defect pixel: 0.5 binarises a soft mask, 0.0 lets
            every non-zero pixel count (the released code's ``adaptive_max_pool2d(mask) > 0`` on bilinearly resized
            masks, whose soft fringes then mark patches). Integer and boolean masks count at non-zero either way.
        few_patch_assignment: the plan Q when a batch has no more normal patches than prototypes: ``"sinkhorn"``
            (always eq. 3) or ``"softmax"`` (``softmax(S / epsilon)``, the released code).
        ema_before_synthesis: run the prototype EMA before eqs. 5-8, so the synthesis and eq. 8's push term see
            the updated prototypes (the released code); L_spm uses the pre-update prototypes either way.
        pool_without_normals: eq. 8's pseudo-anomalies when the batch has no normal image: ``"none"`` (the pull
            term is then the constant 1) or ``"prototypes"`` (synthesised from the prototypes themselves, the
            released code).
        discriminator_batches: ``"joint"`` (normal, synthetic and real features through the discriminator in one
            batch) or ``"grouped"`` (each group normalised with its own BatchNorm statistics, as the released
            code's three calls do). Only matters with ``discriminator_norm="batch"`` in training mode.
        discriminator_init: ``"default"`` (PyTorch's) or ``"trunc_normal"`` (linear weights from a normal of std
            0.01 truncated to +-0.03, biases 0, the released code).
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
    mask_level: float = 0.5
    few_patch_assignment: str = "sinkhorn"
    ema_before_synthesis: bool = False
    pool_without_normals: str = "none"
    discriminator_batches: str = "joint"
    discriminator_init: str = "default"

    def __post_init__(self) -> None:
        if not 0.0 <= self.mask_level < 1.0:
            raise ValueError(f"mask_level must be in [0, 1), got {self.mask_level}")
        check_choice("few_patch_assignment", self.few_patch_assignment, ("sinkhorn", "softmax"))
        check_choice("pool_without_normals", self.pool_without_normals, ("none", "prototypes"))
        check_choice("discriminator_batches", self.discriminator_batches, ("joint", "grouped"))
        check_choice("discriminator_init", self.discriminator_init, ("default", "trunc_normal"))


PRESETS: dict[str, ArcADPreset] = {
    "paper": ArcADPreset(),
    "official": ArcADPreset(
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


def get_preset(name: str | ArcADPreset, **overrides: object) -> ArcADPreset:
    """The preset ``name`` (or a given :class:`ArcADPreset`) with the non-``None`` ``overrides`` applied.

    Raises:
        ValueError: for an unknown preset or an unknown setting.
    """
    if isinstance(name, ArcADPreset):
        base = name
    elif name in PRESETS:
        base = PRESETS[name]
    else:
        raise ValueError(f"preset must be one of {tuple(PRESETS)} or an ArcADPreset, got {name!r}")
    known = {f.name for f in fields(ArcADPreset)}
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"unknown preset settings {sorted(unknown)}; known: {sorted(known)}")
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})
