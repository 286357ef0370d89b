"""The training loop shared by the detectors: batches, the detector's ``train_step``, progress and diagnostics."""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from .config import ExperimentConfig
from .data import ImageSet, RandomBatches
from .cache import get_store
from .detector import Setup, StepOutput, init_prototypes_from_features, with_features
from .snapshots import load_snapshot, restore_snapshot, save_snapshot, snapshot_path, training_fingerprint

if TYPE_CHECKING:
    from .detectors.registry import DetectorSpec

__all__ = ["TrainedModel", "format_duration", "train_model"]

SECONDS_PER_MINUTE: int = 60
#: Floor of a measured duration (a division guard; far below any step's time).
MIN_SECONDS: float = 1e-9
#: Indices of ``stats["discriminator_accuracy"]``: normal, synthetic and real anomalous patches.
ACCURACY_KEYS: tuple[str, str, str] = ("disc_acc_normal", "disc_acc_synthetic", "disc_acc_real")


@dataclass
class TrainedModel:
    """A trained detector and what was recorded while training it.

    Attributes:
        name: the category (single setting) or ``"multi"``.
        categories: the categories it was trained on.
        setup: model, optimiser and ArcAD (``None`` without).
        train_time_s: wall time of the optimisation and of the offline prototype initialisation (model
            construction and data loading excluded).
        diagnostics: ``{"history": [per-step dict], "prototype_usage": [K counts], ...}`` (see :func:`train_model`).
    """

    name: str
    categories: list[str]
    setup: Setup
    train_time_s: float
    diagnostics: dict[str, Any] = field(default_factory=dict)


def format_duration(seconds: float) -> str:
    """``"2m41s"`` / ``"12s"``."""
    seconds = max(0.0, seconds)
    minutes, rest = divmod(int(round(seconds)), SECONDS_PER_MINUTE)
    return f"{minutes}m{rest:02d}s" if minutes else f"{rest}s"


def _step_record(step: int, out: StepOutput, patches_per_step: int) -> tuple[dict[str, Any], torch.Tensor | None]:
    record: dict[str, Any] = {"step": step, "loss": float(out.loss.detach()), "loss_recon": float(out.recon.detach())}
    usage = None
    calibration = out.calibration
    if calibration is not None:
        record.update(
            loss_arcad=float(calibration.loss.detach()),
            loss_spm=float(calibration.spm.detach()),
            loss_dgc=float(calibration.dgc.detach()),
            loss_cls=float(calibration.cls.detach()),
        )
        stats = calibration.stats
        initialized = bool(stats["initialized"])
        record["initialized"] = initialized
        if initialized:
            anomalous = float(stats["num_anomalous"])
            record["anomalous_fraction"] = anomalous / patches_per_step
            record["anomalous_patches"] = int(anomalous)
            record["calibrated_patches"] = int(stats["num_calibrated"])
            record["prototypes_in_use"] = int(stats["prototypes_in_use"])
            for key in ("normal_similarity", "anomalous_similarity"):
                value = float(stats[key])
                if math.isfinite(value):  # NaN: no patch of that kind in the step
                    record[key] = value
            accuracy = stats["discriminator_accuracy"].tolist()
            record[ACCURACY_KEYS[0]] = accuracy[0]
            record[ACCURACY_KEYS[1]] = accuracy[1]
            if anomalous > 0:  # the accuracy on real anomalies is undefined without any
                record[ACCURACY_KEYS[2]] = accuracy[2]
            usage = stats["prototype_usage"].detach().double().cpu()
    if out.gradients is not None:
        record.update(out.gradients)
    return record, usage


def _progress_line(prefix: str, record: dict[str, Any], steps: int, rate: float, elapsed: float) -> str:
    parts = [f"{prefix} step {record['step']:>{len(str(steps))}}/{steps}", f"loss {record['loss']:.4f}"]
    terms = f"recon {record['loss_recon']:.4f}"
    if "loss_spm" in record:
        terms += f" spm {record['loss_spm']:.3f} dgc {record['loss_dgc']:.3f} cls {record['loss_cls']:.3f}"
    parts.append(terms)
    if "anomalous_fraction" in record:
        accuracy = " ".join(
            f"{key.split('_')[-1][0]}{record[key]:.2f}" for key in ACCURACY_KEYS if key in record
        )
        parts.append(f"anom {100 * record['anomalous_fraction']:.1f}% disc {accuracy}")
    elif record.get("initialized") is False:
        parts.append("prototypes not initialised yet")
    left = (steps - record["step"]) / rate if rate > 0 else math.nan
    parts.append(f"{rate:.2f} step/s, {format_duration(elapsed)} elapsed, {format_duration(left)} left")
    return " | ".join(parts)


