"""PatchWeighting: which patches are normal, which are real anomalies (eq. 7), and their weights in eq. 8 and 9,
against a transcription with boolean selection and explicit per-image loops."""

import pytest
import torch
import torch.nn.functional as F

from torch_arcad import PatchWeighting
from torch_arcad.patches import keep_missed, missed_anomalies

GRID, SIZE = (4, 4), 32


def transcription(masks, labels, finite, threshold, weighting, level, cls_anomalies):
    """Per image: the defect pixels (relative to the mask's peak), each patch's fraction by an explicit loop over
    the 8 x 8 blocks, then the weights."""
    batch = masks.shape[0]
    rows = {k: [] for k in ("normal", "real", "real_count", "cls_real", "cls_target")}
    for b in range(batch):
        peak = masks[b].max()
        pixels = (masks[b] > level * peak) & (peak > 0)
        fractions = torch.tensor(
            [pixels[i * 8:(i + 1) * 8, j * 8:(j + 1) * 8].float().mean() for i in range(4) for j in range(4)]
        )
        anomalous = fractions > threshold
        defective = bool(labels[b]) if labels is not None else bool(pixels.any())
        for p in range(16):
            ok = bool(finite[b, p])
            real = defective and bool(anomalous[p]) and ok
            weight = float(fractions[p]) if weighting == "fraction" else 1.0
            rows["normal"].append(float(not defective and ok))
            rows["real_count"].append(float(real))
            rows["real"].append(weight * real)
            if cls_anomalies == "image":
                rows["cls_target"].append(float(defective and ok))
                rows["cls_real"].append(float(defective and ok))
            else:
                rows["cls_target"].append(float(real))
                rows["cls_real"].append(weight * real)
    return {k: torch.tensor(v) for k, v in rows.items()}


@pytest.mark.parametrize("weighting", ["binary", "fraction"])
@pytest.mark.parametrize("cls_anomalies", ["masked", "image"])
@pytest.mark.parametrize(("threshold", "level"), [(0.0, 0.5), (0.25, 0.5), (0.0, 0.0)])
@pytest.mark.parametrize("with_labels", [True, False])
def test_weights_match_a_transcription(weighting, cls_anomalies, threshold, level, with_labels):
    generator = torch.Generator().manual_seed(3)
    masks = torch.zeros(5, SIZE, SIZE)
    masks[1, 3:9, 5:30] = 1.0
    masks[2, 10:12, :] = 0.3  # a faded thin defect (peak 0.3)
    masks[3] = torch.rand(SIZE, SIZE, generator=generator) * (torch.rand(SIZE, SIZE, generator=generator) > 0.9)
    masks[4, 20:, 20:] = 1.0  # labelled normal below: the labels decide
    labels = torch.tensor([0, 1, 1, 1, 0]) if with_labels else None
    finite = torch.ones(5, 16, dtype=torch.bool)
    finite[1, 2] = False
    policy = PatchWeighting(threshold, weighting, level, cls_anomalies)
    got = policy(finite, GRID, masks, labels)
    want = transcription(masks, labels, finite, threshold, weighting, level, cls_anomalies)
    for key, value in want.items():
        torch.testing.assert_close(getattr(got, key), value, msg=key)
    assert got.defective.tolist() == ([False, True, True, True, False] if with_labels else
                                      [False, True, True, True, True])
    assert torch.equal(got.finite, finite.flatten())


def test_without_masks_every_labelled_image_is_defective_with_no_real_anomaly():
    finite = torch.ones(3, 16, dtype=torch.bool)
    got = PatchWeighting(0.0, "binary", 0.5, "masked")(finite, GRID, None, torch.tensor([0, 1, 0]))
    assert got.defective.tolist() == [False, True, False]
    assert got.normal.sum() == 32 and got.real_count.sum() == 0 and got.cls_target.sum() == 0
    got = PatchWeighting(0.0, "binary", 0.5, "image")(finite, GRID, None, torch.tensor([0, 1, 0]))
    assert got.cls_target.sum() == 16  # the released code's eq. 9: every patch of a defective image


