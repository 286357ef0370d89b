"""The speed benchmark in its quick mode, and its literal transcription (benchmarks/reference.py) against the library."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from benchmarks import measure, reference, speed, workload
from benchmarks.comparisons import ERROR_RTOL
from torch_arcad.functional import sinkhorn_knopp


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "results.json"
    returned = speed.main(["--quick", "--out", str(out)])
    return returned, json.loads(out.read_text())


def test_quick_run_writes_json_with_expected_keys(quick_results):
    returned, written = quick_results
    assert set(written) >= {
        "environment",
        "settings",
        "problem",
        "agreement",
        "dinomaly",
        "ratios",
        "sinkhorn_vs_swav",
        "sinkhorn_vs_pot",
        "sweeps",
        "targets",
    }
    assert written["settings"]["quick"] is True
    assert written["problem"]["num_patches"] == workload.QUICK.num_patches
    assert set(written["dinomaly"]) == {"arcad_ncand50", "literal_ncand50", "arcad_ncand5", "literal_ncand5"}
    for entry in written["dinomaly"].values():
        assert "error" not in entry
        assert entry["time_s"] > 0 and math.isfinite(entry["time_s"])
        assert entry["peak_bytes"] >= 0
    for key, sizes in (("N", 3), ("K", 3)):
        sweep = written["sweeps"][key]
        assert len(sweep["sizes"]) == sizes == len(sweep["time_s"])
        assert math.isfinite(sweep["exponent"])
    assert all(isinstance(target["met"], bool) for target in written["targets"].values())
    pot = written["sinkhorn_vs_pot"]
    assert "skipped" in pot or pot["ours_column_error"] <= pot["pot_column_error"] * (1 + ERROR_RTOL)
    # what main() returns is what it wrote
    assert json.loads(json.dumps(returned)) == written


def test_quick_run_agreement_with_literal_transcription(quick_results):
    agreement = quick_results[1]["agreement"]
    assert agreement["sigma_zero"]["passed"]
    assert agreement["sigma_paper"]["roughly_equal"]
    assert agreement["sinkhorn"]["converged_plan_max_abs_diff"] < 1e-4
    # the library's exp-domain path runs SwAV's iteration: equal plans after the preset's 3 rounds as well
    assert agreement["sinkhorn"]["plan_max_abs_diff"] < 1e-6


def test_quick_run_compares_the_sinkhorn_with_the_swav_loop(quick_results):
    swav = quick_results[1]["sinkhorn_vs_swav"]
    assert swav["shape"] == [workload.QUICK.num_patches, workload.QUICK.num_prototypes]
    assert swav["exp_vs_swav_max_abs_diff"] < 1e-6
    assert swav["exp_vs_log_max_abs_diff"] < 1e-6
    for key in ("exp_time_s", "log_time_s", "swav_time_s"):
        assert swav[key] > 0 and math.isfinite(swav[key])
    assert swav["exp_over_swav"] == pytest.approx(swav["exp_time_s"] / swav["swav_time_s"])


def test_sinkhorn_only_runs_just_the_sinkhorn_comparisons(tmp_path):
    out = tmp_path / "sinkhorn.json"
    speed.main(["--quick", "--sinkhorn-only", "--out", str(out)])
    written = json.loads(out.read_text())
    assert {"sinkhorn_vs_swav", "sinkhorn_vs_pot", "targets"} <= set(written)
    assert not {"agreement", "dinomaly", "sweeps"} & set(written)
    assert list(written["targets"]) == ["Sinkhorn time / SwAV loop"]


def test_literal_sinkhorn_is_balanced_after_many_iterations():
    generator = torch.Generator().manual_seed(0)
    scores = F.normalize(torch.randn(60, 8, generator=generator), dim=1) @ F.normalize(
        torch.randn(5, 8, generator=generator), dim=1
    ).t()
    q = reference.literal_sinkhorn(scores, 0.05, 500)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(60), atol=1e-5, rtol=0)
    torch.testing.assert_close(q.sum(dim=0), torch.full((5,), 60 / 5), atol=1e-3, rtol=0)


def test_literal_sinkhorn_matches_library_iterates():
    generator = torch.Generator().manual_seed(1)
    scores = torch.rand(40, 7, generator=generator) * 2 - 1
    for iterations in (1, 3, 10):
        literal = reference.literal_sinkhorn(scores, 0.1, iterations)
        torch.testing.assert_close(literal, sinkhorn_knopp(scores, 0.1, iterations), atol=1e-5, rtol=1e-4)
        fast = sinkhorn_knopp(scores, 0.1, iterations, score_bound=1.0)
        torch.testing.assert_close(literal, fast, atol=1e-6, rtol=0)


def test_literal_step_equals_arcad_at_sigma_zero():
    # the transcription and the library on the same batch, prototypes and discriminator: the same terms
    problem = workload.QUICK
    inputs = workload.make_inputs(problem)
    arcad = workload.arcad_module(problem, inputs, workload.CANDIDATES_PAPER, 0.0, torch.device("cpu"))
    discriminator = reference.literal_discriminator(problem.dim)
    discriminator.load_state_dict(arcad.discriminator.net.state_dict())
    ours = arcad(inputs.features, masks=inputs.masks, labels=inputs.labels)
    literal = reference.literal_arcad_step(
        inputs.features,
        inputs.masks,
        inputs.labels,
        inputs.prototypes,
        discriminator,
        num_candidates=workload.CANDIDATES_PAPER,
        sigma=0.0,
        prefix_tokens=problem.prefix_tokens,
    )
    for term in ("loss", "spm", "dgc", "cls"):
        torch.testing.assert_close(getattr(ours, term), getattr(literal, term), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(arcad.prototypes.prototypes, literal.prototypes, atol=1e-5, rtol=0)


def test_literal_focal_loss_matches_direct_formula():
    logits = torch.tensor([-3.0, -0.5, 0.0, 0.7, 4.0])
    targets = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0])
    p = torch.sigmoid(logits)
    pt = torch.where(targets == 1, p, 1 - p)
    alpha_t = torch.where(targets == 1, torch.tensor(0.75), torch.tensor(0.25))
    expected = -alpha_t * (1 - pt) ** 2 * torch.log(pt)
    torch.testing.assert_close(reference.literal_focal_loss(logits, targets, 0.75, 2.0), expected)


def test_fit_exponent_recovers_power_law():
    sizes = [100.0, 300.0, 1000.0, 5000.0]
    assert measure.fit_exponent(sizes, [2.5 * s**1.5 for s in sizes]) == pytest.approx(1.5)
    assert measure.fit_exponent(sizes, [7.0 for _ in sizes]) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="at least two"):
        measure.fit_exponent([1.0], [1.0])
    with pytest.raises(ValueError, match="equal"):
        measure.fit_exponent([3.0, 3.0], [1.0, 2.0])


def test_peak_memory_sees_a_known_allocation():
    elements = 1 << 22  # 16 MiB of float32

    def step() -> None:
        x = torch.ones(elements)
        y = x * 2
        del x, y

    memory = measure.peak_memory(step, torch.device("cpu"))
    assert memory["peak_bytes"] >= 2 * elements * 4 * 0.99
    assert memory["peak_bytes"] < 3 * elements * 4


def test_make_inputs_defect_covers_about_a_tenth():
    inputs = workload.make_inputs(workload.QUICK)
    assert inputs.features.shape == (2, workload.QUICK.prefix_tokens + 256, workload.QUICK.dim)
    assert inputs.labels.tolist() == [0, 1]
    area = inputs.masks[1].mean().item()
    assert abs(area - workload.DEFECT_AREA) < 0.02
    assert inputs.masks[0].sum() == 0
    torch.testing.assert_close(inputs.prototypes.norm(dim=1), torch.ones(workload.QUICK.num_prototypes))
