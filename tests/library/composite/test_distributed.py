"""Two gloo processes, each given half of a batch, must match one process given the whole batch."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from torch_arcad import ArcAD
from torch_arcad.distributed import differentiable_all_reduce_sum, get_world_size, global_means

DIM, K, GRID, BATCH, STEPS = 12, 8, 4, 6, 3
WORLD = 2


def make_data():
    g = torch.Generator().manual_seed(1)
    features = [torch.randn(BATCH, DIM, GRID, GRID, generator=g) for _ in range(STEPS)]
    masks = torch.zeros(BATCH, 16, 16)
    masks[2, 3:9, 2:7] = 1  # one defective image in each half
    masks[5, 8:16, 8:12] = 1
    return features, masks


def make_scores():
    """Patch scores for ``calibrate="missed"``: the highest normal patch is on rank 0 (image 0); rank 1's defect
    (image 5) scores above rank 1's own normal patches but below that global maximum, so it counts as missed only
    when the maximum is taken over both processes; rank 0's defect (image 2) scores above everything (found)."""
    g = torch.Generator().manual_seed(2)
    scores = torch.rand(BATCH, GRID, GRID, generator=g)
    scores[0, 1, 1] = 10.0
    scores[5] = 5.0
    scores[2] = 20.0
    return scores


def call_kwargs(model, rows=slice(None)):
    return {"scores": make_scores()[rows]} if model.config.calibrate == "missed" else {}


def run_steps(model, features, masks, rows=slice(None)):
    """A few training steps; returns per-step losses, assignments, feature grads, parameter grads."""
    records = []
    for step_features in features:
        x = step_features.clone().requires_grad_(True)
        out = model(x, masks=masks, **call_kwargs(model, rows))
        model.zero_grad()
        out.loss.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        if dist.is_initialized():
            for g in grads:
                dist.all_reduce(g)
                g /= dist.get_world_size()
        records.append(
            {
                "loss": out.loss.detach(),
                "terms": torch.stack([out.spm, out.dgc, out.cls]).detach(),
                "calibrated": out.stats["num_calibrated"].clone(),
                "feature_grad": x.grad.clone(),
                "param_grads": grads,
                "prototypes": model.prototypes.prototypes.clone(),
                "buffers": [b.clone().float() for name, b in model.discriminator.named_buffers()],
            }
        )
    return records


def new_model(preset="paper"):
    torch.manual_seed(0)  # identical discriminator weights everywhere
    if preset == "missed":
        return ArcAD(DIM, K, sigma=0.0, init_factor=2, calibrate="missed")
    return ArcAD(DIM, K, preset=preset, sigma=0.0, init_factor=2)


def worker(rank, init_file, out_dir, preset="paper"):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    features, masks = make_data()
    half = BATCH // WORLD
    rows = slice(rank * half, (rank + 1) * half)
    model = new_model(preset)
    if preset == "official":  # BatchNorm in the discriminator: global statistics, as docs/integration.md says
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    records = run_steps(model, [f[rows] for f in features], masks[rows], rows)
    # assignments of this rank's rows under the final prototypes, in eval mode
    z = torch.nn.functional.normalize(features[0][rows].flatten(2).transpose(1, 2).reshape(-1, DIM), dim=1)
    q = model.prototypes.eval()(z).assignments
    # the differentiable sum: value the global sum, gradient the sum of every process's output gradient
    x = torch.full((3,), float(rank + 1), requires_grad=True)
    total = differentiable_all_reduce_sum(x * x)
    (total * (rank + 1)).sum().backward()
    summed = {"value": total.detach(), "grad": x.grad.clone()}
    torch.save({"records": records, "assignments": q, "summed": summed}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()  # no process tears the group down while another still uses it
    dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built")
@pytest.mark.parametrize("preset", ["paper", "official", "missed"])
def test_two_ranks_match_one_process(tmp_path, preset):
    features, masks = make_data()
    reference_model = new_model(preset)
    reference = run_steps(reference_model, features, masks)
    z = torch.nn.functional.normalize(features[0].flatten(2).transpose(1, 2).reshape(-1, DIM), dim=1)
    reference_q = reference_model.prototypes.eval()(z).assignments

    mp.spawn(worker, args=(str(tmp_path / "init"), str(tmp_path), preset), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    patches = BATCH // WORLD * GRID * GRID
    if preset == "missed":  # rank 1's defect is calibrated (global maximum), rank 0's is not
        defect_patches = 2  # masks[5] covers two patches of the 4 x 4 grid
        assert reference[-1]["calibrated"].item() == defect_patches
        calibrated = [ranks[r]["records"][-1]["calibrated"].item() for r in range(WORLD)]
        assert calibrated == [0.0, defect_patches]
    for step, expected in enumerate(reference):
        for r, result in enumerate(ranks):
            got = result["records"][step]
            assert torch.allclose(got["prototypes"], expected["prototypes"], atol=1e-5)
            assert torch.allclose(got["loss"], expected["loss"], atol=1e-5)
            assert torch.allclose(got["terms"], expected["terms"], atol=1e-5)
            for a, b in zip(got["param_grads"], expected["param_grads"]):
                assert torch.allclose(a, b, atol=1e-5)
            for a, b in zip(got["buffers"], expected["buffers"], strict=True):  # BatchNorm running statistics
                assert torch.allclose(a, b, atol=1e-5)
            # each rank's input gradient is world_size times its share (DDP averages parameter gradients)
            half = BATCH // WORLD
            share = expected["feature_grad"][r * half : (r + 1) * half]
            assert torch.allclose(got["feature_grad"] / WORLD, share, atol=1e-5)
        # every rank holds identical prototypes
        assert torch.equal(ranks[0]["records"][step]["prototypes"], ranks[1]["records"][step]["prototypes"])
    for r, result in enumerate(ranks):
        assert torch.allclose(result["assignments"], reference_q[r * patches : (r + 1) * patches], atol=1e-5)
        # sum over ranks of (r + 1)^2 = 1 + 4; d/dx of sum_r' (r' + 1) * total = (1 + 2) * 2x, x = r + 1
        assert torch.equal(result["summed"]["value"], torch.full((3,), 5.0))
        assert torch.equal(result["summed"]["grad"], torch.full((3,), 3.0 * 2 * (r + 1)))


def test_single_process_needs_no_process_group():
    assert get_world_size() == 1
    x = torch.ones(2, requires_grad=True)
    assert differentiable_all_reduce_sum(x) is x
    sums = torch.tensor([3.0, 0.0], requires_grad=True)
    means = global_means(sums, torch.tensor([2.0, 0.0]))
    assert means.tolist() == [1.5, 0.0]
