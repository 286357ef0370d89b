"""Tests of prototype-restricted pseudo-anomaly synthesis (eq. 5-6): the function
``torch_arcad.functional.synthesize_pseudo_anomalies`` and the module ``HypersphereAnomalySynthesizer``.

The function draws, per chunk of anchors, one ``randn((rows, num_candidates, D))`` scaled by sigma. The tests either
reproduce those draws from a seeded generator or serve the noise themselves through ``torch.randn``, then build
every candidate of eq. 5 and apply the selection rule of eq. 6 literally.
"""

from __future__ import annotations

import pytest
import torch

import torch_arcad.functional.synthesis as synthesis_module
from torch_arcad import HypersphereAnomalySynthesizer
from torch_arcad.functional import synthesize_pseudo_anomalies

TOLERANCE = {"atol": 1e-6, "rtol": 1e-6}


def unit_rows(n: int, d: int, g: torch.Generator, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    return (x / x.norm(dim=1, keepdim=True)).to(dtype)


def eq5_eq6(anchors: torch.Tensor, prototypes: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Literal eq. 5-6 for given noise (N, C, D): returns the chosen candidates (N, D) and the chosen index (N,)."""
    z = anchors.double()
    mu = prototypes.double()
    chosen, index = [], []
    for i in range(z.shape[0]):
        best, best_score = None, None
        for c in range(noise.shape[1]):
            v = z[i] + noise[i, c].double()
            candidate = v / v.norm()  # eq. 5
            score = max(float(candidate @ mu[k]) for k in range(mu.shape[0]))  # max_k a'.mu_k
            if best_score is None or score < best_score:  # eq. 6: argmin over candidates
                best, best_score, best_c = candidate, score, c
        chosen.append(best)
        index.append(best_c)
    return torch.stack(chosen) if chosen else z.new_zeros((0, z.shape[1])), torch.tensor(index, dtype=torch.long)


def rows_per_chunk(num_candidates: int, dim: int, num_prototypes: int, chunk_elements: int) -> int:
    """Anchors per chunk: at most ``chunk_elements`` candidate (or similarity) elements at once."""
    return max(1, chunk_elements // (num_candidates * max(dim, num_prototypes)))


def reproduce_noise(n, c, d, k, *, sigma, seed, chunk_elements, dtype=torch.float64):
    """The draws of the function: one randn((rows, C, D)) per chunk of anchors, from the seeded generator."""
    g = torch.Generator().manual_seed(seed)
    step = rows_per_chunk(c, d, k, chunk_elements)
    parts = [torch.randn((min(step, n - s), c, d), generator=g, dtype=dtype) * sigma for s in range(0, n, step)]
    return torch.cat(parts) if parts else torch.zeros((0, c, d), dtype=dtype)


class NoiseBank:
    """Stands in for ``torch.randn``: serves consecutive anchors' noise from a fixed (N, C, D) bank."""

    def __init__(self, bank: torch.Tensor) -> None:
        self.bank = bank
        self.offset = 0
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, size, *args, dtype=None, device=None, generator=None, **kwargs):
        size = tuple(size)
        self.shapes.append(size)
        rows = size[0]
        out = self.bank[self.offset : self.offset + rows]
        assert out.shape == size, (out.shape, size)
        self.offset += rows
        return out.clone().to(dtype=dtype or out.dtype)


# ----------------------------------------------------------------------------------------------- function


@pytest.mark.parametrize("chunk_elements", [1 << 24, 1, 100])
@pytest.mark.parametrize("num_candidates", [1, 5, 12])
def test_matches_eq5_eq6_with_reproduced_noise(chunk_elements, num_candidates):
    n, d, k, sigma, seed = 9, 6, 4, 0.3, 17
    g = torch.Generator().manual_seed(1)
    anchors, prototypes = unit_rows(n, d, g), unit_rows(k, d, g)
    out = synthesize_pseudo_anomalies(
        anchors,
        prototypes,
        sigma=sigma,
        num_candidates=num_candidates,
        generator=torch.Generator().manual_seed(seed),
        chunk_elements=chunk_elements,
    )
    noise = reproduce_noise(n, num_candidates, d, k, sigma=sigma, seed=seed, chunk_elements=chunk_elements)
    expected, _ = eq5_eq6(anchors, prototypes, noise)
    assert out.dtype == torch.float64 and out.shape == (n, d)
    torch.testing.assert_close(out, expected, **TOLERANCE)


def test_selection_rule_with_served_noise_and_chunking_invariance(monkeypatch):
    n, c, d, k = 10, 7, 5, 6
    g = torch.Generator().manual_seed(2)
    anchors, prototypes = unit_rows(n, d, g), unit_rows(k, d, g)
    bank = torch.randn(n, c, d, generator=g, dtype=torch.float64)
    sigma = 0.5
    results = []
    for chunk_elements in (1 << 24, 1, 2 * c * max(d, k), 3 * c * max(d, k)):
        spy = NoiseBank(bank)
        monkeypatch.setattr(synthesis_module.torch, "randn", spy)
        results.append(
            synthesize_pseudo_anomalies(anchors, prototypes, sigma=sigma, num_candidates=c, chunk_elements=chunk_elements)
        )
        monkeypatch.undo()
        assert spy.offset == n  # every anchor got its own candidates, once
    expected, picks = eq5_eq6(anchors, prototypes, bank * sigma)
    assert len(set(picks.tolist())) > 1  # the rule is exercised, not always the first candidate
    for result in results:
        torch.testing.assert_close(result, expected, **TOLERANCE)


def test_search_is_chunked_to_the_memory_bound(monkeypatch):
    n, c, d, k = 7, 3, 4, 5
    g = torch.Generator().manual_seed(3)
    anchors, prototypes = unit_rows(n, d, g), unit_rows(k, d, g)
    spy = NoiseBank(torch.randn(n, c, d, generator=g, dtype=torch.float64))
    monkeypatch.setattr(synthesis_module.torch, "randn", spy)
    # room for two anchors' candidates (C x max(D, K) elements each) per chunk
    synthesize_pseudo_anomalies(anchors, prototypes, num_candidates=c, chunk_elements=2 * c * max(d, k) + 1)
    assert spy.shapes == [(2, c, d), (2, c, d), (2, c, d), (1, c, d)]


def test_chosen_candidate_has_the_smallest_max_similarity(monkeypatch):
    n, c, d, k = 12, 6, 4, 3
    g = torch.Generator().manual_seed(4)
    anchors, prototypes = unit_rows(n, d, g), unit_rows(k, d, g)
    bank = torch.randn(n, c, d, generator=g, dtype=torch.float64)
    monkeypatch.setattr(synthesis_module.torch, "randn", NoiseBank(bank))
    out = synthesize_pseudo_anomalies(anchors, prototypes, sigma=0.4, num_candidates=c)
    candidates = anchors[:, None] + 0.4 * bank
    candidates = candidates / candidates.norm(dim=2, keepdim=True)
    candidate_scores = (candidates @ prototypes.t()).amax(dim=2)  # (N, C)
    out_scores = (out @ prototypes.t()).amax(dim=1)
    torch.testing.assert_close(out_scores, candidate_scores.amin(dim=1), **TOLERANCE)
    # and it is one of the candidates, not some other point
    distance = (candidates - out[:, None]).norm(dim=2).amin(dim=1)
    assert (distance < 1e-9).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_output_is_unit_norm_with_dtype_of_anchors(dtype):
    g = torch.Generator().manual_seed(5)
    anchors, prototypes = unit_rows(50, 16, g, dtype), unit_rows(8, 16, g, dtype)
    out = synthesize_pseudo_anomalies(anchors, prototypes, sigma=0.2, generator=g)
    assert out.dtype == dtype
    torch.testing.assert_close(out.norm(dim=1), torch.ones(50, dtype=dtype))


def test_synthetic_features_are_farther_from_prototypes_than_random_candidates():
    g = torch.Generator().manual_seed(6)
    anchors, prototypes = unit_rows(400, 8, g), unit_rows(16, 8, g)
    chosen = synthesize_pseudo_anomalies(anchors, prototypes, sigma=0.2, num_candidates=8, generator=g)
    single = synthesize_pseudo_anomalies(anchors, prototypes, sigma=0.2, num_candidates=1, generator=g)
    chosen_score = (chosen @ prototypes.t()).amax(dim=1).mean()
    single_score = (single @ prototypes.t()).amax(dim=1).mean()
    assert chosen_score < single_score


def test_gradient_flows_to_anchors_through_the_chosen_candidate():
    n, d, k, c, sigma, seed = 6, 5, 3, 4, 0.3, 8
    g = torch.Generator().manual_seed(7)
    anchors, prototypes = unit_rows(n, d, g), unit_rows(k, d, g)
    anchors.requires_grad_(True)
    prototypes.requires_grad_(True)
    weight = torch.randn(n, d, generator=g, dtype=torch.float64)
    out = synthesize_pseudo_anomalies(
        anchors, prototypes, sigma=sigma, num_candidates=c, generator=torch.Generator().manual_seed(seed)
    )
    (out * weight).sum().backward()
    assert prototypes.grad is None

    noise = reproduce_noise(n, c, d, k, sigma=sigma, seed=seed, chunk_elements=1 << 24)
    _, picks = eq5_eq6(anchors.detach(), prototypes.detach(), noise)
    z = anchors.detach().clone().requires_grad_(True)
    v = z + noise[torch.arange(n), picks]
    ((v / v.norm(dim=1, keepdim=True)) * weight).sum().backward()
    torch.testing.assert_close(anchors.grad, z.grad, **TOLERANCE)


def test_detach_cuts_the_gradient_but_keeps_the_values():
    g = torch.Generator().manual_seed(9)
    anchors, prototypes = unit_rows(8, 4, g), unit_rows(3, 4, g)
    anchors.requires_grad_(True)
    kept = synthesize_pseudo_anomalies(anchors, prototypes, sigma=0.2, generator=torch.Generator().manual_seed(1))
    cut = synthesize_pseudo_anomalies(
        anchors, prototypes, sigma=0.2, generator=torch.Generator().manual_seed(1), detach=True
    )
    assert kept.requires_grad
    assert not cut.requires_grad
    torch.testing.assert_close(cut, kept.detach())


def test_reproducible_with_seeded_generator_and_random_without_one():
    g = torch.Generator().manual_seed(10)
    anchors, prototypes = unit_rows(8, 4, g), unit_rows(3, 4, g)
    a = synthesize_pseudo_anomalies(anchors, prototypes, sigma=0.1, generator=torch.Generator().manual_seed(3))
    b = synthesize_pseudo_anomalies(anchors, prototypes, sigma=0.1, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    c = synthesize_pseudo_anomalies(anchors, prototypes, sigma=0.1, generator=torch.Generator().manual_seed(4))
    assert not torch.allclose(a, c)


def test_sigma_zero_returns_the_anchors():
    g = torch.Generator().manual_seed(11)
    anchors, prototypes = unit_rows(8, 4, g), unit_rows(3, 4, g)
    out = synthesize_pseudo_anomalies(anchors, prototypes, sigma=0.0, num_candidates=5, generator=g)
    torch.testing.assert_close(out, anchors)


def test_no_anchors():
    g = torch.Generator().manual_seed(12)
    prototypes = unit_rows(3, 4, g, torch.float32)
    anchors = torch.zeros(0, 4, requires_grad=True)
    out = synthesize_pseudo_anomalies(anchors, prototypes, generator=g)
    assert out.shape == (0, 4)
    assert out.dtype == torch.float32


@pytest.mark.parametrize(
    ("anchors", "prototypes", "kwargs"),
    [
        (torch.randn(4), torch.randn(3, 4), {}),
        (torch.randn(5, 4), torch.randn(4), {}),
        (torch.randn(5, 4), torch.randn(3, 5), {}),
        (torch.randn(2, 5, 4), torch.randn(3, 4), {}),
        (torch.randn(5, 4), torch.randn(3, 4), {"sigma": -0.1}),
        (torch.randn(5, 4), torch.randn(3, 4), {"num_candidates": 0}),
    ],
)
def test_bad_input_raises_value_error(anchors, prototypes, kwargs):
    with pytest.raises(ValueError):
        synthesize_pseudo_anomalies(anchors, prototypes, **kwargs)


# ------------------------------------------------------------------------------------------------- module


def test_module_equals_function_with_paper_defaults():
    g = torch.Generator().manual_seed(13)
    anchors, prototypes = unit_rows(20, 8, g, torch.float32), unit_rows(5, 8, g, torch.float32)
    module = HypersphereAnomalySynthesizer()
    out = module(anchors, prototypes, generator=torch.Generator().manual_seed(2))
    expected = synthesize_pseudo_anomalies(
        anchors, prototypes, sigma=0.015, num_candidates=5, generator=torch.Generator().manual_seed(2)
    )
    assert torch.equal(out, expected)
    assert list(module.parameters()) == [] and list(module.buffers()) == []


def test_module_passes_its_settings(monkeypatch):
    n, c, d, k = 6, 3, 4, 5
    g = torch.Generator().manual_seed(14)
    anchors, prototypes = unit_rows(n, d, g), unit_rows(k, d, g)
    anchors.requires_grad_(True)
    bank = torch.randn(n, c, d, generator=g, dtype=torch.float64)
    spy = NoiseBank(bank)
    monkeypatch.setattr(synthesis_module.torch, "randn", spy)
    module = HypersphereAnomalySynthesizer(0.7, c, detach=True, chunk_elements=2 * c * max(d, k))
    out = module(anchors, prototypes)
    assert spy.shapes == [(2, c, d)] * 3
    assert not out.requires_grad
    expected, _ = eq5_eq6(anchors.detach(), prototypes, 0.7 * bank)
    torch.testing.assert_close(out, expected, **TOLERANCE)


def test_module_keeps_gradient_by_default():
    g = torch.Generator().manual_seed(15)
    anchors = unit_rows(4, 3, g).requires_grad_(True)
    out = HypersphereAnomalySynthesizer()(anchors, unit_rows(2, 3, g), generator=g)
    out.sum().backward()
    assert anchors.grad is not None and torch.isfinite(anchors.grad).all()


@pytest.mark.parametrize("kwargs", [{"sigma": -1.0}, {"num_candidates": 0}])
def test_module_bad_settings_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        HypersphereAnomalySynthesizer(**kwargs)


# --------------------------------------------------------------------------------- several noise scales


def reproduce_ranged_noise(n, c, d, k, *, sigma, sigma_max, seed, chunk_elements, dtype=torch.float64):
    """The draws with ``sigma_max``: per chunk one rand((rows, 1, 1)) for the anchors' log-uniform scales, then the
    chunk's randn((rows, C, D)), from the seeded generator."""
    g = torch.Generator().manual_seed(seed)
    step = rows_per_chunk(c, d, k, chunk_elements)
    parts = []
    for s in range(0, n, step):
        rows = min(step, n - s)
        u = torch.rand((rows, 1, 1), generator=g, dtype=dtype)
        scale = sigma * (sigma_max / sigma) ** u  # log-uniform in [sigma, sigma_max]
        parts.append(torch.randn((rows, c, d), generator=g, dtype=dtype) * scale)
    return torch.cat(parts)


