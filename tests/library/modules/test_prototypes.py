import math

import pytest
import torch
import torch.nn.functional as F

from torch_arcad import SinkhornPrototypes
from torch_arcad.functional import sinkhorn_knopp

from helpers import unit


def ready_module(dim=8, k=4, **kwargs):
    module = SinkhornPrototypes(dim, k, **kwargs)
    module.init_prototypes(unit(64, dim))
    return module


def test_init_prototypes_unit_rows_and_flag():
    module = SinkhornPrototypes(8, 5)
    assert not module.is_ready and not bool(module.initialized)
    module.init_prototypes(torch.randn(50, 8) * 3)
    assert module.is_ready and bool(module.initialized)
    assert torch.allclose(module.prototypes.norm(dim=1), torch.ones(5), atol=1e-5)
    assert torch.unique(module.prototypes, dim=0).shape[0] == 5


def test_loss_uses_pre_update_prototypes_and_ema_moves_toward_target():
    module = ready_module(momentum=0.9)
    before = module.prototypes.clone()
    z = torch.randn(32, 8, requires_grad=True)
    out = module(z)
    zn = F.normalize(z.detach(), dim=1)
    q = sinkhorn_knopp(zn @ before.t(), module.epsilon, module.sinkhorn_iterations)
    logp = torch.log_softmax(zn @ before.t() / module.temperature, dim=1)
    expected_loss = -(q * logp).sum(1).mean()
    assert torch.allclose(out.loss, expected_loss, atol=1e-5)
    assert torch.allclose(out.assignments, q, atol=1e-6)
    assert torch.equal(out.prototypes, before)
    target = F.normalize(q.t() @ zn, dim=1)
    expected = F.normalize(0.9 * before + 0.1 * target, dim=1)
    assert torch.allclose(module.prototypes, expected, atol=1e-5)
    assert int(module.num_updates) == 1
    out.loss.backward()  # the in-place EMA must not break autograd
    assert z.grad is not None and torch.isfinite(z.grad).all()


@pytest.mark.parametrize("epsilon", [0.05, 1e-3])
def test_assignments_are_the_plan_of_the_cosine_scores_with_their_bound(epsilon):
    # the module passes the cosine bound 1: exp-domain plan at 0.05, log-domain plan at 1e-3 (bound too loose)
    module = ready_module(epsilon=epsilon).eval()
    z = torch.randn(40, 8)
    scores = F.normalize(z, dim=1) @ module.prototypes.t()
    out = module(z)
    assert torch.equal(out.assignments, sinkhorn_knopp(scores, epsilon, module.sinkhorn_iterations, score_bound=1.0))
    torch.testing.assert_close(
        out.assignments, sinkhorn_knopp(scores, epsilon, module.sinkhorn_iterations), atol=1e-6, rtol=0
    )
    assert torch.isfinite(out.assignments).all()


def test_eval_mode_does_not_update():
    module = ready_module().eval()
    before = module.prototypes.clone()
    module(torch.randn(16, 8))
    assert torch.equal(module.prototypes, before)
    assert int(module.num_updates) == 0


def test_prototypes_are_buffers_not_parameters():
    module = ready_module()
    assert list(module.parameters()) == []
    out = module(torch.randn(16, 8, requires_grad=True))
    out.loss.backward()
    assert module.prototypes.grad is None


def test_non_finite_features_leave_prototypes_unchanged():
    module = ready_module()
    before = module.prototypes.clone()
    z = torch.randn(16, 8)
    z[3, 2] = float("nan")
    module(z)
    z = torch.randn(16, 8)
    z[0, 0] = float("inf")
    module(z)
    assert torch.equal(module.prototypes, before)
    assert int(module.num_updates) == 0


def test_auto_init_buffers_batches_and_gives_zero_loss_meanwhile():
    module = SinkhornPrototypes(8, 10, init_factor=3)  # waits for 30 features
    z1 = torch.randn(12, 8, requires_grad=True)
    out = module(z1)
    assert not module.is_ready
    assert out.loss.item() == 0.0
    out.loss.backward()  # a zero that is still connected to the graph
    assert torch.equal(z1.grad, torch.zeros_like(z1))
    assert torch.allclose(out.assignments, torch.full((12, 10), 0.1))
    module(torch.randn(12, 8))
    assert not module.is_ready
    out = module(torch.randn(12, 8))  # 36 >= 30: initialises, then trains on this batch
    assert module.is_ready
    assert out.loss.item() > 0
    assert torch.unique(module.prototypes, dim=0).shape[0] == 10


