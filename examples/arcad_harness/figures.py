"""PNG figures of a run (Matplotlib, Agg backend): anomaly-map overlays, loss curves, prototype usage."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["plot_loss_curves", "plot_overlays", "plot_prototype_usage"]

#: Inches per panel, and the aspect of the wide panels (loss curves, usage bars).
PANEL_SIZE: float = 2.4
WIDE_PANEL: tuple[float, float] = (1.4, 1.2)
#: Histogram bins of the prototype usage: one per four prototypes, within these bounds.
PROTOTYPES_PER_BIN: int = 4
MIN_BINS: int = 5
MAX_BINS: int = 30
DPI: int = 100
#: Opacity of the anomaly map over the image.
OVERLAY_ALPHA: float = 0.5
#: Loss terms drawn, in this order, when present.
LOSS_TERMS: tuple[str, ...] = ("loss", "loss_recon", "loss_spm", "loss_dgc", "loss_cls")
#: Width of the moving average drawn over each curve (in steps).
SMOOTHING: int = 10


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            'the figures need Matplotlib: pip install "torch-arcad[examples]" (or pass --no-figures)'
        ) from error
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_overlays(examples: Sequence[dict[str, Any]], kinds: Sequence[str], path: Path, title: str) -> Path:
    """A row per test image: the image with its ground-truth contour, then each score kind's map over it.

    Each kind's maps are scaled to [0, 1] for display by the range of that kind over the rows shown, so normal
    and defective images of one column are comparable.

    Args:
        examples: dicts with ``image`` uint8 (3, H, W), ``mask`` bool (H, W), ``label`` and ``maps`` kind -> (H, W).
        kinds: score kinds, one column each.
        path: PNG file to write.
        title: figure title.
    """
    plt = _pyplot()
    rows, cols = len(examples), 1 + len(kinds)
    fig, axes = plt.subplots(rows, cols, figsize=(PANEL_SIZE * cols, PANEL_SIZE * rows), squeeze=False)
    ranges = {}
    for kind in kinds:
        values = np.stack([example["maps"][kind].numpy() for example in examples])
        ranges[kind] = (float(values.min()), max(float(values.max() - values.min()), float(np.finfo(np.float32).eps)))
    for row, example in zip(axes, examples):
        image = example["image"].permute(1, 2, 0).numpy()
        mask = example["mask"].numpy().astype(float)
        for column, ax in enumerate(row):
            ax.imshow(image)
            if column > 0:
                kind = kinds[column - 1]
                low, span = ranges[kind]
                ax.imshow((example["maps"][kind].numpy() - low) / span, cmap="jet", alpha=OVERLAY_ALPHA,
                          vmin=0.0, vmax=1.0)
                ax.set_title(kinds[column - 1], fontsize=9)
            else:
                ax.set_title("defective" if example["label"] else "normal", fontsize=9)
            if mask.any():
                ax.contour(mask, levels=[0.5], colors="white", linewidths=1.0)
            ax.set_axis_off()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _smooth(values: np.ndarray) -> np.ndarray:
    width = min(SMOOTHING, len(values))
    if width <= 1:
        return values
    kernel = np.ones(width) / width
    padded = np.concatenate([np.full(width - 1, values[0]), values])
    return np.convolve(padded, kernel, mode="valid")


def plot_loss_curves(history: Sequence[dict[str, Any]], path: Path, title: str) -> Path:
    """One panel per loss term over the training steps (raw and a 10-step moving average)."""
    plt = _pyplot()
    terms = [t for t in LOSS_TERMS if any(t in record for record in history)]
    width, height = WIDE_PANEL
    fig, axes = plt.subplots(
        1, len(terms), figsize=(PANEL_SIZE * width * len(terms), PANEL_SIZE * height), squeeze=False
    )
    for ax, term in zip(axes[0], terms):
        points = [(r["step"], r[term]) for r in history if term in r]
        steps = np.array([p[0] for p in points])
        values = np.array([p[1] for p in points], dtype=float)
        ax.plot(steps, values, color="0.75", linewidth=0.8)
        ax.plot(steps, _smooth(values), color="C0", linewidth=1.5)
        ax.set_title(term, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_prototype_usage(usage: Sequence[int], path: Path, title: str) -> Path:
    """How many normal patches each prototype received over training: bars sorted by count, and their histogram."""
    plt = _pyplot()
    counts = np.sort(np.asarray(usage, dtype=float))[::-1]
    width, height = WIDE_PANEL
    fig, (left, right) = plt.subplots(1, 2, figsize=(PANEL_SIZE * 2 * width, PANEL_SIZE * height))
    left.bar(np.arange(len(counts)), counts, width=1.0, color="C0")
    left.set_xlabel("prototype (sorted by count)", fontsize=8)
    left.set_ylabel("normal patches assigned", fontsize=8)
    right.hist(counts, bins=min(MAX_BINS, max(MIN_BINS, len(counts) // PROTOTYPES_PER_BIN)), color="C1")
    right.set_xlabel("patches per prototype", fontsize=8)
    right.set_ylabel("prototypes", fontsize=8)
    used = int((counts > 0).sum())
    fig.suptitle(f"{title}: {used}/{len(counts)} prototypes used", fontsize=10)
    for ax in (left, right):
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
