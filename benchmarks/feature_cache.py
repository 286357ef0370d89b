"""Training-step time of the example detectors with and without the frozen-encoder feature cache.

Usage::

    python benchmarks/feature_cache.py [--baselines rd4ad dinomaly recontrast] [--image-size 256] [--steps 10] \\
        [--batch-size 16] [--no-arcad] [--threads 1] [--snapshots] [--out results.json]

Each baseline's training step (its ``train_step``, with ArcAD unless ``--no-arcad``) runs on a batch of random
images of a 64-image training set (8 of them defective with a square mask), once with the encoder at every step and
once with its features from :mod:`arcad_harness.cache` (computed before timing, as a run does in its first pass).
The mean over ``--steps`` timed steps after one warm-up step is reported, with the load average of the machine.
``--snapshots`` also writes each model's training state after one cached step, as ``--resume-dir`` does every
``--resume-every`` steps (:mod:`arcad_harness.snapshots`), and reports its size and the seconds the write took.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN_IMAGES: int = 64
DEFECTIVE: int = 8
DEFECT_SIDE: int = 32


def _harness():  # noqa: ANN202
    import arcad_harness

    return arcad_harness


def _build(baseline: str, image_size: int, batch_size: int, arcad: bool) -> tuple[Any, Any]:
    """The example module and its ``build`` (model, optimiser, ArcAD) at these sizes, seeded."""
    harness = _harness()
    cfg = harness.resolve_config(
        harness.ExperimentConfig(baseline=baseline, image_size=image_size, batch_size=batch_size, arcad=arcad),
        synthetic=False,
    )
    example = harness.get_detector(baseline)
    torch.manual_seed(0)
    return example, example.build(cfg)


def time_steps(baseline: str, image_size: int, batch_size: int, steps: int, arcad: bool, cached: bool) -> float:
    """Mean seconds per training step (after one warm-up step)."""
    from arcad_harness.cache import FeatureStore
    from arcad_harness.data import ImageSet, RandomBatches
    from arcad_harness.detector import with_features

    example, (model, optimizer, module) = _build(baseline, image_size, batch_size, arcad)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (TRAIN_IMAGES, 3, image_size, image_size), dtype=torch.uint8, generator=generator)
    masks = torch.zeros(TRAIN_IMAGES, image_size, image_size, dtype=torch.bool)
    masks[:DEFECTIVE, :DEFECT_SIDE, :DEFECT_SIDE] = True
    labels = (torch.arange(TRAIN_IMAGES) < DEFECTIVE).long()
    paths = [f"image{i}.png" for i in range(TRAIN_IMAGES)]
    train_set = ImageSet(images, masks, labels, ["synthetic"] * TRAIN_IMAGES, paths)
    store = FeatureStore() if cached else None
    if module is not None:
        module.prototypes.init_prototypes(
            torch.nn.functional.normalize(torch.randn(module.prototypes.num_prototypes, model.bottleneck_dim), dim=1)
        )
    if store is not None:  # the first pass of a run fills the cache
        for chunk in torch.arange(TRAIN_IMAGES).split(batch_size):
            with_features(train_set.batch(chunk, "cpu"), model, store, image_size)
    model.train()
    batches = RandomBatches(TRAIN_IMAGES, batch_size, 0)
    for step in range(steps + 1):
        if step == 1:
            start = time.perf_counter()
        batch = with_features(train_set.batch(next(batches), "cpu"), model, store, image_size)
        example.train_step(model, module, optimizer, batch, 0.5)
    return (time.perf_counter() - start) / steps


def snapshot_cost(baseline: str, image_size: int, batch_size: int, arcad: bool) -> dict[str, float]:
    """Bytes and seconds of writing one model's training snapshot after one training step (Adam's state exists).

    Returns:
        ``{"bytes", "seconds", "parameter_bytes", "moment_bytes"}``: the file size, the time of
        :func:`arcad_harness.snapshots.save_snapshot`, the bytes of the model's (and ArcAD's) parameters and buffers,
        and of Adam's two moments of the trainable parameters.
    """
    from arcad_harness.snapshots import save_snapshot

    _, setup = _build(baseline, image_size, batch_size, arcad)
    model, optimizer, module = setup
    trainable = [p for p in model.parameters() if p.requires_grad]
    if module is not None:
        trainable += list(module.parameters())
    for parameter in trainable:  # one optimiser step creates Adam's moments, as after a real step
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    tensors = list(model.state_dict().values()) + (list(module.state_dict().values()) if module is not None else [])
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "snapshot.pt"
        start = time.perf_counter()
        save_snapshot(path, step=1, setup=setup, fingerprint={}, diagnostics={"history": []}, usage_total=None,
                      train_time_s=0.0, device=torch.device("cpu"))
        seconds = time.perf_counter() - start
        size = path.stat().st_size
    return {"bytes": float(size), "seconds": seconds,
            "parameter_bytes": float(sum(t.numel() * t.element_size() for t in tensors)),
            "moment_bytes": float(2 * sum(p.numel() * p.element_size() for p in trainable))}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baselines", nargs="+", default=["rd4ad", "dinomaly", "recontrast"])
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--no-arcad", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--snapshots", action="store_true", help="also measure writing a training snapshot")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rows = []
    for baseline in args.baselines:
        load = os.getloadavg()[0]
        plain = time_steps(baseline, args.image_size, args.batch_size, args.steps, not args.no_arcad, cached=False)
        cached = time_steps(baseline, args.image_size, args.batch_size, args.steps, not args.no_arcad, cached=True)
        rows.append({"baseline": baseline, "uncached_s": plain, "cached_s": cached, "speedup": plain / cached,
                     "load_average": [load, os.getloadavg()[0]]})
        print(f"{baseline}: {plain:.3f} s/step uncached, {cached:.3f} s/step cached ({plain / cached:.2f}x); "
              f"load average {load:.1f} -> {os.getloadavg()[0]:.1f}", flush=True)
        if args.snapshots:
            cost = snapshot_cost(baseline, args.image_size, args.batch_size, not args.no_arcad)
            rows[-1]["snapshot"] = cost
            print(f"{baseline}: training snapshot {cost['bytes'] / 1e6:.1f} MB written in {cost['seconds']:.2f} s "
                  f"({cost['seconds'] / cached:.1%} of a cached step)", flush=True)
    if args.out is not None:
        info = {"machine": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                "torch": torch.__version__, "threads": torch.get_num_threads(), "image_size": args.image_size,
                "batch_size": args.batch_size, "arcad": not args.no_arcad, "steps": args.steps, "rows": rows}
        args.out.write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
