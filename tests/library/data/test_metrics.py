from __future__ import annotations

import numpy as np
import pytest
import torch

from torch_arcad.metrics import aupro, auroc, evaluate, f1_max, label_regions

# ----------------------------------------------------------------------------- independent references


def brute_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """O(P N) pairwise Mann-Whitney statistic."""
    pos = scores[labels == 1].tolist()
    neg = scores[labels == 0].tolist()
    total = 0.0
    for p in pos:
        for n in neg:
            total += 1.0 if p > n else 0.5 if p == n else 0.0
    return total / (len(pos) * len(neg))


def brute_f1_max(scores: np.ndarray, labels: np.ndarray) -> float:
    """Threshold loop over every distinct score (and one above the maximum)."""
    best = 0.0
    for t in np.unique(scores).tolist() + [np.inf]:
        pred = scores >= t
        tp = int(np.sum(pred & (labels == 1)))
        fp = int(np.sum(pred & (labels == 0)))
        fn = int(np.sum(~pred & (labels == 1)))
        if tp:
            best = max(best, 2 * tp / (2 * tp + fp + fn))
    return best


def flood_fill_regions(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """8-connected components of one 2-d mask by breadth-first search."""
    h, w = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    regions = []
    for y in range(h):
        for x in range(w):
            if mask[y, x] and not seen[y, x]:
                queue, region = [(y, x)], []
                seen[y, x] = True
                while queue:
                    cy, cx = queue.pop()
                    region.append((cy, cx))
                    for dy in (-1, 0, 1):
                        for dx in (-1, 0, 1):
                            ny, nx = cy + dy, cx + dx
                            if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                                seen[ny, nx] = True
                                queue.append((ny, nx))
                regions.append(region)
    return regions


def brute_aupro(maps: np.ndarray, masks: np.ndarray, limit: float = 0.3) -> float:
    """PRO / FPR at every distinct threshold, trapezoid up to ``limit`` with linear interpolation."""
    regions = [[(i, y, x) for y, x in r] for i in range(len(masks)) for r in flood_fill_regions(masks[i])]
    normal = maps[masks == 0]
    xs, ys = [0.0], [0.0]
    for t in sorted(np.unique(maps).tolist(), reverse=True):
        xs.append(float(np.mean(normal >= t)))
        ys.append(float(np.mean([np.mean([maps[i, y, x] >= t for i, y, x in r]) for r in regions])))
    area = 0.0
    for k in range(1, len(xs)):
        x0, x1, y0, y1 = xs[k - 1], xs[k], ys[k - 1], ys[k]
        if x0 >= limit:
            break
        if x1 > limit:
            y1 = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            x1 = limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area / limit


# ----------------------------------------------------------------------------- AUROC


def test_auroc_hand_computed():
    # Pairs (pos, neg): 0.8>0.1, 0.8>0.4, 0.4=0.4 (1/2), 0.4>0.1 -> (1 + 1 + 0.5 + 1) / 4.
    assert auroc(np.array([0.8, 0.4, 0.1, 0.4]), np.array([1, 1, 0, 0])) == pytest.approx(3.5 / 4)


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_pairwise(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 6, size=40).astype(np.float64)  # many ties
    labels = rng.integers(0, 2, size=40)
    labels[:2] = [0, 1]
    assert auroc(scores, labels) == pytest.approx(brute_auroc(scores, labels), abs=1e-12)


def test_auroc_extremes_and_ties():
    labels = np.array([0, 0, 1, 1, 0, 1])
    scores = labels * 2.0 + 0.5
    assert auroc(scores, labels) == 1.0
    assert auroc(-scores, labels) == 0.0
    assert auroc(np.full(6, 3.0), labels) == 0.5


def test_auroc_invariant_to_monotone_transforms():
    rng = np.random.default_rng(3)
    scores = rng.integers(-5, 6, size=60).astype(np.float64)
    labels = rng.integers(0, 2, size=60)
    reference = auroc(scores, labels)
    assert auroc(np.exp(scores), labels) == pytest.approx(reference, abs=1e-12)
    assert auroc(3.0 * scores**3 + 1.0, labels) == pytest.approx(reference, abs=1e-12)


def test_auroc_accepts_torch_bool_and_any_shape():
    rng = np.random.default_rng(4)
    scores = rng.normal(size=(5, 7)).astype(np.float32)
    labels = rng.random((5, 7)) < 0.4
    expected = brute_auroc(scores.ravel(), labels.ravel().astype(int))
    assert auroc(torch.from_numpy(scores), torch.from_numpy(labels)) == pytest.approx(expected, abs=1e-12)
    assert auroc(torch.from_numpy(scores).half(), labels.astype(np.int64)) == pytest.approx(
        brute_auroc(scores.astype(np.float16).ravel(), labels.ravel().astype(int)), abs=1e-12
    )


def test_inputs_are_not_modified():
    rng = np.random.default_rng(8)
    maps = rng.random((2, 6, 6))
    masks = rng.random((2, 6, 6)) < 0.3
    before = maps.copy()
    evaluate(maps.reshape(2, -1).max(1), np.array([0, 1]), maps, masks)
    assert np.array_equal(maps, before)


def test_auroc_errors():
    with pytest.raises(ValueError, match="one class"):
        auroc(np.array([0.1, 0.2]), np.array([1, 1]))
    with pytest.raises(ValueError, match="same shape"):
        auroc(np.array([0.1, 0.2]), np.array([1, 0, 1]))
    with pytest.raises(ValueError, match="only 0 and 1"):
        auroc(np.array([0.1, 0.2]), np.array([2, 0]))
    with pytest.raises(ValueError, match="NaN"):
        auroc(np.array([np.nan, 0.2]), np.array([1, 0]))


# ----------------------------------------------------------------------------- F1-max


def test_f1_max_hand_computed():
    # Threshold 0.7: TP 2 (0.9, 0.7), FP 1 (0.8), FN 1 (0.2) -> F1 = 4 / (4 + 1 + 1) = 2/3;
    # threshold 0.9: TP 1, FP 0, FN 2 -> 0.5; threshold 0.2: TP 3, FP 2 -> 6 / 8 = 0.75.
    scores = np.array([0.9, 0.8, 0.7, 0.3, 0.2, 0.1])
    labels = np.array([1, 0, 1, 0, 1, 0])
    assert f1_max(scores, labels) == pytest.approx(0.75)


@pytest.mark.parametrize("seed", range(5))
def test_f1_max_matches_threshold_loop(seed):
    rng = np.random.default_rng(10 + seed)
    scores = rng.integers(0, 8, size=50).astype(np.float32)
    labels = rng.integers(0, 2, size=50)
    labels[:2] = [0, 1]
    assert f1_max(scores, labels) == pytest.approx(brute_f1_max(scores, labels), abs=1e-12)


def test_f1_max_perfect_and_errors():
    labels = np.array([0, 1, 0, 1])
    assert f1_max(labels * 1.0, labels) == 1.0
    # All tied: the only threshold predicts everything positive: 2P / (2P + N) = 4 / 6.
    assert f1_max(np.zeros(4), labels) == pytest.approx(4 / 6)
    with pytest.raises(ValueError, match="one class"):
        f1_max(np.zeros(3), np.zeros(3))


# ----------------------------------------------------------------------------- regions and AUPRO


def test_label_regions_matches_flood_fill():
    rng = np.random.default_rng(0)
    masks = rng.random((4, 12, 13)) < 0.35
    labels, count = label_regions(masks)
    expected = {
        frozenset((i, y, x) for y, x in region) for i, m in enumerate(masks) for region in flood_fill_regions(m)
    }
    assert count == len(expected)
    found = {frozenset(zip(*(c.tolist() for c in np.nonzero(labels == k)))) for k in range(1, count + 1)}
    assert found == expected
    assert labels.dtype == np.int64 and (labels > 0).sum() == masks.sum()


def test_label_regions_diagonals_join_but_rows_and_images_do_not():
    masks = np.zeros((2, 5, 5), dtype=bool)
    masks[0, 0, 0] = masks[0, 1, 1] = True  # diagonal neighbours: one region
    masks[0, 2, 4] = masks[0, 3, 0] = True  # consecutive in memory (row wrap), not neighbours
    masks[0, 4, 0] = True  # below (3, 0): joins it
    masks[1, 0, 0] = True  # below image 0's (4, 0) only if images were glued together
    labels, count = label_regions(masks)
    assert count == 4
    assert labels[0, 0, 0] == labels[0, 1, 1]
    assert labels[0, 3, 0] == labels[0, 4, 0] != labels[0, 2, 4]
    assert labels[1, 0, 0] not in (labels[0, 4, 0], labels[0, 0, 0], labels[0, 2, 4])


def test_label_regions_long_snake():
    snake = np.zeros((11, 11), dtype=bool)
    snake[0::4, :10] = True
    snake[2::4, 1:] = True
    snake[1::4, 9] = True
    snake[3::4, 1] = True
    labels, count = label_regions(torch.from_numpy(snake))
    assert count == len(flood_fill_regions(snake)) == 1
    assert set(np.unique(labels).tolist()) == {0, 1}


def test_aupro_perfect_inverted_and_tied():
    masks = np.zeros((3, 8, 8), dtype=bool)
    masks[0, 1:3, 1:4] = True
    masks[1, 5:7, 5:7] = True
    perfect = masks.astype(np.float32)
    assert aupro(perfect, masks) == pytest.approx(1.0)
    assert aupro(-perfect, masks) == pytest.approx(0.0)
    # All tied: one straight segment from (0, 0) to (1, 1); area up to 0.3 is 0.045, / 0.3 = 0.15.
    assert aupro(np.zeros((3, 8, 8)), masks) == pytest.approx(0.15)


def test_aupro_hand_computed():
    # One 1x2 region scoring {3, 1}; normal pixels score {2, 0, 0, 0} + the rest 0 in a 1x6 image.
    maps = np.array([[[3.0, 1.0, 2.0, 0.0, 0.0, 0.0]]])
    masks = np.array([[[1, 1, 0, 0, 0, 0]]])
    # Thresholds: 3 -> (FPR 0, PRO .5); 2 -> (.25, .5); 1 -> (.25, 1); 0 -> (1, 1).
    # Area to 0.3: .25 * .5 + .05 * 1 = 0.175 -> / 0.3.
    assert aupro(maps, masks) == pytest.approx(0.175 / 0.3)
    assert aupro(maps, masks, fpr_limit=1.0) == pytest.approx(0.125 + 0.75)


@pytest.mark.parametrize("seed", range(4))
def test_aupro_matches_threshold_loop(seed):
    rng = np.random.default_rng(20 + seed)
    masks = rng.random((3, 9, 10)) < 0.2
    masks[0, 0, 0] = True
    maps = rng.integers(0, 12, size=masks.shape).astype(np.float64) + 3.0 * masks
    for limit in (0.3, 0.05, 1.0):
        assert aupro(maps, masks, fpr_limit=limit) == pytest.approx(brute_aupro(maps, masks, limit), abs=1e-10)


def test_aupro_exact_limit_hits_a_tie_group():
    # 10 normal pixels: 0.3 * 10 = 3 negatives, the 3rd belongs to a group of ties straddling nothing.
    maps = np.array([[[9, 8, 7, 7, 1, 1, 1, 1, 1, 1, 5, 6]]], dtype=np.float64)
    masks = np.array([[[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1]]])
    assert aupro(maps, masks) == pytest.approx(brute_aupro(maps, masks))


def test_aupro_monotone_invariance_and_layouts():
    rng = np.random.default_rng(5)
    masks = rng.random((2, 10, 10)) < 0.25
    maps = rng.integers(0, 20, size=masks.shape).astype(np.float64)
    reference = aupro(maps, masks)
    assert aupro(np.exp(maps / 4.0), masks) == pytest.approx(reference, abs=1e-12)
    assert aupro(torch.from_numpy(maps)[:, None], torch.from_numpy(masks)[:, None]) == pytest.approx(reference)


def test_aupro_pixel_stride_equals_explicit_subsampling_of_regions():
    rng = np.random.default_rng(6)
    masks = np.zeros((2, 12, 12), dtype=bool)
    masks[0, 2:9, 2:9] = True
    masks[1, 0:4, 6:12] = True
    maps = rng.random(masks.shape)
    sub_maps, sub_masks = maps[:, ::2, ::2], masks[:, ::2, ::2]
    # The regions stay connected on the sub-grid here, so the result equals AUPRO of the sub-grid.
    assert aupro(maps, masks, pixel_stride=2) == pytest.approx(aupro(sub_maps, sub_masks))


def test_aupro_errors():
    with pytest.raises(ValueError, match="without defect regions"):
        aupro(np.zeros((1, 4, 4)), np.zeros((1, 4, 4)))
    with pytest.raises(ValueError, match="without normal pixels"):
        aupro(np.zeros((1, 4, 4)), np.ones((1, 4, 4)))
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro(np.zeros((1, 4, 4)), np.eye(4)[None], fpr_limit=0.0)
    with pytest.raises(ValueError, match="same shape"):
        aupro(np.zeros((1, 4, 4)), np.zeros((1, 4, 5)))


# ----------------------------------------------------------------------------- evaluate


def test_evaluate_agrees_with_the_parts():
    rng = np.random.default_rng(7)
    masks = rng.random((6, 8, 8)) < 0.15
    labels = masks.reshape(6, -1).any(1).astype(int)
    labels[0], masks[0] = 0, False
    maps = rng.random(masks.shape).astype(np.float32) + 0.5 * masks
    scores = maps.reshape(6, -1).max(1)
    result = evaluate(scores, labels, maps, masks)
    assert set(result) == {"i_auroc", "i_f1_max", "p_auroc", "p_f1_max", "aupro"}
    assert result["i_auroc"] == pytest.approx(brute_auroc(scores, labels))
    assert result["p_auroc"] == pytest.approx(brute_auroc(maps.ravel(), masks.ravel().astype(int)))
    assert result["p_f1_max"] == pytest.approx(brute_f1_max(maps.ravel(), masks.ravel().astype(int)))
    assert result["aupro"] == pytest.approx(brute_aupro(maps, masks))
    only_images = evaluate(torch.from_numpy(scores), torch.from_numpy(labels))
    assert set(only_images) == {"i_auroc", "i_f1_max"}


def test_evaluate_errors():
    with pytest.raises(ValueError, match="one class"):
        evaluate(np.array([0.1, 0.2]), np.array([0, 0]))
    with pytest.raises(ValueError, match="together"):
        evaluate(np.array([0.1, 0.2]), np.array([0, 1]), maps=np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="one map per image"):
        evaluate(np.array([0.1, 0.2]), np.array([0, 1]), np.zeros((3, 4, 4)), np.eye(4)[None].repeat(3, 0))
    with pytest.raises(ValueError, match=r"shape \(N,\)"):
        evaluate(np.zeros((2, 2)), np.zeros((2, 2)))
