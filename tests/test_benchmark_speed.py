from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from torch_arcad.functional import sinkhorn_knopp

SPEED_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "speed.py"


def _load_speed():
    """Import benchmarks/speed.py by path, so the test does not depend on the benchmarks folder being on sys.path."""
    name = "_arcad_benchmark_speed"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, SPEED_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


speed = _load_speed()


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
        "sinkhorn_vs_pot",
        "sweeps",
        "targets",
    }
    assert written["settings"]["quick"] is True
    assert written["problem"]["num_patches"] == speed.QUICK.num_patches
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
    assert "skipped" in pot or pot["ours_column_error"] <= pot["pot_column_error"] * (1 + speed.ERROR_RTOL)
    # what main() returns is what it wrote
    assert json.loads(json.dumps(returned)) == written


def test_quick_run_agreement_with_literal_transcription(quick_results):
    agreement = quick_results[1]["agreement"]
    assert agreement["sigma_zero"]["passed"]
    assert agreement["sigma_paper"]["roughly_equal"]
    assert agreement["sinkhorn"]["converged_plan_max_abs_diff"] < 1e-4


def test_literal_sinkhorn_is_balanced_after_many_iterations():
    generator = torch.Generator().manual_seed(0)
    scores = F.normalize(torch.randn(60, 8, generator=generator), dim=1) @ F.normalize(
        torch.randn(5, 8, generator=generator), dim=1
    ).t()
    q = speed.literal_sinkhorn(scores, 0.05, 500)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(60), atol=1e-5, rtol=0)
    torch.testing.assert_close(q.sum(dim=0), torch.full((5,), 60 / 5), atol=1e-3, rtol=0)


def test_literal_sinkhorn_matches_library_iterates():
    generator = torch.Generator().manual_seed(1)
    scores = torch.rand(40, 7, generator=generator) * 2 - 1
    for iterations in (1, 3, 10):
        literal = speed.literal_sinkhorn(scores, 0.1, iterations)
        torch.testing.assert_close(literal, sinkhorn_knopp(scores, 0.1, iterations), atol=1e-5, rtol=1e-4)


def test_literal_focal_loss_matches_direct_formula():
    logits = torch.tensor([-3.0, -0.5, 0.0, 0.7, 4.0])
    targets = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0])
    p = torch.sigmoid(logits)
    pt = torch.where(targets == 1, p, 1 - p)
    alpha_t = torch.where(targets == 1, torch.tensor(0.75), torch.tensor(0.25))
    expected = -alpha_t * (1 - pt) ** 2 * torch.log(pt)
    torch.testing.assert_close(speed.literal_focal_loss(logits, targets, 0.75, 2.0), expected)


def test_fit_exponent_recovers_power_law():
    sizes = [100.0, 300.0, 1000.0, 5000.0]
    assert speed.fit_exponent(sizes, [2.5 * s**1.5 for s in sizes]) == pytest.approx(1.5)
    assert speed.fit_exponent(sizes, [7.0 for _ in sizes]) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="at least two"):
        speed.fit_exponent([1.0], [1.0])
    with pytest.raises(ValueError, match="equal"):
        speed.fit_exponent([3.0, 3.0], [1.0, 2.0])


def test_peak_memory_sees_a_known_allocation():
    elements = 1 << 22  # 16 MiB of float32

    def step() -> None:
        x = torch.ones(elements)
        y = x * 2
        del x, y

    memory = speed.peak_memory(step, torch.device("cpu"))
    assert memory["peak_bytes"] >= 2 * elements * 4 * 0.99
    assert memory["peak_bytes"] < 3 * elements * 4


def test_make_inputs_defect_covers_about_a_tenth():
    inputs = speed.make_inputs(speed.QUICK)
    assert inputs.features.shape == (2, speed.QUICK.prefix_tokens + 256, speed.QUICK.dim)
    assert inputs.labels.tolist() == [0, 1]
    area = inputs.masks[1].mean().item()
    assert abs(area - speed.DEFECT_AREA) < 0.02
    assert inputs.masks[0].sum() == 0
    torch.testing.assert_close(inputs.prototypes.norm(dim=1), torch.ones(speed.QUICK.num_prototypes))
