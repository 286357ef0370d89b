"""Reading checkpoint files and loading them into backbones with readable errors.

Checkpoints are read with ``torch.load(..., weights_only=True, map_location="cpu")``, so only
tensors and plain containers are unpickled. Common training-script wrappers are removed:
``{"state_dict": ...}``, ``{"model": ...}``, ``{"teacher": ...}`` and the ``module.`` prefix that
``DistributedDataParallel`` adds to every key (and ``_orig_mod.`` from ``torch.compile``).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple, Union

import torch
from torch import Tensor, nn

__all__ = [
    "CheckpointDownloadError",
    "CheckpointError",
    "CheckpointReport",
    "load_checkpoint",
    "load_state_dict",
    "unwrap_state_dict",
]

#: Keys under which training scripts commonly nest the model's state dict, tried in this order.
CONTAINER_KEYS: tuple[str, ...] = ("state_dict", "model", "teacher")
#: Key prefixes added by ``DistributedDataParallel`` / ``DataParallel`` and ``torch.compile``.
WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")
#: URL schemes that are downloaded through ``torch.hub`` instead of read from disk.
URL_SCHEMES: tuple[str, ...] = ("http://", "https://")
#: How many keys of each kind an error message lists before summarising the rest.
MAX_LISTED_KEYS: int = 8

Source = Union[str, os.PathLike, Mapping]


class CheckpointError(ValueError):
    """A checkpoint does not fit the model (missing, unexpected or mis-shaped tensors)."""


class CheckpointDownloadError(OSError):
    """A checkpoint URL could not be downloaded (typically: the machine is offline)."""


class CheckpointReport(NamedTuple):
    """What :func:`load_checkpoint` found when comparing a checkpoint with a model.

    Attributes:
        missing: model keys absent from the checkpoint.
        unexpected: checkpoint keys the model does not have.
        mismatched: ``(key, expected_shape, found_shape)`` for tensors present in both with
            different shapes.
    """

    missing: list[str]
    unexpected: list[str]
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]]

    @property
    def ok(self) -> bool:
        """``True`` when every model tensor was found with the right shape and none is left."""
        return not (self.missing or self.unexpected or self.mismatched)


def _is_url(source: object) -> bool:
    return isinstance(source, str) and source.startswith(URL_SCHEMES)


def _strip_prefix(state_dict: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    if state_dict and all(key.startswith(prefix) for key in state_dict):
        return {key[len(prefix):]: value for key, value in state_dict.items()}
    return state_dict


def unwrap_state_dict(obj: object) -> dict[str, Tensor]:
    """Return the flat ``{name: tensor}`` state dict inside a loaded checkpoint object.

    Nested containers (``"state_dict"``, ``"model"``, ``"teacher"`` keys, in that order) are
    entered as long as one holds a mapping, then a ``module.`` / ``_orig_mod.`` prefix shared by
    every key is removed.

    Args:
        obj: what ``torch.load`` returned (a mapping).

    Returns:
        A new dict from parameter/buffer names to tensors (dtypes and devices unchanged).

    Raises:
        CheckpointError: ``obj`` is not a mapping, or after unwrapping some value is not a tensor.
    """
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"expected a checkpoint holding a dict of tensors, received {type(obj).__name__}"
        )
    current: Mapping = obj
    unwrapped = True
    while unwrapped:
        unwrapped = False
        for key in CONTAINER_KEYS:
            inner = current.get(key)
            if isinstance(inner, Mapping):
                current = inner
                unwrapped = True
                break
    state_dict = {str(key): value for key, value in current.items()}
    for prefix in WRAPPER_PREFIXES:
        state_dict = _strip_prefix(state_dict, prefix)
    not_tensors = [key for key, value in state_dict.items() if not isinstance(value, Tensor)]
    if not_tensors:
        shown = ", ".join(
            f"{key!r} ({type(state_dict[key]).__name__})" for key in not_tensors[:MAX_LISTED_KEYS]
        )
        raise CheckpointError(
            f"expected every entry of the state dict to be a tensor; {len(not_tensors)} are not: "
            f"{shown}. Known containers are the keys {list(CONTAINER_KEYS)}."
        )
    return state_dict


def load_state_dict(source: Source, *, progress: bool = False) -> dict[str, Tensor]:
    """Read a checkpoint from a local path or an http(s) URL and return its flat state dict.

    Args:
        source: a local file path, an ``http://`` / ``https://`` URL (downloaded once into the
            ``torch.hub`` cache, ``$TORCH_HOME/hub/checkpoints``), or an already loaded mapping.
        progress: show a download progress bar for URLs.

    Returns:
        ``{name: tensor}`` on the CPU, unwrapped as described in :func:`unwrap_state_dict`.

    Raises:
        FileNotFoundError: a local path that does not exist.
        CheckpointDownloadError: a URL that cannot be fetched (the message explains how to work
            offline).
        CheckpointError: the file holds something other than tensors in plain containers.
    """
    if isinstance(source, Mapping):
        return unwrap_state_dict(source)
    if _is_url(source):
        url = str(source)
        try:
            obj = torch.hub.load_state_dict_from_url(
                url, map_location="cpu", progress=progress, weights_only=True
            )
        except OSError as error:  # urllib.error.URLError, ConnectionError and timeouts
            cache = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
            raise CheckpointDownloadError(
                f"could not download the checkpoint {url} ({error}). If this machine is offline, "
                f"download the file on a connected machine and pass its local path instead "
                f"(e.g. `--weights PATH`), or copy it to {cache}."
            ) from error
        return unwrap_state_dict(obj)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            "expected a file path, an http(s) URL or a state dict, "
            f"received {type(source).__name__}"
        )
    path = Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path} holds objects other than tensors and plain containers, which are not loaded "
            f"for safety (torch.load weights_only=True): {error}"
        ) from error
    return unwrap_state_dict(obj)


def _format_keys(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_LISTED_KEYS])
    hidden = len(keys) - MAX_LISTED_KEYS
    return shown + (f", ... and {hidden} more" if hidden > 0 else "")


def _compare(
    model_state: Mapping[str, Tensor], checkpoint: Mapping[str, Tensor]
) -> CheckpointReport:
    missing = [key for key in model_state if key not in checkpoint]
    unexpected = [key for key in checkpoint if key not in model_state]
    mismatched = [
        (key, tuple(model_state[key].shape), tuple(checkpoint[key].shape))
        for key in model_state
        if key in checkpoint and model_state[key].shape != checkpoint[key].shape
    ]
    return CheckpointReport(missing, unexpected, mismatched)


def _describe(report: CheckpointReport, source_name: str, model_name: str) -> str:
    lines = [f"the checkpoint {source_name} does not fit {model_name}:"]
    if report.missing:
        lines.append(f"  {len(report.missing)} missing key(s): {_format_keys(report.missing)}")
    if report.unexpected:
        lines.append(
            f"  {len(report.unexpected)} unexpected key(s): {_format_keys(report.unexpected)}"
        )
    if report.mismatched:
        shown = "; ".join(
            f"{key}: expected {list(expected)}, found {list(found)}"
            for key, expected, found in report.mismatched[:MAX_LISTED_KEYS]
        )
        hidden = len(report.mismatched) - MAX_LISTED_KEYS
        more = f"; ... and {hidden} more" if hidden > 0 else ""
        lines.append(f"  {len(report.mismatched)} shape mismatch(es): {shown}{more}")
    return "\n".join(lines)


def load_checkpoint(model: nn.Module, source: Source, *, strict: bool = True) -> CheckpointReport:
    """Load a checkpoint into ``model`` in place, checking every key and shape first.

    Args:
        model: the module to fill; its parameters and buffers keep their device and dtype.
        source: a local path, an http(s) URL or a state dict (see :func:`load_state_dict`).
        strict: if ``True``, any missing key, unexpected key or shape mismatch raises
            :class:`CheckpointError` and nothing is loaded. If ``False``, the tensors that match by
            name and shape are loaded and the rest is reported.

    Returns:
        A :class:`CheckpointReport` listing what did not match (all empty after a strict load).

    Raises:
        CheckpointError: (strict) the checkpoint and the model disagree; the message lists the
            first few missing, unexpected and mis-shaped keys with expected and found shapes.
        FileNotFoundError, CheckpointDownloadError: see :func:`load_state_dict`.
    """
    checkpoint = load_state_dict(source)
    model_state = model.state_dict()
    report = _compare(model_state, checkpoint)
    if strict and not report.ok:
        source_name = "(state dict)" if isinstance(source, Mapping) else str(source)
        raise CheckpointError(_describe(report, source_name, type(model).__name__))
    mismatched_keys = {key for key, _, _ in report.mismatched}
    usable = {
        key: value
        for key, value in checkpoint.items()
        if key in model_state and key not in mismatched_keys
    }
    model.load_state_dict(usable, strict=False)
    return report
