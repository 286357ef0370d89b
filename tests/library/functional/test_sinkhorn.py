"""Tests of ``torch_arcad.functional.sinkhorn_knopp`` (eq. 3 of the paper).

The reference below is the textbook exp-domain Sinkhorn-Knopp written in float64:
``Q = diag(u) M diag(v)`` with ``M = exp(S / epsilon)``, alternately scaling the columns to mass N/K and the rows
to mass 1 (the SwAV ordering, which ends on the rows).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torch_arcad.functional import sinkhorn_knopp
from torch_arcad.functional.sinkhorn import exp_domain_is_safe, min_exp_domain_epsilon

ROW_TOLERANCE = 1e-5
COLUMN_TOLERANCE = 1e-3
MAX_SIDE = 64
FEW_EXAMPLES = settings(max_examples=50, deadline=None)


def exp_domain_sinkhorn(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """Eq. 3 in float64, literally: M = exp(S / eps), then Q = diag(u) M diag(v) by alternate scaling."""
    m = torch.exp(scores.double() / epsilon)
    n, k = m.shape
    u = torch.ones(n, dtype=torch.float64)
    v = torch.ones(k, dtype=torch.float64)
    for _ in range(iterations):
        # column sums of diag(u) M diag(v) must equal N / K
        v = (n / k) / (m * u[:, None]).sum(dim=0)
        # row sums must equal 1
        u = 1.0 / (m * v[None, :]).sum(dim=1)
    if iterations == 0:
        u = 1.0 / m.sum(dim=1)
    return torch.diag(u) @ m @ torch.diag(v)


def random_scores(n: int, k: int, seed: int, scale: float, kind: str, dtype: torch.dtype) -> torch.Tensor:
    """Finite (n, k) scores of magnitude up to ``scale``, with ties and extremes when ``kind`` asks for them."""
    g = torch.Generator().manual_seed(seed)
    if kind == "uniform":
        s = (torch.rand(n, k, generator=g, dtype=torch.float64) * 2 - 1) * scale
    elif kind == "extremes":  # only +-scale: the largest spread the magnitude allows
        s = torch.where(torch.rand(n, k, generator=g) < 0.5, scale, -scale).double()
    elif kind == "ties":
        s = torch.randint(-2, 3, (n, k), generator=g).double() * (scale / 2)
    elif kind == "constant":
        s = torch.full((n, k), scale, dtype=torch.float64)
    else:  # one huge entry per row, the rest at zero
        s = torch.zeros(n, k, dtype=torch.float64)
        s[torch.arange(n), torch.randint(k, (n,), generator=g)] = scale
    return s.to(dtype)


@st.composite
def score_cases(draw):
    n = draw(st.integers(1, MAX_SIDE))
    k = draw(st.integers(1, MAX_SIDE))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([1e-3, 1.0, 37.0, 1e3, 1e4]))
    kind = draw(st.sampled_from(["uniform", "extremes", "ties", "constant", "spike"]))
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]))
    return random_scores(n, k, seed, scale, kind, dtype)


@FEW_EXAMPLES
@given(
    scores=score_cases(),
    epsilon=st.floats(1e-3, 1.0),
    iterations=st.integers(0, 10),
)
def test_rows_sum_to_one_for_any_finite_scores(scores, epsilon, iterations):
    q = sinkhorn_knopp(scores, epsilon, iterations)
    assert q.dtype == torch.float32
    assert q.shape == scores.shape
    assert torch.isfinite(q).all()
    assert (q >= 0).all()
    torch.testing.assert_close(q.sum(dim=1), torch.ones(scores.shape[0]), atol=ROW_TOLERANCE, rtol=0)


@FEW_EXAMPLES
@given(
    n=st.integers(1, MAX_SIDE),
    k=st.integers(1, MAX_SIDE),
    seed=st.integers(0, 2**31 - 1),
    epsilon=st.floats(0.05, 1.0),
    iterations=st.integers(0, 10),
)
def test_matches_float64_exp_domain_reference(n, k, seed, epsilon, iterations):
    # Scores in [-1, 1] (cosine similarities): exp(S / eps) stays far from float64 overflow.
    scores = random_scores(n, k, seed, 1.0, "uniform", torch.float32)
    q = sinkhorn_knopp(scores, epsilon, iterations)
    expected = exp_domain_sinkhorn(scores, epsilon, iterations)
    torch.testing.assert_close(q.double(), expected, atol=2e-5, rtol=1e-4)


@FEW_EXAMPLES
@given(
    n=st.integers(1, MAX_SIDE),
    k=st.integers(1, MAX_SIDE),
    seed=st.integers(0, 2**31 - 1),
    epsilon=st.floats(0.5, 1.0),
    kind=st.sampled_from(["uniform", "extremes", "ties", "spike"]),
)
def test_columns_reach_n_over_k(n, k, seed, epsilon, kind):
    # For S in [-1, 1] and eps >= 0.5 the Hilbert-metric diameter of exp(S / eps) is at most 4 / eps <= 8, so
    # each full scaling round contracts by at least tanh(2)^2 < 0.93 (Birkhoff): 300 rounds are plenty.
    scores = random_scores(n, k, seed, 1.0, kind, torch.float32)
    q = sinkhorn_knopp(scores, epsilon, 300)
    torch.testing.assert_close(q.sum(dim=0), torch.full((k,), n / k), atol=COLUMN_TOLERANCE, rtol=0)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(n), atol=ROW_TOLERANCE, rtol=0)


@pytest.mark.parametrize("seed", range(4))
def test_columns_balanced_at_default_epsilon_for_cosine_scores(seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.nn.functional.normalize(torch.randn(96, 16, generator=g), dim=1)
    mu = torch.nn.functional.normalize(torch.randn(12, 16, generator=g), dim=1)
    q = sinkhorn_knopp(z @ mu.t(), epsilon=0.05, iterations=500)
    torch.testing.assert_close(q.sum(dim=0), torch.full((12,), 96 / 12), atol=COLUMN_TOLERANCE, rtol=0)


def test_more_iterations_balance_columns_better():
    g = torch.Generator().manual_seed(3)
    scores = torch.rand(40, 7, generator=g) * 2 - 1
    errors = [
        (sinkhorn_knopp(scores, 0.1, it).sum(dim=0) - 40 / 7).abs().max().item() for it in (0, 1, 3, 10, 100)
    ]
    assert errors[0] > 1e-1
    assert errors[-1] < errors[3] < errors[1] < errors[0]
    assert errors[-1] < COLUMN_TOLERANCE


@pytest.mark.parametrize("iterations", [1, 3])
def test_few_iterations_match_exp_domain_at_default_epsilon(iterations):
    # The released code's setting (epsilon 0.05, 3 rounds, exp domain, no shift): with so few rounds the plan is
    # far from converged, so the starting point (u = v = 1) matters.
    g = torch.Generator().manual_seed(10)
    z = torch.nn.functional.normalize(torch.randn(24, 8, generator=g), dim=1)
    mu = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=1)
    scores = z @ mu.t()
    expected = exp_domain_sinkhorn(scores, 0.05, iterations)
    torch.testing.assert_close(sinkhorn_knopp(scores, 0.05, iterations).double(), expected, atol=1e-5, rtol=1e-4)


def test_zero_iterations_is_row_softmax():
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(9, 5, generator=g)
    q = sinkhorn_knopp(scores, 0.3, 0)
    torch.testing.assert_close(q, torch.softmax(scores / 0.3, dim=1))


def test_row_shift_is_absorbed_by_u_at_convergence():
    g = torch.Generator().manual_seed(2)
    scores = torch.rand(11, 6, generator=g) * 2 - 1
    shift = torch.rand(11, 1, generator=g) * 2 - 1
    torch.testing.assert_close(sinkhorn_knopp(scores + shift, 0.5, 300), sinkhorn_knopp(scores, 0.5, 300), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("iterations", [1, 4])
def test_column_shift_is_absorbed_by_v_at_every_iteration(iterations):
    # Sinkhorn-Knopp starts from u = v = 1 and scales the columns first, so a per-column shift of S (a column
    # factor of M) is removed exactly by the first column step.
    g = torch.Generator().manual_seed(4)
    scores = torch.rand(11, 6, generator=g) * 2 - 1
    shift = torch.rand(1, 6, generator=g) * 2 - 1
    torch.testing.assert_close(
        sinkhorn_knopp(scores + shift, 0.1, iterations), sinkhorn_knopp(scores, 0.1, iterations), atol=1e-5, rtol=1e-4
    )


def test_large_scores_do_not_overflow_where_the_exp_domain_does():
    scores = torch.tensor([[1.0, -1.0, 0.5], [0.9, 0.2, -0.3]]) * 100.0
    epsilon = 0.05  # max(S) / eps = 2000: exp overflows even in float64
    assert not torch.isfinite(torch.exp(scores.double() / epsilon)).all()
    q = sinkhorn_knopp(scores, epsilon, 5)
    assert torch.isfinite(q).all()
    torch.testing.assert_close(q.sum(dim=1), torch.ones(2), atol=ROW_TOLERANCE, rtol=0)
    # The plan depends on S / epsilon only: the same ratio in a range where exp does not overflow.
    torch.testing.assert_close(q, sinkhorn_knopp(scores / 100.0, epsilon / 100.0, 5), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("iterations", [0, 1, 2])
def test_rows_sum_to_one_when_scores_over_epsilon_are_large(iterations):
    # S / eps = 1e7: a row normalisation done as x - logsumexp(x) loses log 2 to float32 rounding at that
    # magnitude (the spacing of float32 near 1e7 is 1), which would leave the row summing to 2 / e.
    scores = torch.tensor([[1e4, 1e4], [0.0, 0.0]])
    q = sinkhorn_knopp(scores, 1e-3, iterations)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(2), atol=ROW_TOLERANCE, rtol=0)
    torch.testing.assert_close(q, torch.full((2, 2), 0.5), atol=ROW_TOLERANCE, rtol=0)


def test_no_gradient_even_if_input_requires_grad():
    scores = torch.randn(6, 4, requires_grad=True)
    q = sinkhorn_knopp(scores)
    assert not q.requires_grad
    assert q.grad_fn is None


def test_default_arguments_are_epsilon_005_and_three_iterations():
    g = torch.Generator().manual_seed(5)
    scores = torch.rand(10, 4, generator=g) * 2 - 1
    q = sinkhorn_knopp(scores)
    assert torch.equal(q, sinkhorn_knopp(scores, 0.05, 3))
    assert not torch.allclose(q, sinkhorn_knopp(scores, 0.05, 2))
    assert not torch.allclose(q, sinkhorn_knopp(scores, 0.1, 3))


@pytest.mark.parametrize("iterations", [0, 1, 3, 50])
def test_mask_zeroes_rows_and_plans_the_rest_alone(iterations):
    g = torch.Generator().manual_seed(6)
    scores = torch.rand(20, 5, generator=g) * 2 - 1
    mask = torch.rand(20, generator=g) < 0.6
    assert 0 < mask.sum() < 20
    q = sinkhorn_knopp(scores, 0.1, iterations, mask=mask)
    assert torch.isfinite(q).all()
    assert (q[~mask] == 0).all()
    torch.testing.assert_close(q[mask], sinkhorn_knopp(scores[mask], 0.1, iterations), atol=1e-6, rtol=1e-5)


def test_mask_columns_target_counts_only_kept_rows():
    g = torch.Generator().manual_seed(7)
    scores = torch.rand(30, 3, generator=g) * 2 - 1
    mask = torch.zeros(30, dtype=torch.bool)
    mask[:12] = True
    q = sinkhorn_knopp(scores, 0.5, 300, mask=mask)
    torch.testing.assert_close(q.sum(dim=0), torch.full((3,), 12 / 3), atol=COLUMN_TOLERANCE, rtol=0)


def test_all_rows_masked_gives_zeros_without_nan():
    scores = torch.randn(5, 3)
    for iterations in (0, 3):
        q = sinkhorn_knopp(scores, 0.05, iterations, mask=torch.zeros(5, dtype=torch.bool))
        assert torch.equal(q, torch.zeros(5, 3))


def test_autocast_bfloat16_still_returns_float32():
    g = torch.Generator().manual_seed(8)
    z = torch.nn.functional.normalize(torch.randn(32, 16, generator=g), dim=1)
    mu = torch.nn.functional.normalize(torch.randn(8, 16, generator=g), dim=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores = z @ mu.t()
        assert scores.dtype == torch.bfloat16
        q = sinkhorn_knopp(scores, 0.05, 3)
    assert q.dtype == torch.float32
    # same plan as outside autocast from the same bfloat16 scores: nothing inside ran in low precision
    torch.testing.assert_close(q, sinkhorn_knopp(scores, 0.05, 3))
    torch.testing.assert_close(q.sum(dim=1), torch.ones(32), atol=ROW_TOLERANCE, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_low_and_high_precision_inputs_give_float32(dtype):
    g = torch.Generator().manual_seed(9)
    scores = (torch.rand(16, 4, generator=g) * 2 - 1).to(dtype)
    q = sinkhorn_knopp(scores, 0.05, 3)
    assert q.dtype == torch.float32
    # the input is only upcast: the plan is that of the same values in float32
    torch.testing.assert_close(q, sinkhorn_knopp(scores.float(), 0.05, 3), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    ("scores", "kwargs"),
    [
        (torch.randn(5), {}),
        (torch.randn(2, 3, 4), {}),
        (torch.randn(5, 3), {"epsilon": 0.0}),
        (torch.randn(5, 3), {"epsilon": -0.1}),
        (torch.randn(5, 3), {"iterations": -1}),
        (torch.randn(5, 3), {"mask": torch.ones(4, dtype=torch.bool)}),
        (torch.randn(5, 3), {"mask": torch.ones(5, 1, dtype=torch.bool)}),
    ],
)
def test_bad_input_raises_value_error(scores, kwargs):
    with pytest.raises(ValueError):
        sinkhorn_knopp(scores, **kwargs)


def test_error_message_names_expected_shape():
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        sinkhorn_knopp(torch.randn(5))
    assert math.isclose(sinkhorn_knopp(torch.zeros(1, 1)).item(), 1.0)


# ------------------------------------------------------------------ exp-domain path (score_bound given)

# Plan entries lie in [0, 1] (rows sum to 1), and the two float32 paths round differently: over 3,000 random cases
# of the property test below (epsilon down to 0.025, up to 10 iterations) they differed by at most 12.25 float32
# epsilons, so a 1e-6 tolerance (8.4 epsilons) failed now and then.
PLAN_TOLERANCE = 32 * torch.finfo(torch.float32).eps
FLOAT32_LOG_INVERSE_TINY = 87.3365  # -log(torch.finfo(torch.float32).tiny), written out independently


def cosine_scores(n: int, k: int, seed: int, dim: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1)
    mu = torch.nn.functional.normalize(torch.randn(k, dim, generator=g), dim=1)
    return z @ mu.t()


def test_exp_domain_threshold_follows_float32_tiny():
    # exp(-2b/eps) / K must stay a normal float32: eps >= 2b / (log(1/tiny) - log K)
    for bound, k in ((1.0, 1), (1.0, 500), (3.0, 64)):
        expected = 2 * bound / (FLOAT32_LOG_INVERSE_TINY - math.log(k))
        assert math.isclose(min_exp_domain_epsilon(bound, k), expected, rel_tol=1e-5)
    assert 0.0246 < min_exp_domain_epsilon(1.0, 500) < 0.0248
    assert exp_domain_is_safe(0.05, 1.0, 500)
    assert not exp_domain_is_safe(0.02, 1.0, 500)
    assert not exp_domain_is_safe(0.05, None, 500)
    assert not exp_domain_is_safe(0.05, 1.0, 10**40)  # no epsilon is small enough for K beyond 1/tiny
    # the smallest kernel entry at the threshold is tiny * K: a normal float32, and the next step down is not
    k = 500
    eps = min_exp_domain_epsilon(1.0, k)
    smallest = torch.exp(torch.tensor(-2.0 / eps, dtype=torch.float64)) / k
    assert smallest.float() >= torch.finfo(torch.float32).tiny * (1 - 1e-5)


@FEW_EXAMPLES
@given(
    n=st.integers(1, MAX_SIDE),
    k=st.integers(1, MAX_SIDE),
    seed=st.integers(0, 2**31 - 1),
    epsilon=st.floats(0.025, 1.0),
    iterations=st.integers(0, 10),
    masked=st.booleans(),
)
def test_exp_domain_plan_equals_log_domain_plan(n, k, seed, epsilon, iterations, masked):
    scores = cosine_scores(n, k, seed)
    mask = None
    if masked:
        mask = torch.rand(n, generator=torch.Generator().manual_seed(seed)) < 0.7
    assert exp_domain_is_safe(epsilon, 1.0, k)
    fast = sinkhorn_knopp(scores, epsilon, iterations, mask=mask, score_bound=1.0)
    exact = sinkhorn_knopp(scores, epsilon, iterations, mask=mask)
    assert fast.dtype == torch.float32
    assert torch.isfinite(fast).all()
    torch.testing.assert_close(fast, exact, atol=PLAN_TOLERANCE, rtol=0)
    if mask is not None:
        assert (fast[~mask] == 0).all()


@pytest.mark.parametrize("seed", range(3))
def test_exp_domain_at_the_worst_case_scores_near_the_threshold(seed):
    # scores at +-b only (the widest spread the bound allows), epsilon just above the threshold for K
    n, k = 48, 40
    scores = random_scores(n, k, seed, 1.0, "extremes", torch.float32)
    epsilon = min_exp_domain_epsilon(1.0, k) * 1.001
    fast = sinkhorn_knopp(scores, epsilon, 5, score_bound=1.0)
    assert torch.isfinite(fast).all()
    torch.testing.assert_close(fast.sum(dim=1), torch.ones(n), atol=ROW_TOLERANCE, rtol=0)
    torch.testing.assert_close(fast, sinkhorn_knopp(scores, epsilon, 5), atol=PLAN_TOLERANCE, rtol=0)


def test_exp_domain_matches_float64_reference_at_default_epsilon():
    scores = cosine_scores(200, 25, 11)
    for iterations in (1, 3, 30):
        expected = exp_domain_sinkhorn(scores, 0.05, iterations)
        torch.testing.assert_close(
            sinkhorn_knopp(scores, 0.05, iterations, score_bound=1.0).double(), expected, atol=PLAN_TOLERANCE, rtol=0
        )


@pytest.mark.parametrize("iterations", [0, 1, 3])
def test_small_epsilon_with_a_bound_falls_back_to_log_domain(iterations):
    # at epsilon 1e-3 exp(-2/eps) underflows: the bound must not be used, and the plan is the log-domain one
    scores = cosine_scores(64, 20, 12)
    assert not exp_domain_is_safe(1e-3, 1.0, 20)
    q = sinkhorn_knopp(scores, 1e-3, iterations, score_bound=1.0)
    assert torch.isfinite(q).all()
    torch.testing.assert_close(q.sum(dim=1), torch.ones(64), atol=ROW_TOLERANCE, rtol=0)
    assert torch.equal(q, sinkhorn_knopp(scores, 1e-3, iterations))
    # the exp-domain form with the same shift would have produced empty rows here
    kernel = torch.exp((scores - 1.0) / 1e-3)
    assert (kernel.sum(dim=1) == 0).any()


@pytest.mark.parametrize("bound", [None, 1.0])
def test_non_finite_scores_in_masked_rows_do_not_leak(bound):
    scores = cosine_scores(12, 5, 16)
    mask = torch.ones(12, dtype=torch.bool)
    mask[[2, 7]] = False
    poisoned = scores.clone()
    poisoned[2] = float("nan")
    poisoned[7, 1] = float("inf")
    q = sinkhorn_knopp(poisoned, 0.05, 3, mask=mask, score_bound=bound)
    assert torch.isfinite(q).all()
    assert torch.equal(q, sinkhorn_knopp(scores, 0.05, 3, mask=mask, score_bound=bound))


def test_exp_domain_all_rows_masked_gives_zeros():
    scores = cosine_scores(5, 3, 13)
    for iterations in (0, 3):
        q = sinkhorn_knopp(scores, 0.05, iterations, mask=torch.zeros(5, dtype=torch.bool), score_bound=1.0)
        assert torch.equal(q, torch.zeros(5, 3))


def test_exp_domain_under_autocast_and_low_precision_returns_float32():
    scores = cosine_scores(32, 8, 14)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = scores.bfloat16()
        q = sinkhorn_knopp(low, 0.05, 3, score_bound=1.0)
    assert q.dtype == torch.float32
    torch.testing.assert_close(q, sinkhorn_knopp(low.float(), 0.05, 3), atol=PLAN_TOLERANCE, rtol=0)


def test_exp_domain_does_not_modify_the_scores():
    scores = cosine_scores(10, 4, 15)
    before = scores.clone()
    sinkhorn_knopp(scores, 0.05, 3, score_bound=1.0)
    assert torch.equal(scores, before)


@pytest.mark.parametrize("bound", [0.0, -1.0])
def test_non_positive_score_bound_raises(bound):
    with pytest.raises(ValueError, match="score_bound"):
        sinkhorn_knopp(torch.zeros(3, 2), score_bound=bound)