def train_model(
    detector: DetectorSpec,
    cfg: ExperimentConfig,
    train_set: ImageSet,
    name: str,
    categories: list[str],
    log: Callable[[str], None],
) -> TrainedModel:
    """Build a detector with its ``build`` and train it with its ``train_step``.

    Diagnostics recorded per step (``diagnostics["history"]``): ``loss``, ``loss_recon`` and, with ArcAD,
    ``loss_arcad`` (the weighted sum), ``loss_spm``, ``loss_dgc``, ``loss_cls``, ``initialized``,
    ``anomalous_fraction`` (anomalous patches / all patches of the step), ``disc_acc_normal``,
    ``disc_acc_synthetic`` and ``disc_acc_real`` (the discriminator's accuracy on each kind; the last only when
    the step had real anomalous patches), ``anomalous_patches`` (and ``calibrated_patches``, those eq. 8-9 took: fewer with ``calibrate="missed"``),
    ``prototypes_in_use``, ``normal_similarity`` and
    ``anomalous_similarity`` (ArcAD's stats: a falling normal similarity is normal texture drifting away from the
    prototypes). On the logged steps (``cfg.log_every``), when the detector's ``train_step`` takes ``diagnose``,
    also the size of each term's gradient on the bottleneck and its cosine with the reconstruction loss's
    (:func:`~arcad_harness.detector.term_gradients`: ``grad_recon``, ``grad_spm``, ``cos_spm``, ...); they change
    nothing in the training. ``diagnostics["prototype_usage"]`` sums
    ``stats["prototype_usage"]`` (normal patches nearest to each prototype) over all steps.

    With ``cfg.resume_dir`` the training state is written there every ``cfg.resume_every`` steps, and a snapshot
    of the same training configuration found there is continued (:mod:`arcad_harness.snapshots`);
    ``diagnostics["resumed_after_step"]`` then names its step, and the training time adds both processes' times.

    Args:
        detector: the registered detector (:func:`~arcad_harness.detectors.get_detector`: ``build``,
            ``train_step``).
        cfg: resolved configuration (``steps``, ``image_size`` set).
        train_set: the training images (normal only for a run without ArcAD).
        name: model name for the progress lines and the diagnostics.
        categories: the categories it is trained on.
        log: where progress lines go.
    """
    assert cfg.steps is not None and cfg.image_size is not None
    torch.manual_seed(cfg.seed)
    setup: Setup = detector.build(cfg)
    model, optimizer, arcad = setup
    device = torch.device(cfg.device)
    h, w = model.patch_grid(cfg.image_size)
    patches_per_step = model.branches * cfg.batch_size * h * w
    arm = "+arcad" if arcad is not None else ""
    prefix = f"[{cfg.baseline}{arm} {name}]"
    diagnostics: dict[str, Any] = {
        "model": name,
        "categories": list(categories),
        "train_images": len(train_set),
        "train_defective": int(train_set.labels.sum()),
        "patch_grid": [h, w],
        "patches_per_step": patches_per_step,
        "history": [],
    }
    log(
        f"{prefix} {len(train_set)} training images ({int(train_set.labels.sum())} defective), "
        f"{sum(p.numel() for p in model.parameters() if p.requires_grad):,} trainable parameters, z grid {h}x{w}"
    )
    start = time.perf_counter()  # the training time includes the prototype initialisation and feature caching
    store = get_store(cfg.feature_cache)
    snapshot_file = snapshot_path(cfg, name)
    fingerprint = training_fingerprint(cfg, len(train_set), int(train_set.labels.sum()))
    snapshot = load_snapshot(snapshot_file, fingerprint) if snapshot_file is not None else None
    if arcad is not None:
        k = arcad.prototypes.num_prototypes
        diagnostics.update(num_prototypes=k, prototype_init=cfg.prototype_init, initialized_step=None)
        if cfg.prototype_init == "offline":
            # Also when resuming: the first process cached the normal images' features in these chunks, and the
            # same chunks give the same values (see arcad_harness.snapshots); the prototypes then come from the
            # snapshot.
            normal = torch.nonzero(train_set.labels == 0).flatten()
            batches = [
                with_features(train_set.batch(i, device), model, store, cfg.image_size)
                for i in normal.split(cfg.batch_size)
            ]
            if snapshot is None:
                available = init_prototypes_from_features(model, arcad, batches, cfg.seed)
                if arcad.initialized:
                    diagnostics["initialized_step"] = 0
                    log(f"{prefix} K={k} prototypes initialised by k-means of {available:,} normal bottleneck "
                        "features")
                else:
                    log(f"{prefix} only {available} normal features for K={k}: the prototypes initialise online")
            del batches
        elif snapshot is None:
            size = arcad.prototypes.init_size
            log(f"{prefix} K={k} prototypes initialise online from the first {size} normal patches")

    usage_total = torch.zeros(arcad.prototypes.num_prototypes, dtype=torch.float64) if arcad is not None else None
    batches_iter = RandomBatches(len(train_set), cfg.batch_size, cfg.seed)
    first_step, time_before = 1, 0.0
    if snapshot is not None:
        first_step, time_before = snapshot["step"] + 1, snapshot["train_time_s"]
        for _ in range(snapshot["step"]):  # the batches already trained on: the batch order and the feature cache
            with_features(train_set.batch(next(batches_iter), device), model, store, cfg.image_size)
        restore_snapshot(snapshot, setup, device)  # last: it sets the random generators
        diagnostics = snapshot["diagnostics"]
        diagnostics["resumed_after_step"] = snapshot["step"]  # the wall time of this process covers the rest only
        usage_total = snapshot["usage_total"]
        log(f"{prefix} resumed from {snapshot_file} after step {snapshot['step']}/{cfg.steps}")
    model.train()
    if arcad is not None:
        arcad.train()
    window_start, window_steps = time.perf_counter(), 0
    diagnoses = "diagnose" in inspect.signature(detector.train_step).parameters
    for step in range(first_step, cfg.steps + 1):
        batch = with_features(train_set.batch(next(batches_iter), device), model, store, cfg.image_size)
        logged = bool(cfg.log_every) and (step % cfg.log_every == 0 or step == cfg.steps)
        extra = {"diagnose": True} if diagnoses and logged else {}
        out = detector.train_step(model, arcad, optimizer, batch, (step - 1) / cfg.steps, **extra)
        record, usage = _step_record(step, out, patches_per_step)
        if not all(math.isfinite(v) for k, v in record.items() if k.startswith("loss")):
            raise FloatingPointError(f"{prefix} step {step}: a loss is not finite: {record}")
        diagnostics["history"].append(record)
        if usage is not None and usage_total is not None:
            usage_total += usage
            if diagnostics.get("initialized_step") is None:
                diagnostics["initialized_step"] = step
        window_steps += 1
        if cfg.log_every and (step % cfg.log_every == 0 or step == cfg.steps):
            now = time.perf_counter()
            rate = window_steps / max(now - window_start, MIN_SECONDS)
            log(_progress_line(prefix, record, cfg.steps, rate, time_before + now - start))
            window_start, window_steps = now, 0
        if snapshot_file is not None and (step % cfg.resume_every == 0 or step == cfg.steps):
            if arcad is None or arcad.initialized:  # no snapshot while the online initialisation collects features
                save_snapshot(snapshot_file, step=step, setup=setup, fingerprint=fingerprint, diagnostics=diagnostics,
                              usage_total=usage_total, train_time_s=time_before + time.perf_counter() - start,
                              device=device)
    train_time = time_before + time.perf_counter() - start
    if usage_total is not None:
        diagnostics["prototype_usage"] = [int(round(v)) for v in usage_total.tolist()]
        used = int((usage_total > 0).sum())
        diagnostics["prototypes_used"] = used
        log(f"{prefix} {used}/{usage_total.numel()} prototypes received normal patches during training")
    diagnostics["train_time_s"] = train_time
    diagnostics["steps_per_s"] = cfg.steps / max(train_time, MIN_SECONDS)
    model.eval()
    if arcad is not None:
        arcad.eval()
    return TrainedModel(name=name, categories=list(categories), setup=setup, train_time_s=train_time,
                        diagnostics=diagnostics)
