"""Resumable training: the training state of one model, written every few steps and read back at the start.

A run of a few hours (ReContrast at 256 px on a CPU takes two) should survive a stopped process. With
``ExperimentConfig.resume_dir`` set, the training loop writes a snapshot of everything the next step depends on
every ``resume_every`` steps, and a run that finds a snapshot of the same training configuration continues from it:

* the model's, optimiser's and ArcAD's state dicts (ArcAD keeps all of its state in buffers);
* torch's global random generator (dropout, eq. 5's noise) and, on CUDA, the device's;
* the diagnostics recorded so far, the prototype usage counts and the training time spent.

The batch order is not stored: the batches of steps ``1..s`` are drawn again from the seed, and the frozen encoder's
features of their images are computed in the same order as in the first process, so the feature cache holds the same
values (batched convolutions round by batch composition). A run resumed from the snapshot of step ``s`` then takes
steps ``s + 1, ...`` exactly as the uninterrupted run does, to the digit (``tests/harness/test_snapshots.py``), when
that run also started with an empty in-memory cache or used ``feature_cache="off"`` / a disk cache.

Snapshots are written only once ArcAD's prototypes are initialised (the online initialisation's buffer of pending
features is not state), atomically, and removed once the experiment's results are computed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

import torch_arcad

from .config import ExperimentConfig
from .detector import Setup

__all__ = [
    "NON_TRAINING_FIELDS",
    "SNAPSHOT_VERSION",
    "load_snapshot",
    "remove_snapshot",
    "restore_snapshot",
    "save_snapshot",
    "snapshot_path",
    "training_fingerprint",
]

#: Version of the snapshot layout; another version is refused.
SNAPSHOT_VERSION: int = 1
#: Configuration fields that do not change training: a snapshot written under other values of these resumes.
NON_TRAINING_FIELDS: tuple[str, ...] = (
    "output_dir", "figures", "log_every", "eval_stride", "score", "verbose", "feature_cache", "resume_dir",
    "resume_every",
)


def snapshot_path(cfg: ExperimentConfig, name: str) -> Path | None:
    """The snapshot file of model ``name`` (a category, or ``"multi"``): ``<resume_dir>/<baseline>-<arm>-<name>.pt``;
    ``None`` without ``cfg.resume_dir``."""
    if cfg.resume_dir is None:
        return None
    arm = "arcad" if cfg.arcad else "baseline"
    return Path(cfg.resume_dir).expanduser() / f"{cfg.baseline}-{arm}-{name}.pt"


def training_fingerprint(cfg: ExperimentConfig, train_images: int, train_defective: int) -> dict[str, Any]:
    """What a snapshot must agree on to be resumed: the configuration without :data:`NON_TRAINING_FIELDS`, the
    training set's size (a changed data folder or split shows there) and the versions of torch and torch-arcad
    (either may change the numbers of a step)."""
    fields = {k: v for k, v in cfg.to_dict().items() if k not in NON_TRAINING_FIELDS}
    fields["train_images"] = int(train_images)
    fields["train_defective"] = int(train_defective)
    fields["torch"] = str(torch.__version__)  # a str subclass that weights_only loading refuses
    fields["torch_arcad"] = str(torch_arcad.__version__)
    return fields


def save_snapshot(
    path: Path,
    *,
    step: int,
    setup: Setup,
    fingerprint: dict[str, Any],
    diagnostics: dict[str, Any],
    usage_total: torch.Tensor | None,
    train_time_s: float,
    device: torch.device,
) -> None:
    """Write the training state after ``step`` to ``path`` atomically (a temporary file renamed into place)."""
    model, optimizer, arcad = setup
    state = {
        "version": SNAPSHOT_VERSION,
        "step": int(step),
        "fingerprint": fingerprint,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "arcad": arcad.state_dict() if arcad is not None else None,
        "cpu_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "diagnostics": diagnostics,
        "usage_total": usage_total,
        "train_time_s": float(train_time_s),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_snapshot(path: Path, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    """The snapshot at ``path``, checked against this run; ``None`` when there is none.

    Raises:
        ValueError: the snapshot belongs to another training configuration (the differing fields are named; the
            number of steps is one of them) or has another layout version.
    """
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("version") != SNAPSHOT_VERSION:
        found = state.get("version") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path} is not a training snapshot of version {SNAPSHOT_VERSION} (found {found!r}); "
                         "remove it to train from the start")
    stored = state["fingerprint"]
    differing = sorted(k for k in set(stored) | set(fingerprint) if stored.get(k) != fingerprint.get(k))
    if differing:
        details = ", ".join(f"{k}: snapshot {stored.get(k)!r}, now {fingerprint.get(k)!r}" for k in differing)
        raise ValueError(f"{path} was written by another training run ({details}); use another resume_dir or "
                         "remove the file")
    return state


def restore_snapshot(state: dict[str, Any], setup: Setup, device: torch.device) -> None:
    """Load a snapshot's model, optimiser, ArcAD and random generator states into ``setup`` (in place)."""
    model, optimizer, arcad = setup
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if arcad is not None:  # the fingerprint's "arcad" field makes the snapshot hold ArcAD's state exactly then
        arcad.load_state_dict(state["arcad"])
    torch.set_rng_state(state["cpu_rng"])
    if device.type == "cuda" and state["cuda_rng"] is not None:
        torch.cuda.set_rng_state(state["cuda_rng"], device)


def remove_snapshot(path: Path | None) -> None:
    """Delete a snapshot once it is no longer needed (missing files are fine)."""
    if path is not None:
        path.unlink(missing_ok=True)
