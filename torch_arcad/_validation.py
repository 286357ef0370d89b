"""Shape, type and value checks shared by the public functions (clear ``ValueError`` / ``TypeError`` messages),
and one-time warnings about device-side counts that never wait for the device."""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable

import torch
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


def check_int(name: str, value: object, minimum: int) -> None:
    """Raise ``TypeError`` unless ``value`` is an int (not a bool), ``ValueError`` unless it is ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def check_number(name: str, value: object, minimum: float = 0.0) -> None:
    """Raise ``TypeError`` unless ``value`` is a real number (not a bool), ``ValueError`` unless it is finite and
    ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number >= {minimum:g}, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value) or value < minimum:
        raise ValueError(f"{name} must be >= {minimum:g} and finite, got {value}")


def check_floating(name: str, x: Tensor) -> None:
    """Raise ``TypeError`` unless ``x`` is a floating-point tensor."""
    if not x.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor (float32, float16 or bfloat16), got {x.dtype}; "
            "convert with .float()"
        )


class DeferredWarnings:
    """One-time warnings about counts that live on the device, raised without waiting for the device.

    ``update(counts)`` adds this step's counts (an int64 (C,) tensor) to a running total on the device. On the
    CPU the total is read at once. On an accelerator a copy of the total to the host is started without blocking,
    with an event recorded behind it; a later ``update`` (typically the next step) reads the copy only once its
    event has completed, so the training loop never waits for the device. Message ``i`` is issued, once, the
    first time total ``i`` is seen non-zero; after all have been issued ``update`` does nothing.

    Args:
        messages: one function per count, from the total to the warning's text.
        stacklevel: the frame the warnings point at, counted from the caller of ``update`` (1).
    """

    def __init__(self, messages: tuple[Callable[[int], str], ...], stacklevel: int = 1) -> None:
        self.messages = messages
        self.stacklevel = stacklevel
        self.issued = [False] * len(messages)
        self._total: Tensor | None = None
        self._copy: tuple[Tensor, torch.Event] | None = None

    def update(self, counts: Tensor) -> None:
        """Add ``counts`` ((C,) integer tensor, any device) and issue the warnings whose totals are visible."""
        if all(self.issued):
            return
        counts = counts.detach()
        self._total = counts.clone() if self._total is None else self._total + counts.to(self._total.device)
        if self._readable_now(self._total):
            self._issue(self._total)
            return
        if self._copy is not None:
            host, event = self._copy
            if not event.query():
                return  # the previous copy is still in flight; the running total keeps this step's counts
            self._issue(host)
        host = torch.empty(self._total.shape, dtype=self._total.dtype, pin_memory=self._total.is_cuda)
        host.copy_(self._total, non_blocking=True)
        event = torch.Event(device=self._total.device)
        event.record()
        self._copy = (host, event)

    @staticmethod
    def _readable_now(totals: Tensor) -> bool:
        """Whether reading ``totals`` costs no wait: host memory is written synchronously."""
        return totals.device.type == "cpu"

    def _issue(self, totals: Tensor) -> None:
        for i, total in enumerate(totals.tolist()):
            if total > 0 and not self.issued[i]:
                self.issued[i] = True
                warnings.warn(self.messages[i](int(total)), stacklevel=self.stacklevel + 2)