def test_a_thin_scratch_faded_by_a_smoothing_resize_keeps_its_patches():
    scratch = torch.zeros(1, 1, 256, 256)
    scratch[0, 0, 100, 30:220] = 1.0  # a 1-pixel scratch
    small = F.interpolate(scratch, size=(64, 64), mode="bilinear", antialias=True)[:, 0]
    assert 0.0 < small.max() < 0.5  # an absolute 0.5 would lose it entirely
    got = PatchWeighting(0.0, "binary", 0.5, "masked")(torch.ones(1, 16, dtype=torch.bool), GRID, small, None)
    assert got.defective.tolist() == [True]
    assert got.real_count.reshape(4, 4)[1].tolist() == [1.0, 1.0, 1.0, 1.0]  # grid row 1 holds pixel row 100 / 4
    fractions = PatchWeighting(0.0, "fraction", 0.5, "masked")(
        torch.ones(1, 16, dtype=torch.bool), GRID, small, None
    ).real
    assert 0.0 < float(fractions.max()) <= 0.25  # a thin line stays a small share of its patches


def test_unknown_weighting_is_an_error():
    with pytest.raises(ValueError, match="weighting must be one of"):
        PatchWeighting(0.0, "fraction_mean", 0.5, "masked")


def missed_transcription(scores, normal):
    """A patch is missed unless its score exceeds every finite normal patch's score (a loop, no masking tricks)."""
    normal_scores = [s for s, n in zip(scores.tolist(), normal.tolist()) if n and s == s and abs(s) != float("inf")]
    if not normal_scores:
        return torch.ones_like(scores)
    highest = max(normal_scores)
    return torch.tensor([0.0 if (s == s and abs(s) != float("inf") and s > highest) else 1.0 for s in scores.tolist()])


def test_missed_anomalies_match_a_transcription():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(40, generator=g)
    normal = (torch.arange(40) < 24).float()
    scores[30] = scores[:24].max()  # a tie with the highest normal patch is missed (not above it)
    scores[31] = float("nan")  # a non-finite anomaly score: missed, as the paper would push it
    scores[5] = float("inf")  # a non-finite normal score is no reference
    got = missed_anomalies(scores, normal)
    expected = missed_transcription(scores, normal)
    assert torch.equal(got, expected)
    assert 0 < got[24:].sum() < 16  # some anomalies found, some missed: the check can fail either way
    assert got[30] == 1 and got[31] == 1


def test_without_normal_patches_every_anomaly_is_missed():
    scores = torch.tensor([0.1, 5.0, float("nan")])
    assert torch.equal(missed_anomalies(scores, torch.zeros(3)), torch.ones(3))
    # normal patches whose scores are all non-finite say nothing either
    assert torch.equal(missed_anomalies(torch.tensor([float("nan"), 5.0]), torch.tensor([1.0, 0.0])), torch.ones(2))


def test_keep_missed_takes_found_anomalies_out_of_eq_8_and_9_only():
    g = torch.Generator().manual_seed(1)
    masks = torch.zeros(2, SIZE, SIZE)
    masks[1, 0:16, 0:12] = torch.rand(16, 12, generator=g) + 0.5
    finite = torch.ones(2, 16, dtype=torch.bool)
    w = PatchWeighting(0.0, "fraction", 0.5, "masked")(finite, GRID, masks, None)
    missed = (torch.arange(32) % 2).float()
    kept = keep_missed(w, missed)
    for name in ("real", "real_count", "cls_real", "cls_target"):
        assert torch.equal(getattr(kept, name), getattr(w, name) * missed)
    assert getattr(w, "real_count").sum() > getattr(kept, "real_count").sum() > 0
    for name in ("finite", "normal", "anomalous", "marked", "defective"):  # a found defect is still a defect
        assert torch.equal(getattr(kept, name), getattr(w, name))
