"""Anomaly detection metrics: I-AUROC, P-AUROC, P-F1-max and AUPRO, exact and memory-frugal.

All metrics are returned as fractions in [0, 1] (multiply by 100 for the percentages papers print).

Definitions (``P`` positives, ``N`` negatives):

- :func:`auroc`: the probability that a random positive scores above a random negative, ties
  counting one half, i.e. the Mann-Whitney statistic ``U / (P N)``. Equal to the area under the ROC
  curve drawn through every distinct threshold with straight segments.
- :func:`f1_max`: the largest ``F1 = 2 TP / (2 TP + FP + FN)`` over all thresholds ``t`` (a sample
  is predicted anomalous when its score is ``>= t``). The best threshold is always one of the
  positive scores, so only those are evaluated.
- :func:`aupro`: MVTec's per-region overlap. Each 8-connected component of a ground-truth mask is
  one region; at threshold ``t`` the PRO is the mean, over all regions of all images, of the
  fraction of the region's pixels scoring ``>= t``, and the FPR is the fraction of all normal pixels
  (mask 0, in every image) scoring ``>= t``. The PRO-FPR curve (straight segments between distinct
  thresholds, from (0, 0)) is integrated up to ``fpr_limit`` (0.3), with the last segment cut by
  linear interpolation, and divided by ``fpr_limit``.

Implementation: the negatives are sorted once (an in-place sort of one float32 copy) and every
positive is located in them with ``numpy.searchsorted``, giving for each positive the number of
negatives strictly below it and at or below it. All three curves follow from these counts exactly,
ties included (a tie group is a straight segment of the curve): the AUROC is the mean over
positives of ``(#below + #at-or-below) / 2N``; at a threshold equal to a positive score the false
positives are ``N - #below``; and for AUPRO, a positive of weight ``w`` (one over its region's size
times the number of regions) contributes ``w`` times the FPR span, up to the limit, over which it is
counted, with a linear ramp across its tie group. No threshold loop, and nothing of the size of
all pixels beyond the one copy of the negatives.

Inputs may be torch tensors or numpy arrays; float32 is kept (half precision is promoted to float32,
integers to float64). For 1,000 float32 maps of 256 x 256 (65 M pixels) the extra memory is one
copy of the normal pixels' scores (about 260 MB), a bool copy of the masks, and arrays the size of
the defect pixels; the run takes seconds. ``pixel_stride`` subsamples maps and masks further.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np
import torch

__all__ = ["aupro", "auroc", "evaluate", "f1_max", "label_regions"]

ArrayLike = Union[np.ndarray, torch.Tensor]

#: Default upper FPR limit of the AUPRO integral (the MVTec AD convention).
DEFAULT_FPR_LIMIT: float = 0.3
#: Relative slack when the FPR limit times the number of negatives is an integer up to rounding.
_COUNT_TOLERANCE: float = 1e-12
#: Row/column offsets of the neighbours that are scanned once each for 8-connectivity.
_NEIGHBOUR_OFFSETS: tuple[tuple[int, int], ...] = ((0, 1), (1, -1), (1, 0), (1, 1))


# ------------------------------------------------------------------------------------------ conversion


def _to_numpy(name: str, x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        return x.numpy()
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, (list, tuple)):
        return np.asarray(x)
    raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def _scores(name: str, x: ArrayLike) -> np.ndarray:
    array = _to_numpy(name, x)
    if array.dtype == np.float16:
        array = array.astype(np.float32)
    elif not np.issubdtype(array.dtype, np.floating):
        if not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
            raise TypeError(f"{name} must hold real numbers, got dtype {array.dtype}")
        array = array.astype(np.float64)
    if array.size and np.isnan(array).any():
        raise ValueError(f"{name} contains NaN; scores must be finite or +-inf")
    return array


def _labels(name: str, x: ArrayLike) -> np.ndarray:
    array = _to_numpy(name, x)
    if array.dtype == np.bool_:
        return array
    positive = array == 1
    if not (positive | (array == 0)).all():
        bad = array[~(positive | (array == 0))].ravel()[:3].tolist()
        raise ValueError(f"{name} must hold only 0 and 1 (or bool), got values such as {bad}")
    return positive


def _check_same_shape(a_name: str, a: np.ndarray, b_name: str, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{a_name} and {b_name} must have the same shape, got {a.shape} and {b.shape}")


def _split_classes(scores: np.ndarray, labels: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    flat_scores, flat_labels = scores.reshape(-1), labels.reshape(-1)
    positives, negatives = flat_scores[flat_labels], flat_scores[~flat_labels]
    if positives.size == 0 or negatives.size == 0:
        raise ValueError(
            f"{what} is undefined with one class only: got {positives.size} positive and {negatives.size} negative "
            "samples; both must be present"
        )
    return positives, negatives


# ------------------------------------------------------------------------------------------ core


@dataclass
class _Ranks:
    """Each positive located among the sorted negatives.

    ``positives``: the positive scores (input order); ``below`` / ``at_or_below``: int64 counts of
    negatives ``< p`` and ``<= p`` for each positive ``p``; ``n_negatives``: ``N``.
    """

    positives: np.ndarray
    below: np.ndarray
    at_or_below: np.ndarray
    n_negatives: int


def _rank(positives: np.ndarray, negatives: np.ndarray) -> _Ranks:
    """Sort ``negatives`` in place (callers pass a private copy) and locate every positive in it."""
    dtype = np.result_type(positives.dtype, negatives.dtype)
    negatives = negatives.astype(dtype, copy=False)
    negatives.sort()
    query = positives.astype(dtype, copy=False)
    return _Ranks(
        positives=query,
        below=np.searchsorted(negatives, query, side="left"),
        at_or_below=np.searchsorted(negatives, query, side="right"),
        n_negatives=int(negatives.size),
    )


def _auroc_from_ranks(ranks: _Ranks) -> float:
    # Pairs with positive > negative count 1, ties 1/2: sum over positives of (below + at_or_below) / 2.
    pairs = int(ranks.below.sum()) + int(ranks.at_or_below.sum())
    return pairs / (2.0 * ranks.positives.size * ranks.n_negatives)


def _f1_max_from_ranks(ranks: _Ranks) -> float:
    # The best threshold is a positive score t: TP = #positives >= t, FP = #negatives >= t = N - below.
    order = np.argsort(ranks.positives, kind="stable")
    sorted_pos = ranks.positives[order]
    n_pos = sorted_pos.size
    run_start = np.flatnonzero(np.r_[True, sorted_pos[1:] != sorted_pos[:-1]])  # first index of each tie run
    true_pos = n_pos - run_start
    false_pos = ranks.n_negatives - ranks.below[order][run_start]
    return float((2.0 * true_pos / (true_pos + false_pos + n_pos)).max())


def _pro_area_from_ranks(ranks: _Ranks, weights: np.ndarray, fpr_limit: float) -> float:
    """Area under the weighted-TPR (PRO) curve over FPR in [0, fpr_limit], divided by ``fpr_limit``.

    Positive ``p`` is counted from the moment the threshold reaches it. In units of negatives, the
    threshold passes the ``above = N - at_or_below`` negatives scoring higher first, then the
    ``ties`` negatives equal to ``p``, along which ``p`` ramps in linearly (the straight segment of
    the curve through the tie group). Its share of the area below ``L = fpr_limit * N`` is
    ``L - above - ties / 2`` when the ramp ends before ``L``, ``(L - above)^2 / (2 ties)`` when
    ``L`` cuts the ramp, and 0 when ``L <= above``.
    """
    n_neg = ranks.n_negatives
    limit = fpr_limit * n_neg
    if abs(limit - round(limit)) <= _COUNT_TOLERANCE * n_neg:
        limit = float(round(limit))  # 0.3 * 10 is 3, not 3.0000000000000004
    above = (n_neg - ranks.at_or_below).astype(np.float64)
    ties = (ranks.at_or_below - ranks.below).astype(np.float64)
    reach = np.clip(limit - above, 0.0, None)  # how far past "above" the limit lies
    ramp_done = reach >= ties
    partial = np.divide(reach**2, 2.0 * ties, out=np.zeros_like(reach), where=~ramp_done)
    span = np.where(ramp_done, reach - ties / 2.0, partial)
    return float(np.dot(weights, span) / limit)


def _rank_classes(scores: np.ndarray, labels: np.ndarray, what: str) -> _Ranks:
    positives, negatives = _split_classes(scores, labels, what)
    return _rank(positives, negatives)


def auroc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Area under the ROC curve, ties counted one half (the Mann-Whitney U statistic / (P N)).

    Args:
        scores: real scores of any shape (higher = more anomalous), float or int, torch or numpy.
        labels: same shape, 0/1 or bool (1 = anomalous).

    Returns:
        A float in [0, 1]: 1 when every positive outscores every negative, 0.5 when all are tied.

    Raises:
        ValueError: shapes differ, labels are not 0/1, scores contain NaN, or one class is absent.
    """
    s, y = _scores("scores", scores), _labels("labels", labels)
    _check_same_shape("scores", s, "labels", y)
    return _auroc_from_ranks(_rank_classes(s, y, "AUROC"))


