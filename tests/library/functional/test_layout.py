import math

import pytest
import torch
import torch.nn.functional as F

from torch_arcad.layout import (
    features_to_patches,
    image_labels,
    mask_fractions,
    masks_to_patches,
    summarize_defect_fractions,
)


def test_maps_and_tokens_give_the_same_patches():
    maps = torch.randn(2, 6, 3, 3)
    patches, grid = features_to_patches(maps)
    assert grid == (3, 3) and patches.shape == (2, 9, 6)
    assert torch.equal(patches[1, 4], maps[1, :, 1, 1])  # row-major
    tokens = torch.cat([torch.randn(2, 5, 6), patches], dim=1)
    again, grid2 = features_to_patches(tokens, prefix_tokens=5)
    assert grid2 == (3, 3) and torch.equal(again, patches)


def test_non_square_tokens_and_bad_ranks():
    with pytest.raises(ValueError, match="square"):
        features_to_patches(torch.randn(2, 10, 4))
    with pytest.raises(ValueError, match="square"):
        features_to_patches(torch.randn(2, 4, 4), prefix_tokens=5)
    with pytest.raises(ValueError, match=r"\(B, N, D\)"):
        features_to_patches(torch.randn(2, 4))
    with pytest.raises(ValueError, match="prefix_tokens"):
        features_to_patches(torch.randn(2, 4, 2, 2), prefix_tokens=1)
    with pytest.raises(TypeError):
        features_to_patches([1, 2, 3])


def test_threshold_zero_is_max_pool():
    masks = (torch.rand(3, 32, 32) > 0.97).float()
    patches = masks_to_patches(masks, 3, (4, 4), 0.0)
    expected = F.adaptive_max_pool2d(masks.unsqueeze(1), (4, 4)).flatten(1) > 0
    assert torch.equal(patches, expected)


def test_threshold_is_a_defect_fraction():
    masks = torch.zeros(1, 1, 8, 8)
    masks[0, 0, :2, :2] = 1  # patch (0,0) of a 2x2 grid: 4 of 16 pixels = 25 %
    assert masks_to_patches(masks, 1, (2, 2), 0.2).tolist() == [[True, False, False, False]]
    assert masks_to_patches(masks, 1, (2, 2), 0.3).tolist() == [[False, False, False, False]]


def test_fractions_count_defect_pixels_per_patch_and_decide_the_patches():
    masks = torch.zeros(2, 1, 8, 12)  # a 2 x 3 grid of 4 x 4 patches
    masks[0, 0, :2, :1] = 1  # 2 of patch (0, 0)'s 16 pixels
    masks[0, 0, 4:, 4:8] = 0.9  # all of patch (1, 1), soft but above the level
    masks[1, 0, :, 8:] = 0.3  # soft, but its own mask's peak: defect pixels (the level is relative to the peak)
    masks[1, 0, :, :1] = 0.1  # below half of that peak: no defect
    fractions = mask_fractions(masks, 2, (2, 3))
    expected = torch.zeros(2, 6)
    expected[0, 0], expected[0, 4] = 2 / 16, 1.0
    expected[1, 2], expected[1, 5] = 1.0, 1.0
    assert fractions.dtype == torch.float32
    torch.testing.assert_close(fractions, expected)
    for threshold in (0.0, 0.1, 0.2, 0.99):
        assert torch.equal(masks_to_patches(masks, 2, (2, 3), threshold), fractions > threshold)
    assert mask_fractions(masks, 2, (2, 3), level=0.2)[1, 0] == 4 / 16  # 0.1 > 0.2 * 0.3
    with pytest.raises(ValueError, match="mask_level"):
        mask_fractions(masks, 2, (2, 3), level=1.0)


