"""``preset="official"`` against a transcription of the authors' released training step.

``released_step`` below re-states, in plain PyTorch, what one iteration of the released training loop (the
Dinomaly multi-class script and its prototype learner) does with a batch: boolean selection of the normal and the
defective images, Sinkhorn in the exp domain (or ``softmax(S / epsilon)`` when the normal patches are no more
than K), the EMA update before synthesis, three train-mode discriminator calls, the max-pooled raw mask, and the
pool synthesised from the prototypes when the batch has no normal image. It uses nothing of the library but the
starting prototypes and the discriminator's weights, which both sides share, as they share the features and the
synthesis noise. Every comparison runs with the discriminator in training mode, over two steps.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torch_arcad import ArcAD, get_preset

DIM, GRID, SIZE = 16, 4, 32
PATCHES = GRID * GRID
SIGMA = 0.1  # larger than the released 0.015 so that the candidate choice depends on the prototypes
CANDIDATES = 50
TAU, EPSILON, ITERATIONS, MOMENTUM, LAMBDA = 0.1, 0.05, 3, 0.99, 0.1
ALPHA, GAMMA = 0.75, 2.0
RELATIVE = 1e-5


# ----------------------------------------------------------------------------------------------------------------
# The released training step, transcribed.


def released_sinkhorn(logits: torch.Tensor) -> torch.Tensor:
    """SwAV-style Sinkhorn in the exp domain: (N, K) scores -> (N, K) plan with rows summing to 1."""
    q = torch.exp(logits / EPSILON).t()  # (K, N)
    k, n = q.shape
    q = q / q.sum()
    for _ in range(ITERATIONS):
        q = q / q.sum(dim=1, keepdim=True) / k
        q = q / q.sum(dim=0, keepdim=True) / n
    return (q * n).t()


def released_focal(logits: torch.Tensor, target: float) -> torch.Tensor:
    targets = torch.full_like(logits, target)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    pt = torch.exp(-bce)
    alpha_t = ALPHA * targets + (1 - ALPHA) * (1 - targets)
    return (alpha_t * (1 - pt) ** GAMMA * bce).mean()


def released_augment(x: torch.Tensor, prototypes: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Per anchor, of CANDIDATES noisy copies on the sphere the one whose nearest prototype is least similar."""
    n, c, d = noise.shape
    candidates = F.normalize(x.unsqueeze(1).expand(n, c, d) + SIGMA * noise, dim=2)
    nearest = (candidates.reshape(n * c, d) @ F.normalize(prototypes, dim=1).t()).amax(dim=1).view(n, c)
    return candidates[torch.arange(n), nearest.argmin(dim=1)]


def released_step(features, masks, labels, prototypes, disc, noise, pool_noise):
    """One iteration: returns the terms (with graph) and the updated prototypes.

    features (B, D, h, w) maps; masks (B, 1, H, W) soft masks; labels (B,); prototypes (K, D);
    disc: the Linear-BatchNorm-LeakyReLU-Linear discriminator (train mode); noise (B * h * w, C, D) and
    pool_noise (K, C, D) standard normal draws.
    """
    batch = features.shape[0]
    x = features.flatten(2).transpose(1, 2)  # (B, P, D)
    k = prototypes.shape[0]
    normal_idx = (labels == 0).nonzero(as_tuple=True)[0]
    anom_idx = (labels == 1).nonzero(as_tuple=True)[0]
    mu = prototypes.clone()
    spm = cls = dgc = torch.zeros(())
    pool = None
    if len(normal_idx) > 0:
        xn = F.normalize(x[normal_idx].reshape(-1, DIM), dim=1)
        logits = xn @ F.normalize(mu, dim=1).t()
        with torch.no_grad():
            q = released_sinkhorn(logits) if xn.shape[0] > k else F.softmax(logits / EPSILON, dim=1)
        spm = -torch.mean(torch.sum(q * F.log_softmax(logits / TAU, dim=1), dim=1))
        with torch.no_grad():  # EMA before synthesis
            target = F.normalize(q.t() @ xn, dim=1)
            mu = F.normalize(mu * MOMENTUM + target * (1 - MOMENTUM), dim=1)
        loss_real = released_focal(disc(xn), 0.0)
        fake = released_augment(xn, mu, noise.view(batch, PATCHES, CANDIDATES, DIM)[normal_idx].flatten(0, 1))
        pool = fake.detach()
        loss_fake = released_focal(disc(fake), 1.0)
        cls = cls + 0.5 * (loss_real + loss_fake)
    if len(anom_idx) > 0:
        xa = F.normalize(x[anom_idx].reshape(-1, DIM), dim=1)
        cls = cls + released_focal(disc(xa), 1.0)
        if pool is None:
            temp = F.normalize(mu, dim=1)
            pool = released_augment(temp, mu, pool_noise).detach()
        mask = masks[anom_idx]
        down = F.adaptive_max_pool2d(mask, (GRID, GRID)) if mask.shape[-1] != GRID else mask
        anchors = x[anom_idx].reshape(-1, DIM)[down.reshape(-1) > 0]
        if anchors.shape[0] > 0:
            a = F.normalize(anchors, dim=1)
            push = F.relu((a @ F.normalize(mu, dim=1).t()).amax(dim=1)).mean()
            pull = (1.0 - (a @ F.normalize(pool, dim=1).t()).mean(dim=1)).mean()
            dgc = push + pull
    total = LAMBDA * spm + LAMBDA * cls + LAMBDA * dgc
    return {"spm": spm, "dgc": dgc, "cls": cls, "loss": total}, mu


