"""The arms of the cold-start benchmark: one entry each, in the order of the tables.

An arm is what differs between two runs on the same split: whether ArcAD is attached, which of its three terms
keep their lambda, ArcAD options and harness settings. Adding an arm is one entry of :data:`ARMS`.

Arms whose ArcAD options left the library stay listed as *record-only* arms (``removed`` says why): their stored
runs still load and render in the tables, and the benchmark refuses to train them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

__all__ = [
    "ARMS",
    "ARM_NAMES",
    "Arm",
    "DEFAULT_ARMS",
    "get_arm",
    "trainable_arms",
]


def _frozen(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclasses.dataclass(frozen=True)
class Arm:
    """One arm of the benchmark.

    Attributes:
        name: the folder name of its runs (``runs/<category>/<detector>/<name>/seed<s>.json``) and its CLI name.
        label: its name in the tables.
        terms: which of ArcAD's lambdas (L_spm, L_dgc, L_cls) it keeps, the others set to 0; ``None``: all.
        arcad_options: keyword options of ``torch_arcad.ArcAD`` (the harness's ``arcad_options``).
        harness_options: fields of the harness's ``ExperimentConfig``.
        removed: for a record-only arm, why it cannot be trained any more (its options left the library);
            ``None`` for an arm the benchmark trains.
        arcad: whether ArcAD is attached (``False`` for the plain detector only).
    """

    name: str
    label: str
    terms: tuple[bool, bool, bool] | None = None
    arcad_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    harness_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    removed: str | None = None
    arcad: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "arcad_options", _frozen(self.arcad_options))
        object.__setattr__(self, "harness_options", _frozen(self.harness_options))
        if self.terms is not None and len(self.terms) != 3:
            raise ValueError(f"arm {self.name!r}: terms must name three lambdas (SPM, DGC, CLS), got {self.terms}")
        if not self.arcad and (self.terms is not None or self.arcad_options):
            raise ValueError(f"arm {self.name!r}: an arm without ArcAD has no terms or ArcAD options")

    @property
    def trainable(self) -> bool:
        """Whether the benchmark can still train this arm."""
        return self.removed is None

    def lambdas(self, base: Sequence[float]) -> tuple[float, ...]:
        """The lambdas (SPM, DGC, CLS) of this arm given the benchmark's ``base`` lambdas."""
        if self.terms is None:
            return tuple(float(v) for v in base)
        return tuple(float(v) if kept else 0.0 for v, kept in zip(base, self.terms))


_OPTION_REMOVED = "ArcAD's {} option was removed from the library; the arm's stored runs remain readable"

#: Every arm, in the order of the tables. ``baseline``: the plain detector; ``arcad``: with ArcAD (the settings'
#: lambdas); the paper's Table 4 ablation keeps lambda_1..3 for the terms it names and sets the others to 0; the
#: other arms are ArcAD with one named option or harness setting. Three withheld defects (``fusion_holdout``) keep
#: one image of each of tire's four defect kinds in training (its splits hold 7 defective images: 1 + 2 + 2 + 2).
ARMS: tuple[Arm, ...] = (
    Arm("baseline", "baseline", arcad=False),
    Arm("arcad", "+ArcAD"),
    Arm("spm", "+L_spm", terms=(True, False, False)),
    Arm("spm_dgc", "+L_spm +L_dgc", terms=(True, True, False)),
    Arm("cls", "+L_cls", terms=(False, False, True)),
    Arm("sigma_dim", "+ArcAD, sigma for D=768", arcad_options={"sigma_reference_dim": 768},
        removed=_OPTION_REMOVED.format("`sigma_reference_dim`")),
    Arm("focal_balanced", "+ArcAD, balanced focal", arcad_options={"alpha": 0.5, "cls_weighting": "classes"},
        removed=_OPTION_REMOVED.format('`cls_weighting="classes"`')),
    Arm("sigma_dim_balanced", "+ArcAD, sigma for D=768 + balanced focal",
        arcad_options={"sigma_reference_dim": 768, "alpha": 0.5, "cls_weighting": "classes"},
        removed=_OPTION_REMOVED.format("`sigma_reference_dim`")),
    Arm("cls_detached", "+ArcAD, L_cls detached", arcad_options={"detach_cls": True},
        removed=_OPTION_REMOVED.format("`detach_cls`")),
    Arm("mask_quarter", "+ArcAD, anomalous patch >= 25% defect", arcad_options={"mask_threshold": 0.25}),
    Arm("mask_fraction", "+ArcAD, each patch's term times its defect fraction",
        arcad_options={"mask_weighting": "fraction"}),
    Arm("missed", "+ArcAD, only the defects the detector misses", arcad_options={"calibrate": "missed"}),
    Arm("missed_no_spm", "+ArcAD, only the defects the detector misses, without L_spm", terms=(False, True, True),
        arcad_options={"calibrate": "missed"}),
    Arm("mask_fraction_mean", "+ArcAD, patches' defect fractions as weights of the means",
        arcad_options={"mask_weighting": "fraction_mean"},
        removed=_OPTION_REMOVED.format('`mask_weighting="fraction_mean"`')),
    Arm("noise_range", "+ArcAD, pseudo-anomalies at noise scales sigma..8 sigma", arcad_options={"sigma_max": 0.12},
        removed=_OPTION_REMOVED.format("`sigma_max`")),
    Arm("push_margin", "+ArcAD, push stops at cosine 0.8", arcad_options={"push_margin": 0.8},
        removed=_OPTION_REMOVED.format("`push_margin`")),
    Arm("fusion_holdout", "+ArcAD, fused weights fitted on 3 withheld defects", harness_options={"fusion_holdout": 3}),
    Arm("disc_distance", "+ArcAD, discriminator reads the prototype distance",
        arcad_options={"discriminator_distance": True}, removed=_OPTION_REMOVED.format("`discriminator_distance`")),
)

#: The arms' names, in the order of :data:`ARMS`.
ARM_NAMES: tuple[str, ...] = tuple(arm.name for arm in ARMS)
#: The arms run by default: the plain detector and the detector with ArcAD.
DEFAULT_ARMS: tuple[str, ...] = ("baseline", "arcad")

_BY_NAME: dict[str, Arm] = {arm.name: arm for arm in ARMS}
if len(_BY_NAME) != len(ARMS):  # pragma: no cover - a mistake in the list above
    raise RuntimeError("two arms share a name")


def get_arm(name: str) -> Arm:
    """The arm called ``name``; ``ValueError`` naming the known arms otherwise."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown arm {name!r}; known arms: {', '.join(ARM_NAMES)}") from None


def trainable_arms() -> tuple[str, ...]:
    """The names of the arms the benchmark can train (not record-only)."""
    return tuple(arm.name for arm in ARMS if arm.trainable)