def test_mask_encodings():
    base = torch.zeros(1, 8, 8)
    base[0, 0, 0] = 1
    for masks in (base, base.bool(), (base * 255).to(torch.uint8), base * 255):
        assert masks_to_patches(masks, 1, (2, 2)).tolist() == [[True, False, False, False]]
    soft = base * 0.4  # a faded defect: its peak pixel is still a defect pixel
    assert masks_to_patches(soft, 1, (2, 2)).tolist() == [[True, False, False, False]]
    fringe = base.clone()
    fringe[0, 7, 7] = 0.4  # below half the mask's peak of 1: not a defect pixel
    assert masks_to_patches(fringe, 1, (2, 2)).tolist() == [[True, False, False, False]]
    assert not masks_to_patches(torch.zeros(1, 8, 8), 1, (2, 2)).any()


def test_non_divisible_sizes_are_pooled_adaptively():
    masks = torch.zeros(1, 30, 30)
    masks[0, 29, 29] = 1
    assert masks_to_patches(masks, 1, (4, 4)).reshape(4, 4)[3, 3]


def test_bad_masks():
    with pytest.raises(ValueError, match="batch size"):
        masks_to_patches(torch.zeros(2, 8, 8), 3, (2, 2))
    with pytest.raises(ValueError, match="cannot be matched"):
        masks_to_patches(torch.zeros(1, 2, 2), 1, (4, 4))
    with pytest.raises(ValueError, match="cannot be matched"):
        masks_to_patches(torch.zeros(1, 64, 16), 1, (4, 4))
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        masks_to_patches(torch.zeros(1, 2, 8, 8), 1, (2, 2))
    with pytest.raises(ValueError, match="mask_threshold"):
        masks_to_patches(torch.zeros(1, 8, 8), 1, (2, 2), 1.0)


def test_image_labels():
    patches = torch.tensor([[False, True], [False, False]])
    assert image_labels(None, patches, 2, torch.device("cpu")).tolist() == [True, False]
    assert image_labels(None, None, 2, torch.device("cpu")).tolist() == [False, False]
    assert image_labels(torch.tensor([0, 1]), patches, 2, torch.device("cpu")).tolist() == [False, True]
    assert image_labels(torch.tensor([0.0, 1.0]), None, 2, torch.device("cpu")).tolist() == [False, True]
    with pytest.raises(ValueError, match=r"\(B,\)"):
        image_labels(torch.tensor([0, 1, 1]), None, 2, torch.device("cpu"))


def test_mask_level_counts_soft_fringes():
    masks = torch.zeros(1, 8, 8)
    masks[0, 0, 0] = 1.0
    masks[0, 7, 7] = 0.2  # the soft fringe of a resized mask
    assert masks_to_patches(masks, 1, (2, 2)).tolist() == [[True, False, False, False]]
    assert masks_to_patches(masks, 1, (2, 2), level=0.0).tolist() == [[True, False, False, True]]
    expected = F.adaptive_max_pool2d(masks.unsqueeze(1), (2, 2)).flatten(1) > 0
    assert torch.equal(masks_to_patches(masks, 1, (2, 2), level=0.0), expected)
    with pytest.raises(ValueError, match="mask_level"):
        masks_to_patches(masks, 1, (2, 2), level=1.0)


def test_defect_fraction_summary_of_thin_and_filling_defects():
    masks = torch.zeros(3, 32, 32)
    masks[0, 5, :] = 1  # a 1-pixel line: an eighth of each of the 4 patches of its grid row
    masks[1, :16, :16] = 1  # fills patch (0, 0) of a 2 x 2 grid... on a 4 x 4 grid, four whole patches
    summary = summarize_defect_fractions(masks, 4)
    assert summary.images == 2 and summary.patches == 4 + 4
    assert summary.mean == pytest.approx((4 * 1 / 8 + 4 * 1.0) / 8)
    assert summary.median == pytest.approx(torch.tensor([1 / 8] * 4 + [1.0] * 4).double().median().item())
    assert summary.at_least_quarter == 4
    assert summarize_defect_fractions(masks[:1], (4, 4)).thin
    assert not summarize_defect_fractions(masks[1:2], (4, 4)).thin
    empty = summarize_defect_fractions(torch.zeros(2, 8, 8), 2)
    assert empty.patches == 0 and empty.images == 0 and math.isnan(empty.mean)