# ----------------------------------------------------------------------------------------------------------------
# Batches.


def rectangle_masks(labels, generator):
    masks = torch.zeros(len(labels), 1, SIZE, SIZE)
    for i, label in enumerate(labels.tolist()):
        if label:
            top, left = torch.randint(0, SIZE - 12, (2,), generator=generator).tolist()
            masks[i, 0, top : top + 10, left : left + 7] = 1
    return masks


def soft_masks(labels, generator):
    """Binary 8 x 8 masks resized bilinearly to SIZE, as a data loader resizes them: soft edges."""
    coarse = torch.zeros(len(labels), 1, 8, 8)
    for i, label in enumerate(labels.tolist()):
        if label:
            coarse[i, 0, 2:4, 2 + i % 3 : 5 + i % 3] = 1
    return F.interpolate(coarse, size=(SIZE, SIZE), mode="bilinear", align_corners=False)


CASES = {
    # name: (labels, K, mask maker)
    "ordinary": ([0, 1, 0, 1], 8, rectangle_masks),
    "soft_masks": ([1, 0, 0, 1], 8, soft_masks),
    "all_defective": ([1, 1], 8, rectangle_masks),
    "fewer_normal_patches_than_prototypes": ([1, 0, 1], 20, rectangle_masks),
    "all_normal": ([0, 0, 0], 8, rectangle_masks),
}
STEPS = 2


def make_model(k, preset="official"):
    torch.manual_seed(0)
    model = ArcAD(DIM, k, preset=preset, sigma=SIGMA)
    model.prototypes.init_prototypes(torch.randn(64, DIM) + 0.5)
    return model.train()


def released_discriminator(model):
    """A separate Linear-BatchNorm-LeakyReLU-Linear with the model's weights and BatchNorm buffers."""
    hidden = model.discriminator.net[0].out_features
    disc = nn.Sequential(nn.Linear(DIM, hidden), nn.BatchNorm1d(hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1, bias=False))
    disc.load_state_dict(model.discriminator.net.state_dict())
    return disc.train()


def relative_error(got: torch.Tensor, want: torch.Tensor, scale: float | None = None) -> float:
    """Largest absolute difference relative to the largest magnitude of ``want`` (or to ``scale``)."""
    scale = want.detach().abs().max().item() if scale is None else scale
    return (got.detach() - want.detach()).abs().max().item() / max(scale, 1e-12)