def f1_max(scores: ArrayLike, labels: ArrayLike) -> float:
    """Largest F1 score over all thresholds (predict anomalous when ``score >= threshold``).

    Args:
        scores: real scores of any shape (higher = more anomalous).
        labels: same shape, 0/1 or bool.

    Returns:
        A float in (0, 1].

    Raises:
        ValueError: shapes differ, labels are not 0/1, scores contain NaN, or one class is absent.
    """
    s, y = _scores("scores", scores), _labels("labels", labels)
    _check_same_shape("scores", s, "labels", y)
    return _f1_max_from_ranks(_rank_classes(s, y, "F1-max"))


# ------------------------------------------------------------------------------------------ regions


def _components(stack: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """8-connected components of a bool stack ``(N, H, W)``.

    Returns:
        ``(foreground, region, count)``: the flat indices of the foreground pixels (int64, raster
        order), the 0-based region of each (int64, regions numbered in raster order of their first
        pixel), and the number of regions.
    """
    foreground = np.flatnonzero(stack)
    if foreground.size == 0:
        return foreground, np.zeros(0, dtype=np.int64), 0
    height, width = stack.shape[1], stack.shape[2]
    sources, targets = [], []
    for dy, dx in _NEIGHBOUR_OFFSETS:
        # Pixels (y, x) whose neighbour (y + dy, x + dx) lies in the same image and is foreground too.
        x_start, x_end = max(0, -dx), width - max(0, dx)
        both = stack[:, : height - dy, x_start:x_end] & stack[:, dy:, x_start + dx : x_end + dx]
        n, ys, xs = np.nonzero(both)
        source = (n * height + ys) * width + xs + x_start
        sources.append(source)
        targets.append(source + dy * width + dx)
    src = np.searchsorted(foreground, np.concatenate(sources))
    dst = np.searchsorted(foreground, np.concatenate(targets))
    # Hook and compress: every node points at a node of its component with a smaller index; each
    # round hooks the larger root of every edge whose ends have different roots onto the smaller
    # one, then jumps pointers until every node points at its root. The final roots are the
    # smallest index of each component.
    parent = np.arange(foreground.size, dtype=np.int64)
    while True:
        root_src, root_dst = parent[src], parent[dst]
        differ = root_src != root_dst
        if not differ.any():
            break
        low = np.minimum(root_src[differ], root_dst[differ])
        high = np.maximum(root_src[differ], root_dst[differ])
        np.minimum.at(parent, high, low)
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
    roots, region = np.unique(parent, return_inverse=True)
    return foreground, region.reshape(-1).astype(np.int64), int(roots.size)


def label_regions(masks: ArrayLike) -> tuple[np.ndarray, int]:
    """8-connected components of binary masks, each image separately, without pixel loops.

    Foreground pixels are the nodes of a graph whose edges join 8-neighbours within one image;
    components are found by vectorised hook-and-compress label propagation, which takes a few rounds.

    Args:
        masks: bool or 0/1 array ``(H, W)`` or ``(N, H, W)`` (torch or numpy).

    Returns:
        ``(labels, count)``: int64 array of the same shape, 0 on background and ``1..count`` on the
        regions (numbered in raster order of their first pixel, image after image), and the number of
        regions.
    """
    m = _labels("masks", masks)
    if m.ndim not in (2, 3):
        raise ValueError(f"masks must have shape (H, W) or (N, H, W), got {m.shape}")
    foreground, region, count = _components(m[None] if m.ndim == 2 else m)
    out = np.zeros(m.size, dtype=np.int64)
    out[foreground] = region + 1
    return out.reshape(m.shape), count


# ------------------------------------------------------------------------------------------ pixel metrics


def _maps_and_masks(maps: ArrayLike, masks: ArrayLike, pixel_stride: int) -> tuple[np.ndarray, np.ndarray]:
    a, m = _scores("maps", maps), _labels("masks", masks)
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if m.ndim == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if a.ndim == 2:
        a = a[None]
    if m.ndim == 2:
        m = m[None]
    if a.ndim != 3:
        shape = tuple(_to_numpy("maps", maps).shape)
        raise ValueError(f"maps must have shape (N, H, W), (N, 1, H, W) or (H, W), got {shape}")
    _check_same_shape("maps", a, "masks", m)
    if isinstance(pixel_stride, bool) or not isinstance(pixel_stride, int) or pixel_stride < 1:
        raise ValueError(f"pixel_stride must be an int >= 1, got {pixel_stride!r}")
    return a, m


def _pixel_classes(maps: np.ndarray, masks: np.ndarray, pixel_stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Positive and negative pixel scores on the sampling grid, each in raster order."""
    grid_maps = maps[:, ::pixel_stride, ::pixel_stride]
    grid_masks = masks[:, ::pixel_stride, ::pixel_stride]
    return grid_maps[grid_masks], grid_maps[~grid_masks]


def _region_weights(masks: np.ndarray, pixel_stride: int) -> np.ndarray:
    """Weight of every defect pixel on the sampling grid (raster order): 1 / (#regions * region size).

    Regions are the 8-connected components of the full-resolution masks; sizes count the sampled
    pixels, and a region without a sampled pixel drops out.
    """
    foreground, region, count = _components(masks)
    if pixel_stride > 1:
        _, ys, xs = np.unravel_index(foreground, masks.shape)
        region = region[(ys % pixel_stride == 0) & (xs % pixel_stride == 0)]
    if count == 0 or region.size == 0:
        raise ValueError("AUPRO is undefined without defect regions: every mask is empty")
    _, region_index, sizes = np.unique(region, return_inverse=True, return_counts=True)
    return 1.0 / (sizes.size * sizes[region_index.reshape(-1)].astype(np.float64))


def _check_fpr_limit(fpr_limit: float) -> float:
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must lie in (0, 1], got {fpr_limit}")
    return float(fpr_limit)


def aupro(
    maps: ArrayLike,
    masks: ArrayLike,
    fpr_limit: float = DEFAULT_FPR_LIMIT,
    *,
    pixel_stride: int = 1,
) -> float:
    """Normalised area under the per-region-overlap curve up to ``fpr_limit`` (MVTec AD convention).

    Args:
        maps: anomaly maps, float ``(N, H, W)``, ``(N, 1, H, W)`` or ``(H, W)``.
        masks: ground truth of the same shape, 0/1 or bool.
        fpr_limit: upper FPR bound of the integral, in (0, 1]; 0.3 by default.
        pixel_stride: evaluate every ``pixel_stride``-th row and column only (regions are found on the
            full masks first; a region with no sampled pixel drops out).

    Returns:
        A float in [0, 1]; 1 for a map that scores every defect pixel above every normal pixel.

    Raises:
        ValueError: shapes differ, no defect region or no normal pixel, or ``fpr_limit`` out of range.
    """
    a, m = _maps_and_masks(maps, masks, pixel_stride)
    limit = _check_fpr_limit(fpr_limit)
    weights = _region_weights(m, pixel_stride)
    positives, negatives = _pixel_classes(a, m, pixel_stride)
    if negatives.size == 0:
        raise ValueError("AUPRO is undefined without normal pixels: every mask pixel is a defect")
    return _pro_area_from_ranks(_rank(positives, negatives), weights, limit)


def evaluate(
    image_scores: ArrayLike,
    image_labels: ArrayLike,
    maps: ArrayLike | None = None,
    masks: ArrayLike | None = None,
    *,
    fpr_limit: float = DEFAULT_FPR_LIMIT,
    pixel_stride: int = 1,
    compute_aupro: bool = True,
) -> dict[str, float]:
    """Image- and pixel-level metrics of a test set, as fractions in [0, 1].

    Args:
        image_scores: float ``(N,)`` image anomaly scores.
        image_labels: ``(N,)`` 0/1 or bool image labels.
        maps: optional float anomaly maps ``(N, H, W)`` or ``(N, 1, H, W)``.
        masks: ground-truth masks of the same shape as ``maps`` (required with ``maps``).
        fpr_limit: FPR bound of the AUPRO.
        pixel_stride: pixel subsampling for the pixel metrics (1 = every pixel).
        compute_aupro: skip the AUPRO (it needs the connected components of the masks) when ``False``.

    Returns:
        ``{"i_auroc", "i_f1_max"}`` plus, with maps, ``{"p_auroc", "p_f1_max"}`` and ``"aupro"``.

    Raises:
        ValueError: a metric is undefined (one class only) or shapes disagree.
    """
    s, y = _scores("image_scores", image_scores), _labels("image_labels", image_labels)
    if s.ndim != 1:
        raise ValueError(f"image_scores must have shape (N,), got {s.shape}")
    _check_same_shape("image_scores", s, "image_labels", y)
    image_ranks = _rank_classes(s, y, "image-level AUROC / F1")
    result = {"i_auroc": _auroc_from_ranks(image_ranks), "i_f1_max": _f1_max_from_ranks(image_ranks)}
    if maps is None and masks is None:
        return result
    if maps is None or masks is None:
        raise ValueError("maps and masks must be given together")
    a, m = _maps_and_masks(maps, masks, pixel_stride)
    if a.shape[0] != s.shape[0]:
        raise ValueError(f"maps must have one map per image score: got {a.shape[0]} maps and {s.shape[0]} scores")
    limit = _check_fpr_limit(fpr_limit)
    positives, negatives = _pixel_classes(a, m, pixel_stride)
    if positives.size == 0 or negatives.size == 0:
        raise ValueError(
            f"pixel-level metrics are undefined with one class only: got {positives.size} defect and "
            f"{negatives.size} normal pixels; both must be present"
        )
    pixel_ranks = _rank(positives, negatives)
    result["p_auroc"] = _auroc_from_ranks(pixel_ranks)
    result["p_f1_max"] = _f1_max_from_ranks(pixel_ranks)
    if compute_aupro:
        result["aupro"] = _pro_area_from_ranks(pixel_ranks, _region_weights(m, pixel_stride), limit)
    return result
