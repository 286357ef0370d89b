"""Shape and value checks shared by the public functions (clear ``ValueError`` messages)."""

from __future__ import annotations

from torch import Tensor


def check_rank(name: str, x: Tensor, rank: int, layout: str) -> None:
    """Raise ``ValueError`` unless ``x.dim() == rank``; ``layout`` names the expected shape, e.g. ``"(N, D)"``."""
    if not hasattr(x, "dim"):
        raise TypeError(f"{name} must be a torch.Tensor of shape {layout}, got {type(x).__name__}")
    if x.dim() != rank:
        raise ValueError(f"{name} must have shape {layout}, got a {x.dim()}-d tensor of shape {tuple(x.shape)}")


def check_dim(name: str, x: Tensor, dim: int, expected: int, layout: str) -> None:
    """Raise ``ValueError`` unless ``x.shape[dim] == expected``."""
    if x.shape[dim] != expected:
        raise ValueError(
            f"{name} must have shape {layout} with size {expected} at dimension {dim}, got shape {tuple(x.shape)}"
        )


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    """Raise ``ValueError`` unless ``value > 0`` (or ``>= 0`` with ``allow_zero``)."""
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value}")


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