def compare(case, preset="official"):
    """Run STEPS steps of the library and of the transcription; return the worst relative error of each quantity."""
    labels_list, k, make_masks = CASES[case]
    labels = torch.tensor(labels_list)
    data = torch.Generator().manual_seed(3)
    model = make_model(k, preset)
    disc = released_discriminator(model)
    prototypes = model.prototypes.prototypes.clone()
    library_rng = torch.Generator().manual_seed(11)
    test_rng = torch.Generator().manual_seed(11)
    errors: dict[str, float] = {}

    def record(name, got, want, scale=None):
        errors[name] = max(errors.get(name, 0.0), relative_error(got, want, scale))

    for _ in range(STEPS):
        features = torch.randn(len(labels), DIM, GRID, GRID, generator=data) + 0.5
        masks = make_masks(labels, data)
        # The library draws the candidates' noise for every patch in batch order, then the prototype pool's.
        noise = torch.randn((len(labels) * PATCHES, CANDIDATES, DIM), generator=test_rng)
        pool_noise = torch.randn((k, CANDIDATES, DIM), generator=test_rng)

        mine = features.clone().requires_grad_(True)
        out = model(mine, masks=masks, labels=labels, generator=library_rng)
        model.zero_grad()
        out.loss.backward()

        theirs = features.clone().requires_grad_(True)
        disc.zero_grad()
        want, prototypes = released_step(theirs, masks, labels, prototypes, disc, noise, pool_noise)
        want["loss"].backward()

        for name in ("spm", "dgc", "cls", "loss"):
            record(name, getattr(out, name), want[name])
        record("feature_grad", mine.grad, theirs.grad)
        record("prototypes", model.prototypes.prototypes, prototypes)
        # The first layer's bias has an exactly zero gradient (BatchNorm subtracts each group's mean), so the
        # parameter gradients are compared relative to the largest of them, not each to itself.
        scale = max(q.grad.abs().max().item() for q in disc.parameters())
        for (name, p), q in zip(model.discriminator.net.named_parameters(), disc.parameters(), strict=True):
            record(f"grad {name}", p.grad, q.grad, scale)
        norm, reference_norm = model.discriminator.net[1], disc[1]
        record("running_mean", norm.running_mean, reference_norm.running_mean)
        record("running_var", norm.running_var, reference_norm.running_var)
        record("num_batches_tracked", norm.num_batches_tracked.float(), reference_norm.num_batches_tracked.float())
    return errors


@pytest.mark.parametrize("case", list(CASES))
def test_official_preset_matches_the_released_step(case):
    errors = compare(case)
    worst = {name: err for name, err in errors.items() if err > RELATIVE}
    assert not worst, worst


def test_soft_masks_mark_more_patches_than_binarised_ones():
    labels = torch.tensor(CASES["soft_masks"][0])
    masks = soft_masks(labels, None)
    assert ((masks > 0) & (masks < 1)).any()
    raw = (F.adaptive_max_pool2d(masks, GRID) > 0).sum()
    binarised = (F.adaptive_max_pool2d((masks > 0.5).float(), GRID) > 0).sum()
    assert raw > binarised
    official = make_model(8)(torch.randn(4, DIM, GRID, GRID), masks=masks, labels=labels)
    paper = make_model(8, "paper")(torch.randn(4, DIM, GRID, GRID), masks=masks, labels=labels)
    assert official.stats["num_anomalous"] == raw and paper.stats["num_anomalous"] == binarised


# Each official setting, switched back to the paper's value, must make some comparison fail: the cases above
# see every point (except the initialisation, which the transcription shares and which is tested on its own).
SENSITIVE = {
    "mask_level": (0.5, "soft_masks"),
    "few_patch_assignment": ("sinkhorn", "fewer_normal_patches_than_prototypes"),
    "ema_before_synthesis": (False, "ordinary"),
    "pool_without_normals": ("none", "all_defective"),
    "discriminator_batches": ("joint", "ordinary"),
}


@pytest.mark.parametrize("setting", list(SENSITIVE))
def test_each_point_is_seen_by_the_comparison(setting):
    value, case = SENSITIVE[setting]
    errors = compare(case, get_preset("official", **{setting: value}))
    assert max(errors[name] for name in ("spm", "dgc", "cls", "loss", "feature_grad")) > 100 * RELATIVE


def test_discriminator_initialisation():
    torch.manual_seed(0)
    official = ArcAD(96, 8, preset="official").discriminator
    linears = [m for m in official.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 2
    weights = torch.cat([m.weight.flatten() for m in linears])
    assert weights.abs().max() <= 0.03
    # a normal of std 0.01 truncated at 3 std has std 0.01 * 0.9866
    assert abs(weights.std().item() - 0.00987) < 5e-4
    assert all(m.bias is None or not m.bias.any() for m in linears)
    paper = ArcAD(96, 8).discriminator
    assert max(m.weight.abs().max() for m in paper.modules() if isinstance(m, nn.Linear)) > 0.03


def test_official_loss_path_has_no_graph_break():
    # every point is taken on the device (weights, torch.where), so the step traces as one graph
    model = make_model(8)
    masks = soft_masks(torch.tensor([1, 0, 0, 1]), None)

    def forward(x, masks, labels):
        return model(x, masks=masks, labels=labels).loss

    explanation = torch._dynamo.explain(forward)(torch.randn(4, DIM, GRID, GRID), masks, torch.tensor([1, 0, 0, 1]))
    assert explanation.graph_break_count == 0, [str(r.reason) for r in explanation.break_reasons]
