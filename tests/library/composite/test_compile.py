"""torch.compile of a training step that calls ArcAD gives the eager result."""

import copy

import pytest
import torch

from torch_arcad import ArcAD

DIM, K = 16, 6


def make_step(model, bottleneck):
    def step(x, masks, scores=None):
        out = model(bottleneck(x), masks=masks, scores=scores)
        out.loss.backward()
        return out.loss.detach(), out.spm.detach(), out.dgc.detach(), out.cls.detach()

    return step


# aot_eager traces the same graphs as inductor (forward, backward, the in-place prototype update) without the
# C++ code generation, which takes over 30 s on a 2-core CPU; docs/performance.md records an inductor run.
@pytest.mark.parametrize("preset", ["paper", "official", "missed"])
def test_compiled_step_matches_eager(preset):
    torch.manual_seed(0)
    if preset == "missed":
        model = ArcAD(DIM, K, sigma=0.0, calibrate="missed")
    else:
        model = ArcAD(DIM, K, preset=preset, sigma=0.0)
    model.prototypes.init_prototypes(torch.randn(64, DIM))
    bottleneck = torch.nn.Conv2d(DIM, DIM, 1)
    eager_model, eager_bottleneck = copy.deepcopy(model), copy.deepcopy(bottleneck)
    compiled = torch.compile(make_step(model, bottleneck), backend="aot_eager", fullgraph=False)
    eager = make_step(eager_model, eager_bottleneck)
    masks = torch.zeros(4, 32, 32)
    masks[3, 4:14, 6:20] = 1
    for _ in range(3):
        x = torch.randn(4, DIM, 4, 4)
        scores = torch.rand(4, 8, 8)
        scores[3, :4] += 0.5  # the defect's first row of patches is found, the second missed
        for a, b in zip(compiled(x, masks, scores), eager(x, masks, scores)):
            assert torch.allclose(a, b, atol=1e-5)
        assert torch.allclose(model.prototypes.prototypes, eager_model.prototypes.prototypes, atol=1e-5)
        for p, q in zip(list(model.parameters()) + list(bottleneck.parameters()),
                        list(eager_model.parameters()) + list(eager_bottleneck.parameters())):
            assert torch.allclose(p.grad, q.grad, atol=1e-5)
    assert int(model.prototypes.num_updates) == 3


@pytest.mark.parametrize("calibrate", ["all", "missed"])
def test_loss_path_has_no_graph_break(calibrate):
    torch.manual_seed(0)
    model = ArcAD(DIM, K, sigma=0.0, calibrate=calibrate)
    model.prototypes.init_prototypes(torch.randn(64, DIM))
    masks = torch.zeros(4, 32, 32)
    masks[3, 4:14, 6:20] = 1

    def forward(x, masks, scores):
        return model(x, masks=masks, scores=scores).loss

    explanation = torch._dynamo.explain(forward)(torch.randn(4, DIM, 4, 4), masks, torch.rand(4, 8, 8))
    assert explanation.graph_break_count == 0, [str(r.reason) for r in explanation.break_reasons]