def test_auto_init_ignores_masked_and_non_finite_rows():
    module = SinkhornPrototypes(4, 2, init_factor=2)  # waits for 4 features
    z = torch.randn(6, 4)
    z[0] = float("nan")
    mask = torch.tensor([True, True, True, False, False, False])
    module(z, mask=mask)  # 2 usable rows
    assert not module.is_ready
    module(torch.randn(2, 4))
    assert module.is_ready
    assert torch.isfinite(module.prototypes).all()


def test_eval_mode_does_not_initialise():
    module = SinkhornPrototypes(4, 2).eval()
    module(torch.randn(100, 4))
    assert not module.is_ready


def test_mask_rows_get_zero_assignment_and_no_loss():
    module = ready_module()
    z = torch.randn(10, 8)
    mask = torch.arange(10) < 6
    out = module.eval()(z, mask=mask)
    assert torch.equal(out.assignments[6:], torch.zeros(4, 4))
    reference = module(z[:6])
    assert torch.allclose(out.loss, reference.loss, atol=1e-6)
    assert torch.allclose(out.assignments[:6], reference.assignments, atol=1e-6)


def test_all_rows_masked_gives_zero_loss_and_no_move():
    module = ready_module()
    before = module.prototypes.clone()
    out = module(torch.randn(10, 8), mask=torch.zeros(10, dtype=torch.bool))
    assert out.loss.item() == 0.0
    assert torch.allclose(module.prototypes, before)


def test_state_dict_round_trip_resumes_exactly():
    module = ready_module()
    for _ in range(3):
        module(torch.randn(16, 8))
    state = module.state_dict()
    assert set(state) == {"prototypes", "initialized", "num_updates"}
    fresh = SinkhornPrototypes(8, 4)
    fresh.load_state_dict(state)
    assert fresh.is_ready
    assert int(fresh.num_updates) == 3
    z = torch.randn(16, 8)
    a, b = module(z), fresh(z)
    assert torch.equal(a.loss, b.loss)
    assert torch.equal(module.prototypes, fresh.prototypes)


def test_state_dict_loaded_into_parent_refreshes_flag():
    parent = torch.nn.Sequential(ready_module())
    fresh = torch.nn.Sequential(SinkhornPrototypes(8, 4))
    fresh.load_state_dict(parent.state_dict())
    assert fresh[0].is_ready


def test_bad_input():
    module = ready_module()
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        module(torch.randn(2, 3, 8))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        module(torch.randn(5, 7))
    with pytest.raises(ValueError, match=r"\(N,\)"):
        module(torch.randn(5, 8), mask=torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="at least K"):
        SinkhornPrototypes(8, 10).init_prototypes(torch.randn(5, 8))
    with pytest.raises(ValueError, match="finite"):
        SinkhornPrototypes(2, 1).init_prototypes(torch.tensor([[float("nan"), 1.0]]))
    with pytest.raises(ValueError):
        SinkhornPrototypes(8, 4, momentum=1.5)
    with pytest.raises(ValueError):
        SinkhornPrototypes(8, 4, temperature=0)


def test_batch_of_one_row():
    module = ready_module()
    out = module(torch.randn(1, 8, requires_grad=True))
    assert torch.isfinite(out.loss)
    assert math.isclose(out.assignments.sum().item(), 1.0, rel_tol=1e-5)


@pytest.mark.parametrize("rows", [3, 4, 5, 9])
def test_few_rows_softmax_fallback(rows):
    # K = 4: with at most 4 taking-part rows the plan is softmax(S / epsilon) per row, with more it is Sinkhorn
    module = ready_module(few_rows="softmax")
    mu = module.prototypes.clone()
    z = unit(rows + 2, 8)
    mask = torch.ones(rows + 2, dtype=torch.bool)
    mask[:2] = False
    q = module(z, mask=mask).assignments
    scores = z[2:] @ mu.t()
    if rows <= 4:
        expected = torch.softmax(scores / module.epsilon, dim=1)
    else:
        expected = sinkhorn_knopp(scores, module.epsilon, module.sinkhorn_iterations)
    assert torch.allclose(q[2:], expected, atol=1e-6)
    assert not q[:2].any()
    # the default keeps Sinkhorn whatever the count
    default = ready_module()
    default.prototypes.copy_(mu)
    assert torch.allclose(
        default(z, mask=mask).assignments[2:],
        sinkhorn_knopp(scores, module.epsilon, module.sinkhorn_iterations),
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="few_rows"):
        SinkhornPrototypes(8, 4, few_rows="argmax")
