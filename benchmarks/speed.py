"""Speed and memory of :class:`torch_arcad.ArcAD` against a literal transcription of the paper's eq. 3-9.

Usage::

    python benchmarks/speed.py [--quick] [--device cpu|cuda] [--out results.json]

What it measures:

1. Agreement: the literal transcription below and ``ArcAD`` compute the same terms. With ``sigma = 0`` every
   candidate equals its anchor, so both must give the same losses, prototypes after the EMA step and gradients
   to float32 rounding; with the paper's sigma only the random draws differ (reported side by side).
2. The Dinomaly-sized step (16 images x 784 patches, D = 768, K = 500, one defective image with a defect over
   about 10 % of it): forward + backward time (median of several repeats after warm-up) and peak memory of
   ``ArcAD`` and of the literal transcription, at N_cand 50 (released code) and 5 (paper). Each configuration
   runs in a fresh subprocess so that its peak is its own.
3. ``sinkhorn_knopp`` against POT's ``ot.bregman.sinkhorn_log`` (optional) at equal column-marginal error.
4. Sweeps over the number of patches N and of prototypes K, with the fitted exponent of time ~ size^p.

Peak memory is the largest amount of memory held during one forward + backward beyond what was held before it
(inputs, module and prototypes are not counted). On CUDA: ``torch.cuda.max_memory_allocated`` after
``reset_peak_memory_stats``. On CPU, ``tracemalloc`` does not see torch's allocations; the running total of the
allocations and frees that ``torch.profiler`` (``profile_memory=True``) records during the call is used instead,
which is the CPU counterpart of the CUDA number. Beside it the growth of the process's resident-set high-water mark
is reported (``peak_rss_bytes``; reset through ``/proc/self/clear_refs`` where Linux allows it): it also counts
allocator overhead and library pages first touched by the call. The measured call is the first full-size one,
after a tiny call that loads the math libraries.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

try:
    import torch_arcad
except ImportError:  # run as a script from a source checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import torch_arcad

from torch_arcad import ArcAD, get_preset
from torch_arcad.functional import sinkhorn_knopp

__all__ = [
    "Problem",
    "Inputs",
    "LiteralOutput",
    "DINOMALY",
    "QUICK",
    "make_inputs",
    "literal_sinkhorn",
    "literal_focal_loss",
    "literal_discriminator",
    "literal_arcad_step",
    "build_step",
    "measure_configuration",
    "check_agreement",
    "peak_memory",
    "time_calls",
    "count_host_syncs",
    "fit_exponent",
    "compare_with_pot",
    "main",
]

PAPER = get_preset("paper")
#: eq. 10 weights (lambda_1 = lambda_2 = lambda_3).
LAMBDA = 0.1
#: Dinomaly: 392 px crop, ViT-B/14, 28 x 28 patches, CLS + 4 register tokens in front.
DINOMALY_GRID = 28
DINOMALY_PATCH_PIXELS = 14
DINOMALY_PREFIX_TOKENS = 5
#: Fraction of a defective image covered by its defect mask.
DEFECT_AREA = 0.10
#: Synthetic features: unit directions around this many modes, plus isotropic noise of about unit length.
NUM_MODES = 64
FEATURE_NOISE = 1.0
#: Discriminator widths of the library (Linear(D, D / 1.5) - LeakyReLU(0.2) - Linear(., 1, bias=False)).
HIDDEN_RATIO = 1.5
NEGATIVE_SLOPE = 0.2
#: The two candidate counts compared: released code and paper.
CANDIDATES_OFFICIAL = 50
CANDIDATES_PAPER = PAPER.num_candidates
#: Agreement tolerances (float32, different reduction orders).
LOSS_RTOL = 1e-4
LOSS_ATOL = 1e-5
GRAD_RTOL = 1e-3
#: "roughly equal" at sigma > 0, where only the random draws differ.
ROUGH_RTOL = 0.05
#: Targets of the issue.
MEMORY_TARGET = 5.0
SPEED_TARGET = 2.0
#: Fitted exponent up to which growth counts as linear (or better).
LINEAR_EXPONENT_MAX = 1.15
#: Our Sinkhorn iterations are searched up to this multiple of POT's.
POT_SEARCH_FACTOR = 8
#: Marginal errors within this relative margin count as equal (float32 rounding of the same iterate).
ERROR_RTOL = 1e-4
KIB = 1024
RESULT_PREFIX = "RESULT "
#: Name of the profiler's allocation records.
MEMORY_EVENT = "[memory]"
#: Sinkhorn iterations after which both solvers are converged (their plans then agree to rounding).
CONVERGED_ITERATIONS = 200

SinkhornFn = Callable[[Tensor, float, int], Tensor]


@dataclass(frozen=True)
class Problem:
    """Sizes of one benchmark problem.

    Attributes:
        batch: images per batch B.
        grid: side of the square patch grid (Dinomaly 28).
        dim: feature dimension D.
        num_prototypes: K.
        defective_images: how many of the B images are defective (the last ones).
        prefix_tokens: leading non-patch tokens of the (B, prefix + grid^2, D) input.
        patch_pixels: image pixels per patch side (masks are at image resolution).
    """

    batch: int
    grid: int
    dim: int
    num_prototypes: int
    defective_images: int = 1
    prefix_tokens: int = DINOMALY_PREFIX_TOKENS
    patch_pixels: int = DINOMALY_PATCH_PIXELS

    @property
    def num_patches(self) -> int:
        """N = B * grid^2, the rows ArcAD works on."""
        return self.batch * self.grid**2

    @property
    def image_size(self) -> int:
        """Mask side in pixels."""
        return self.grid * self.patch_pixels


DINOMALY = Problem(batch=16, grid=DINOMALY_GRID, dim=768, num_prototypes=500)
QUICK = Problem(batch=2, grid=16, dim=64, num_prototypes=32, patch_pixels=2)


class Inputs(NamedTuple):
    """One batch.

    Attributes:
        features: (B, prefix + grid^2, D) float32 leaf that requires grad (the bottleneck output).
        masks: (B, H, W) float32 0/1 defect masks at image resolution.
        labels: (B,) int64 image labels (1 = defective).
        prototypes: (K, D) float32 unit prototypes (normalised normal patch features).
    """

    features: Tensor
    masks: Tensor
    labels: Tensor
    prototypes: Tensor


class LiteralOutput(NamedTuple):
    """Result of :func:`literal_arcad_step`: the eq. 10 total without L_recon, each term (scalars) and the
    (K, D) prototypes after the EMA step."""

    loss: Tensor
    spm: Tensor
    dgc: Tensor
    cls: Tensor
    prototypes: Tensor


def make_inputs(problem: Problem, device: torch.device | str = "cpu", seed: int = 0) -> Inputs:
    """A deterministic batch of clustered unit-ish features, masks, labels and prototypes.

    The last ``problem.defective_images`` images carry a centred square defect covering about
    :data:`DEFECT_AREA` of the image; the prototypes are K distinct normalised patch features of normal images.
    Everything is drawn on the CPU (identical on every device) and then moved to ``device``.
    """
    generator = torch.Generator().manual_seed(seed)
    tokens = problem.prefix_tokens + problem.grid**2
    centres = F.normalize(torch.randn(NUM_MODES, problem.dim, generator=generator), dim=1)
    modes = torch.randint(NUM_MODES, (problem.batch, tokens), generator=generator)
    noise = torch.randn(problem.batch, tokens, problem.dim, generator=generator)
    features = centres[modes] + FEATURE_NOISE * noise / math.sqrt(problem.dim)

    size = problem.image_size
    masks = torch.zeros(problem.batch, size, size)
    side = max(1, round(math.sqrt(DEFECT_AREA) * size))
    start = (size - side) // 2
    labels = torch.zeros(problem.batch, dtype=torch.long)
    if problem.defective_images > 0:
        masks[-problem.defective_images :, start : start + side, start : start + side] = 1.0
        labels[-problem.defective_images :] = 1

    normal_patches = features[: problem.batch - problem.defective_images, problem.prefix_tokens :]
    normal_patches = normal_patches.reshape(-1, problem.dim)
    if normal_patches.shape[0] < problem.num_prototypes:
        raise ValueError(
            f"the problem needs at least K={problem.num_prototypes} normal patches to draw prototypes from, "
            f"got {normal_patches.shape[0]}"
        )
    pick = torch.randperm(normal_patches.shape[0], generator=generator)[: problem.num_prototypes]
    prototypes = F.normalize(normal_patches[pick], dim=1)
    return Inputs(
        features.to(device).requires_grad_(True),
        masks.to(device),
        labels.to(device),
        prototypes.to(device),
    )


# ----------------------------------------------------------------------------------------------------------------
# The literal transcription: every equation written as it is printed, nothing fused, chunked or shared.
# ----------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def literal_sinkhorn(scores: Tensor, epsilon: float, iterations: int) -> Tensor:
    """Eq. 3 as the released code computes it (SwAV style): ``exp(S / epsilon)`` without shift, in float32.

    Args:
        scores: (N, K) similarities.
        epsilon: entropic regularisation.
        iterations: rounds of (prototype sums to 1/K, sample sums to 1/N).

    Returns:
        (N, K) float32 plan whose rows sum to 1 and whose columns tend to N/K. Overflows once
        ``max(S) / epsilon`` exceeds about 88.
    """
    q = torch.exp(scores.float() / epsilon).t()  # (K, N)
    q /= q.sum()
    num_prototypes, num_samples = q.shape
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True)
        q /= num_prototypes
        q /= q.sum(dim=0, keepdim=True)
        q /= num_samples
    q *= num_samples
    return q.t()


def literal_focal_loss(logits: Tensor, targets: Tensor, alpha: float, gamma: float) -> Tensor:
    """Binary focal loss (Lin et al.) per element: ``-alpha_t (1 - p_t)^gamma log p_t``.

    Args:
        logits: (N,) float32.
        targets: (N,) float32 in {0, 1}.

    Returns:
        (N,) float32 losses.
    """
    p = torch.sigmoid(logits)
    log_pt = -F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    pt = p * targets + (1 - p) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return -alpha_t * (1 - pt) ** gamma * log_pt


def literal_discriminator(dim: int) -> nn.Sequential:
    """The 2-layer MLP of section 3.4 with the library's widths; its state dict matches
    ``FocalDiscriminator(dim).net``."""
    hidden = max(1, int(dim / HIDDEN_RATIO))
    return nn.Sequential(nn.Linear(dim, hidden), nn.LeakyReLU(NEGATIVE_SLOPE), nn.Linear(hidden, 1, bias=False))


def literal_arcad_step(
    features: Tensor,
    masks: Tensor,
    labels: Tensor,
    prototypes: Tensor,
    discriminator: nn.Module,
    *,
    num_candidates: int,
    sigma: float = PAPER.sigma,
    prefix_tokens: int = DINOMALY_PREFIX_TOKENS,
    generator: torch.Generator | None = None,
    sinkhorn: SinkhornFn = literal_sinkhorn,
) -> LiteralOutput:
    """Eq. 3-9 (and the EMA M-step) transcribed literally, with the paper preset's settings.

    Boolean masks select the normal features Z (patches of label-0 images) and the real anomalies (eq. 7);
    eq. 3 is the exp-domain Sinkhorn of :func:`literal_sinkhorn`; all N_normal x N_cand x D candidates of eq. 5
    exist at once with autograd on; eq. 8 forms the full M x S anomaly-synthetic similarity matrix (the synthetic
    features detached there, as in the released code); eq. 9 is one focal-loss mean over cat(Z, A_syn, A_hat).

    Args:
        features: (B, prefix + h*w, D) bottleneck tokens.
        masks: (B, H, W) 0/1 masks at image resolution.
        labels: (B,) image labels, non-zero for defective images.
        prototypes: (K, D) unit prototypes (constants).
        discriminator: module mapping (n, D) to (n, 1) logits.
        num_candidates: N_cand of eq. 6.
        sigma: noise standard deviation of eq. 5.
        prefix_tokens: leading non-patch tokens to drop.
        generator: random generator for the noise, on the features' device.
        sinkhorn: ``(scores (N, K), epsilon, iterations) -> Q (N, K)``; :func:`literal_sinkhorn` unless another
            solver is swapped in to isolate its effect.

    Returns:
        :class:`LiteralOutput`.
    """
    patches = features[:, prefix_tokens:]
    batch, num_patches, dim = patches.shape
    side = math.isqrt(num_patches)
    z_all = F.normalize(patches, dim=-1)
    patch_mask = F.adaptive_max_pool2d(masks.unsqueeze(1).float(), (side, side)).flatten(1) > 0.5
    defective = labels != 0
    z = z_all[~defective].reshape(-1, dim)  # Z, the normal features
    anomalies = z_all[defective][patch_mask[defective]]  # eq. 7, (M, D)

    # Eq. 3-4 with the pre-update prototypes.
    q = sinkhorn((z @ prototypes.t()).detach(), PAPER.epsilon, PAPER.sinkhorn_iterations)
    spm = -(q * torch.log_softmax(z @ prototypes.t() / PAPER.temperature, dim=1)).sum(dim=1).mean()

    # EMA M-step toward normalize(Q^T z).
    with torch.no_grad():
        target = F.normalize(q.t() @ z, dim=1)
        updated = F.normalize(PAPER.momentum * prototypes + (1 - PAPER.momentum) * target, dim=1)

    # Eq. 5-6: every candidate of every anchor at once, autograd on.
    noise = torch.randn(
        (z.shape[0], num_candidates, dim), generator=generator, device=z.device, dtype=z.dtype
    ) * sigma
    candidates = F.normalize(z.unsqueeze(1) + noise, dim=2)
    pick = (candidates @ prototypes.t()).amax(dim=2).argmin(dim=1)
    synthetic = candidates[torch.arange(z.shape[0], device=z.device), pick]

    # Eq. 8 with the full M x S similarity matrix.
    push = (anomalies @ prototypes.t()).amax(dim=1)
    pull = (anomalies @ synthetic.detach().t()).mean(dim=1)
    dgc = (push + (1 - pull)).mean()

    # Eq. 9 over the union of the three sets.
    inputs = torch.cat([z, synthetic, anomalies])
    targets = torch.cat(
        [z.new_zeros(z.shape[0]), z.new_ones(synthetic.shape[0]), z.new_ones(anomalies.shape[0])]
    )
    logits = discriminator(inputs).squeeze(1)
    cls = literal_focal_loss(logits, targets, PAPER.alpha, PAPER.gamma).mean()

    loss = LAMBDA * spm + LAMBDA * dgc + LAMBDA * cls
    return LiteralOutput(loss, spm, dgc, cls, updated)


# ----------------------------------------------------------------------------------------------------------------
# Building the two implementations on one batch.
# ----------------------------------------------------------------------------------------------------------------


def _arcad_module(problem: Problem, inputs: Inputs, num_candidates: int, sigma: float, device: torch.device) -> ArcAD:
    arcad = ArcAD(
        problem.dim,
        problem.num_prototypes,
        prefix_tokens=problem.prefix_tokens,
        num_candidates=num_candidates,
        sigma=sigma,
    ).to(device)
    arcad.prototypes.load_state_dict(
        {
            "prototypes": inputs.prototypes.clone(),
            "initialized": torch.ones((), dtype=torch.bool),
            "num_updates": torch.zeros((), dtype=torch.long),
        }
    )
    return arcad


def _tiny_batch(problem: Problem, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Two images on a 2 x 2 grid (one defective) with the problem's D: loads the math libraries cheaply."""
    tiny = replace(problem, batch=2, grid=2, defective_images=1)
    features = torch.randn(2, tiny.prefix_tokens + tiny.grid**2, tiny.dim, device=device, requires_grad=True)
    masks = torch.zeros(2, tiny.image_size, tiny.image_size, device=device)
    masks[1, : tiny.patch_pixels, : tiny.patch_pixels] = 1.0
    labels = torch.tensor([0, 1], device=device)
    return features, masks, labels


def build_step(
    implementation: str,
    problem: Problem,
    inputs: Inputs,
    num_candidates: int,
    device: torch.device,
    seed: int = 0,
) -> tuple[Callable[[], None], Callable[[], None]]:
    """``(step, tiny_step)``: one forward + backward of ``"arcad"`` or ``"literal"`` on ``inputs``, and the same on
    a tiny batch (for warming up the libraries without touching full-size memory). Gradients are dropped after
    each step; the prototypes move by the EMA step each call, in both implementations."""
    generator = torch.Generator(device=device).manual_seed(seed)
    tiny = _tiny_batch(problem, device)
    if implementation == "arcad":
        arcad = _arcad_module(problem, inputs, num_candidates, PAPER.sigma, device)

        def run(features: Tensor, masks: Tensor, labels: Tensor) -> None:
            arcad(features, masks=masks, labels=labels, generator=generator).loss.backward()
            features.grad = None
            arcad.zero_grad(set_to_none=True)

    elif implementation == "literal":
        discriminator = literal_discriminator(problem.dim).to(device)
        state = {"prototypes": inputs.prototypes.clone()}

        def run(features: Tensor, masks: Tensor, labels: Tensor) -> None:
            out = literal_arcad_step(
                features,
                masks,
                labels,
                state["prototypes"],
                discriminator,
                num_candidates=num_candidates,
                prefix_tokens=problem.prefix_tokens,
                generator=generator,
            )
            out.loss.backward()
            state["prototypes"] = out.prototypes
            features.grad = None
            discriminator.zero_grad(set_to_none=True)

    else:
        raise ValueError(f"implementation must be 'arcad' or 'literal', got {implementation!r}")
    return (lambda: run(inputs.features, inputs.masks, inputs.labels)), (lambda: run(*tiny))


# ----------------------------------------------------------------------------------------------------------------
# Agreement between the two.
# ----------------------------------------------------------------------------------------------------------------


def _max_abs_diff(a: Tensor, b: Tensor) -> float:
    return (a.detach().double() - b.detach().double()).abs().max().item()


def _library_sinkhorn(scores: Tensor, epsilon: float, iterations: int) -> Tensor:
    return sinkhorn_knopp(scores, epsilon, iterations)


def _agreement_entry(
    problem: Problem, device: torch.device, sigma: float, sinkhorn: SinkhornFn, seed: int
) -> dict[str, Any]:
    """ArcAD and the literal step (with the given Sinkhorn) on one batch: values and differences."""
    inputs = make_inputs(problem, device, seed)
    with torch.random.fork_rng(devices=[]):  # the same discriminator weights in every comparison
        torch.manual_seed(seed)
        arcad = _arcad_module(problem, inputs, CANDIDATES_PAPER, sigma, device)
    discriminator = literal_discriminator(problem.dim).to(device)
    discriminator.load_state_dict(arcad.discriminator.net.state_dict())
    generator = torch.Generator(device=device).manual_seed(seed)
    ours = arcad(inputs.features, masks=inputs.masks, labels=inputs.labels, generator=generator)
    ours.loss.backward()
    grad_ours = inputs.features.grad.detach()

    features = inputs.features.detach().clone().requires_grad_(True)
    generator = torch.Generator(device=device).manual_seed(seed)
    literal = literal_arcad_step(
        features,
        inputs.masks,
        inputs.labels,
        inputs.prototypes,
        discriminator,
        num_candidates=CANDIDATES_PAPER,
        sigma=sigma,
        prefix_tokens=problem.prefix_tokens,
        generator=generator,
        sinkhorn=sinkhorn,
    )
    literal.loss.backward()
    grad_literal = features.grad.detach()

    entry: dict[str, Any] = {}
    for term in ("loss", "spm", "dgc", "cls"):
        a, b = getattr(ours, term).detach(), getattr(literal, term).detach()
        relative = _max_abs_diff(a, b) / max(abs(float(b)), LOSS_ATOL)
        entry[term] = {"arcad": float(a), "literal": float(b), "rel_diff": relative}
    entry["ema_abs_diff"] = _max_abs_diff(arcad.prototypes.prototypes, literal.prototypes)
    entry["grad_rel_diff"] = _max_abs_diff(grad_ours, grad_literal) / max(grad_literal.abs().max().item(), LOSS_ATOL)
    return entry


def _exact(entry: dict[str, Any], terms: Sequence[str], *, gradient: bool) -> bool:
    return (
        all(entry[t]["rel_diff"] <= LOSS_RTOL for t in terms)
        and entry["ema_abs_diff"] <= LOSS_ATOL
        and (not gradient or entry["grad_rel_diff"] <= GRAD_RTOL)
    )


def check_agreement(problem: Problem, device: torch.device, seed: int = 0) -> dict[str, Any]:
    """Run ``ArcAD`` and :func:`literal_arcad_step` on one batch with the same prototypes and discriminator.

    The library's ``sinkhorn_knopp`` shifts every row of ``S / epsilon`` by its maximum before the first
    (column) step. That shift changes the starting scaling, so after 3 iterations its plan differs from the
    unshifted exp-domain one of eq. 3 / the released code, although both converge to the same plan. So each
    comparison is made twice: fully literal (``literal_sinkhorn``), and with the library's Sinkhorn swapped into
    the transcription (``shared_sinkhorn``), which isolates every other equation.

    * ``sigma_zero``: every candidate equals its anchor. With the shared Sinkhorn the losses, the prototypes after
      the EMA step and the gradients to the features must agree to float32 rounding (``passed``).
    * ``sigma_paper``: only the random candidates may differ (the library draws noise for all N patches in
      chunks, the transcription for the normal ones at once; with the defective images last in the batch, as
      here, the normal anchors happen to receive the same draws): with the shared Sinkhorn, L_spm and the EMA
      step agree to rounding and L_dgc, L_cls within :data:`ROUGH_RTOL` (``roughly_equal``).
    * ``sinkhorn``: largest entry difference of the two plans after the preset's iterations and after
      :data:`CONVERGED_ITERATIONS`.

    Returns:
        A dictionary of plain floats and booleans.
    """
    report: dict[str, Any] = {}
    inputs = make_inputs(problem, device, seed)
    with torch.no_grad():
        normal = inputs.features[: problem.batch - problem.defective_images, problem.prefix_tokens :]
        scores = F.normalize(normal.reshape(-1, problem.dim), dim=1) @ inputs.prototypes.t()
    report["sinkhorn"] = {
        "iterations": PAPER.sinkhorn_iterations,
        "plan_max_abs_diff": _max_abs_diff(
            _library_sinkhorn(scores, PAPER.epsilon, PAPER.sinkhorn_iterations),
            literal_sinkhorn(scores, PAPER.epsilon, PAPER.sinkhorn_iterations),
        ),
        "converged_iterations": CONVERGED_ITERATIONS,
        "converged_plan_max_abs_diff": _max_abs_diff(
            _library_sinkhorn(scores, PAPER.epsilon, CONVERGED_ITERATIONS),
            literal_sinkhorn(scores, PAPER.epsilon, CONVERGED_ITERATIONS),
        ),
    }
    for name, sigma in (("sigma_zero", 0.0), ("sigma_paper", PAPER.sigma)):
        literal = _agreement_entry(problem, device, sigma, literal_sinkhorn, seed)
        shared = _agreement_entry(problem, device, sigma, _library_sinkhorn, seed)
        entry: dict[str, Any] = {"sigma": sigma, "literal_sinkhorn": literal, "shared_sinkhorn": shared}
        if sigma == 0.0:
            entry["passed"] = _exact(shared, ("loss", "spm", "dgc", "cls"), gradient=True)
        else:
            rough = all(shared[t]["rel_diff"] <= ROUGH_RTOL for t in ("loss", "dgc", "cls"))
            entry["roughly_equal"] = _exact(shared, ("spm",), gradient=False) and rough
        report[name] = entry
    return report


# ----------------------------------------------------------------------------------------------------------------
# Measurement.
# ----------------------------------------------------------------------------------------------------------------


def _current_rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as handle:
            resident_pages = int(handle.read().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _reset_rss_high_water_mark() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # resets VmHWM (and the ru_maxrss it backs) to the current resident size
        return True
    except OSError:
        return False


def _rss_high_water_mark_bytes() -> int:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * KIB  # bytes on macOS, KiB elsewhere


def _allocation_peak_bytes(prof: torch.profiler.profile) -> int:
    """Largest running total of the CPU allocations and frees recorded by the profiler (bytes)."""
    events = [
        event
        for event in prof.profiler.kineto_results.events()
        if event.name() == MEMORY_EVENT and event.device_type() == torch.autograd.DeviceType.CPU
    ]
    events.sort(key=lambda event: event.start_ns())
    total = peak = 0
    for event in events:  # a few thousand allocation records, once per configuration
        total += event.nbytes()
        peak = max(peak, total)
    return peak


def peak_memory(step: Callable[[], None], device: torch.device) -> dict[str, Any]:
    """Extra memory at the peak of one call of ``step`` over what was in use before it.

    CUDA: ``max_memory_allocated`` after ``reset_peak_memory_stats`` minus ``memory_allocated`` before. CPU: the
    running total of the tensor allocations and frees that ``torch.profiler`` records during the call (the
    CPU counterpart of the CUDA number), and beside it the growth of the process's resident-set high-water mark
    (reset through ``/proc/self/clear_refs`` where Linux allows it), which also counts allocator overhead and
    library pages first touched by the call.

    Returns:
        ``{"peak_bytes": int, "memory_method": str}`` plus ``"peak_rss_bytes"`` on CPU.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return {
            "peak_bytes": torch.cuda.max_memory_allocated(device) - before,
            "memory_method": "cuda.max_memory_allocated",
        }
    reset = _reset_rss_high_water_mark()
    before = _current_rss_bytes()
    if before is None:
        before = _rss_high_water_mark_bytes()
    peak: int | None
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
            step()
        peak = _allocation_peak_bytes(prof)
    except (AttributeError, RuntimeError):  # profiler internals unavailable: fall back to the resident set
        peak = None
    rss = max(_rss_high_water_mark_bytes() - before, 0)
    rss_method = "rss high-water mark" if reset else "ru_maxrss (not resettable: upper bound)"
    if peak is None:
        return {"peak_bytes": rss, "memory_method": rss_method, "peak_rss_bytes": rss}
    return {"peak_bytes": peak, "memory_method": "profiler allocation trace", "peak_rss_bytes": rss}


def time_calls(step: Callable[[], None], device: torch.device, repeats: int) -> list[float]:
    """Wall time in seconds of each of ``repeats`` calls (CUDA events on CUDA, ``perf_counter`` on CPU)."""
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000.0)
        else:
            begin = time.perf_counter()
            step()
            times.append(time.perf_counter() - begin)
    return times


def count_host_syncs(step: Callable[[], None], device: torch.device) -> int | None:
    """Number of synchronising CUDA calls one call of ``step`` makes on the Python thread (the forward; the
    backward runs on autograd's own threads), from ``torch.cuda.set_sync_debug_mode("warn")``. None on CPU."""
    if device.type != "cuda":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize(device)
    return sum("synchroniz" in str(warning.message) for warning in caught)


def measure_configuration(spec: dict[str, Any]) -> dict[str, Any]:
    """One configuration of the Dinomaly-sized comparison, in this process.

    Args:
        spec: ``{"implementation": "arcad" | "literal", "num_candidates": int, "problem": Problem fields,
            "device": str, "repeats": int, "seed": int}``.

    Returns:
        ``{"time_s": median, "times_s": [...]}`` and the entries of :func:`peak_memory`, or ``{"error": ...}`` when
        the device runs out of memory. The memory is measured on the first full-size call (after a tiny one that
        loads the libraries), which is also the warm-up of the timed calls.
    """
    device = torch.device(spec["device"])
    problem = Problem(**spec["problem"])
    inputs = make_inputs(problem, device, spec["seed"])
    step, tiny_step = build_step(spec["implementation"], problem, inputs, spec["num_candidates"], device, spec["seed"])
    try:
        tiny_step()
        memory = peak_memory(step, device)
        times = time_calls(step, device, spec["repeats"])
        syncs = count_host_syncs(step, device)
    except (torch.cuda.OutOfMemoryError, MemoryError) as error:
        return {"error": f"out of memory: {error}".splitlines()[0]}
    result = {"time_s": statistics.median(times), "times_s": times, **memory}
    if syncs is not None:
        result["host_syncs_forward"] = syncs
    return result


def _run_isolated(spec: dict[str, Any]) -> dict[str, Any]:
    """:func:`measure_configuration` in a fresh Python process, so its memory peak is its own."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--threads",
        str(torch.get_num_threads()),
        "--worker",
        json.dumps(spec),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    return {"error": f"worker exited with {done.returncode}: {done.stderr.strip()[-2000:]}"}


def fit_exponent(sizes: Sequence[float], times: Sequence[float]) -> float:
    """Least-squares slope p of ``log time = p log size + c``."""
    if len(sizes) != len(times) or len(sizes) < 2:
        raise ValueError(f"need at least two (size, time) pairs of equal length, got {len(sizes)} and {len(times)}")
    xs = [math.log(s) for s in sizes]
    ys = [math.log(t) for t in times]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    if spread == 0:
        raise ValueError("sizes must not all be equal")
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / spread


def _sweep(problems: Sequence[Problem], device: torch.device, repeats: int, key: str) -> dict[str, Any]:
    sizes, medians = [], []
    for problem in problems:
        inputs = make_inputs(problem, device)
        step, _ = build_step("arcad", problem, inputs, CANDIDATES_PAPER, device)
        step()  # warm-up at this size
        medians.append(statistics.median(time_calls(step, device, repeats)))
        sizes.append(problem.num_patches if key == "N" else problem.num_prototypes)
        del inputs, step
    exponent = fit_exponent(sizes, medians)
    return {"sizes": sizes, "time_s": medians, "exponent": exponent}


# ----------------------------------------------------------------------------------------------------------------
# Sinkhorn against POT.
# ----------------------------------------------------------------------------------------------------------------


def _marginal_errors(plan: Tensor) -> tuple[float, float]:
    """Max relative (column, row) marginal errors of a plan that should have rows 1/N and columns 1/K."""
    num_rows, num_cols = plan.shape
    plan = plan.double()
    column = (plan.sum(dim=0) * num_cols - 1).abs().max().item()
    row = (plan.sum(dim=1) * num_rows - 1).abs().max().item()
    return column, row


def compare_with_pot(problem: Problem, device: torch.device, pot_iterations: int, repeats: int) -> dict[str, Any]:
    """``sinkhorn_knopp`` against ``ot.bregman.sinkhorn_log`` on the normal patches' scores ``z mu^T``.

    Both solve the same problem: kernel ``exp(S / epsilon)`` (POT's cost ``M = -S`` with ``reg = epsilon``),
    rows 1/N and columns 1/K (ours returns rows 1 and columns N/K; it is divided by N). POT runs
    ``pot_iterations`` iterations; ours runs the fewest iterations whose column-marginal error is at most POT's
    (up to :data:`ERROR_RTOL`, float32 rounding of the same iterate). Both start from the unscaled kernel and
    end each iteration on the rows, so the row marginal holds to rounding in both. Times are medians.

    Returns:
        The errors, iteration counts, times and ``speedup`` (POT time / ours), or ``{"skipped": reason}``.
    """
    try:
        import ot
    except ImportError:
        return {"skipped": "POT is not installed (pip install POT) - Sinkhorn comparison skipped"}
    inputs = make_inputs(problem, device)
    with torch.no_grad():
        normal = inputs.features[: problem.batch - problem.defective_images, problem.prefix_tokens :]
        z = F.normalize(normal.reshape(-1, problem.dim), dim=1)
        scores = (z @ inputs.prototypes.t()).contiguous()
    num_rows, num_cols = scores.shape
    a = torch.full((num_rows,), 1.0 / num_rows, device=device)
    b = torch.full((num_cols,), 1.0 / num_cols, device=device)
    cost = -scores

    def pot_plan() -> Tensor:
        return ot.bregman.sinkhorn_log(a, b, cost, PAPER.epsilon, numItermax=pot_iterations, stopThr=0.0, warn=False)

    def our_plan(iterations: int) -> Tensor:
        return sinkhorn_knopp(scores, PAPER.epsilon, iterations) / num_rows

    pot_column, pot_row = _marginal_errors(pot_plan())
    tolerance = pot_column * (1 + ERROR_RTOL)
    errors: dict[int, float] = {}

    def column_error(iterations: int) -> float:
        if iterations not in errors:
            errors[iterations] = _marginal_errors(our_plan(iterations))[0]
        return errors[iterations]

    cap = POT_SEARCH_FACTOR * pot_iterations
    high = 1
    while column_error(high) > tolerance and high < cap:
        high *= 2
    reached = column_error(high) <= tolerance
    low = high // 2
    while reached and high - low > 1:  # smallest count with error <= POT's (the error decreases with iterations)
        middle = (low + high) // 2
        if column_error(middle) <= tolerance:
            high = middle
        else:
            low = middle
    ours_iterations = high
    plan_diff = (our_plan(pot_iterations) - pot_plan()).abs().max().item() * num_rows * num_cols

    def discard(fn: Callable[[], Tensor]) -> Callable[[], None]:
        def call() -> None:
            fn()

        return call

    pot_plan()  # warm-up
    pot_time = statistics.median(time_calls(discard(pot_plan), device, repeats))
    ours_time = statistics.median(time_calls(discard(lambda: our_plan(ours_iterations)), device, repeats))
    ours_column, ours_row = _marginal_errors(our_plan(ours_iterations))
    return {
        "pot_version": getattr(ot, "__version__", "unknown"),
        "shape": [num_rows, num_cols],
        "epsilon": PAPER.epsilon,
        "pot_iterations": pot_iterations,
        "pot_column_error": pot_column,
        "pot_row_error": pot_row,
        "ours_iterations": ours_iterations,
        "ours_column_error": ours_column,
        "ours_row_error": ours_row,
        "reached_pot_error": reached,
        "plan_rel_diff_at_equal_iterations": plan_diff,
        "pot_time_s": pot_time,
        "ours_time_s": ours_time,
        "speedup": pot_time / ours_time,
    }


# ----------------------------------------------------------------------------------------------------------------
# Driver.
# ----------------------------------------------------------------------------------------------------------------


def _configurations() -> list[tuple[str, str, int]]:
    """(name, implementation, N_cand) of the Dinomaly-sized comparison."""
    return [
        (f"{implementation}_ncand{candidates}", implementation, candidates)
        for candidates in (CANDIDATES_OFFICIAL, CANDIDATES_PAPER)
        for implementation in ("arcad", "literal")
    ]


def _sweep_problems(quick: bool) -> tuple[list[Problem], list[Problem]]:
    if quick:
        base = QUICK
        by_n = [replace(base, batch=b) for b in (2, 4, 8)]
        by_k = [replace(base, num_prototypes=k) for k in (8, 16, 32)]
    else:
        base = DINOMALY
        # B images of 28 x 28 patches: N = 2,352 / 4,704 / 12,544 / 25,088 / 50,176, one defective image per 16.
        by_n = [replace(base, batch=b, defective_images=max(1, b // 16)) for b in (3, 6, 16, 32, 64)]
        by_k = [replace(base, num_prototypes=k) for k in (100, 250, 500, 1000, 2000)]
    return by_n, by_k


def _load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (other processes sharing the CPU inflate CPU timings)."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


def _environment(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    env: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "torch_arcad": torch_arcad.__version__,
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_start": _load_average(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def _ratio(numerator: dict[str, Any], denominator: dict[str, Any], key: str) -> float | None:
    if key not in numerator or key not in denominator or denominator[key] <= 0:
        return None
    return numerator[key] / denominator[key]


def _mib(value: float) -> str:
    return f"{value / KIB**2:9.1f}"


def _print_report(results: dict[str, Any]) -> None:
    env = results["environment"]
    print(
        f"device {env['device']} ({env.get('gpu', env['cpu'])}), torch {env['torch']}, {env['torch_threads']} threads, "
        f"load average {env['load_average_start']} -> {env.get('load_average_end')}"
    )
    agreement = results["agreement"]
    sink = agreement["sinkhorn"]
    print(
        f"\nSinkhorn plans, library vs literal exp-domain: max |diff| {sink['plan_max_abs_diff']:.2e} after "
        f"{sink['iterations']} iterations, {sink['converged_plan_max_abs_diff']:.2e} after "
        f"{sink['converged_iterations']}"
    )
    for name, verdict in (("sigma_zero", "passed"), ("sigma_paper", "roughly_equal")):
        entry = agreement[name]
        print(
            f"agreement at sigma {entry['sigma']} (shared Sinkhorn): {'PASS' if entry[verdict] else 'FAIL'} "
            f"[{'exact' if verdict == 'passed' else 'only the random draws differ'}]"
        )
        print(f"  {'term':5s} {'arcad':>10s} {'literal, shared Sinkhorn':>26s} {'literal, literal Sinkhorn':>27s}")
        for term in ("loss", "spm", "dgc", "cls"):
            shared, literal = entry["shared_sinkhorn"][term], entry["literal_sinkhorn"][term]
            print(f"  {term:5s} {shared['arcad']:10.6f} {shared['literal']:26.6f} {literal['literal']:27.6f}")
        print(
            f"  EMA max |diff| {entry['shared_sinkhorn']['ema_abs_diff']:.1e} / "
            f"{entry['literal_sinkhorn']['ema_abs_diff']:.1e}, gradient max rel diff "
            f"{entry['shared_sinkhorn']['grad_rel_diff']:.1e} / {entry['literal_sinkhorn']['grad_rel_diff']:.1e}"
        )

    dinomaly = results["dinomaly"]
    problem = results["problem"]
    print(
        f"\nforward + backward, N = {problem['num_patches']}, D = {problem['dim']}, K = {problem['num_prototypes']}, "
        f"{problem['anomalous_patches']} anomalous patches"
    )
    print(f"  {'configuration':18s} {'time (s)':>10s} {'peak (MiB)':>10s} {'rss (MiB)':>10s}")
    for name, entry in dinomaly.items():
        if "error" in entry:
            print(f"  {name:18s} {entry['error']}")
        else:
            rss = _mib(entry["peak_rss_bytes"]) if "peak_rss_bytes" in entry else f"{'-':>9s}"
            print(f"  {name:18s} {entry['time_s']:10.3f} {_mib(entry['peak_bytes'])} {rss}")
    for name, ratio in results["ratios"].items():
        print(f"  {name:38s} {'n/a' if ratio is None else f'{ratio:6.2f}x'}")

    pot = results["sinkhorn_vs_pot"]
    if "skipped" in pot:
        print(f"\n{pot['skipped']}")
    else:
        print(
            f"\nSinkhorn {pot['shape'][0]} x {pot['shape'][1]}: POT sinkhorn_log {pot['pot_iterations']} it "
            f"(column error {pot['pot_column_error']:.2e}) {pot['pot_time_s']:.4f} s; ours {pot['ours_iterations']} it "
            f"(column error {pot['ours_column_error']:.2e}) {pot['ours_time_s']:.4f} s; speed-up {pot['speedup']:.2f}x"
        )

    for key, sweep in results["sweeps"].items():
        points = ", ".join(f"{s}: {t:.3f}s" for s, t in zip(sweep["sizes"], sweep["time_s"]))
        print(f"\nsweep over {key}: {points}; exponent {sweep['exponent']:.2f}")

    print("\ntargets")
    for name, target in results["targets"].items():
        value = target["value"]
        shown = "n/a" if value is None else f"{value:.2f}"
        print(f"  {name:30s} {shown:>6s} (target {target['target']}) {'MET' if target['met'] else 'NOT MET'}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the report and return (and optionally write) the results.

    Args:
        argv: command-line arguments (``--quick``, ``--device``, ``--out``, ``--repeats``, ``--pot-iterations``,
            ``--threads``, ``--in-process``); ``sys.argv[1:]`` when None.

    Returns:
        The results dictionary written to ``--out``.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat: a smoke test of seconds")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement (default 3; quick 1)")
    parser.add_argument("--pot-iterations", type=int, default=None, help="POT iterations (default 50; quick 10)")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="measure every configuration in this process (default with --quick; peaks are cleaner isolated)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice; 1 with --quick, where tiny operations only pay for "
        "thread synchronisation)",
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    threads = args.threads if args.threads is not None else (1 if args.quick else None)
    if threads is not None and threads < 1:
        parser.error(f"--threads must be >= 1, got {threads}")
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        if args.worker is not None:
            print(RESULT_PREFIX + json.dumps(measure_configuration(json.loads(args.worker))), flush=True)
            return {}
        return _run(parser, args)
    finally:
        torch.set_num_threads(previous_threads)


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """Everything :func:`main` does once the arguments are parsed and the thread count is set."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda was given but CUDA is not available")
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    if repeats < 1:
        parser.error(f"--repeats must be >= 1, got {repeats}")
    pot_iterations = args.pot_iterations if args.pot_iterations is not None else (10 if args.quick else 50)
    in_process = args.in_process or args.quick
    problem = QUICK if args.quick else DINOMALY
    started = time.perf_counter()

    inputs = make_inputs(problem, device)
    side = problem.grid
    patch_mask = F.adaptive_max_pool2d(inputs.masks.unsqueeze(1), (side, side)).flatten(1) > 0.5
    anomalous_patches = int(patch_mask[inputs.labels != 0].sum())
    del inputs

    results: dict[str, Any] = {
        "environment": _environment(device),
        "settings": {
            "quick": args.quick,
            "repeats": repeats,
            "pot_iterations": pot_iterations,
            "isolation": "in-process" if in_process else "subprocess",
        },
        "problem": {**asdict(problem), "num_patches": problem.num_patches, "anomalous_patches": anomalous_patches},
    }
    agreement_problem = QUICK if args.quick else replace(QUICK, batch=4, dim=128, num_prototypes=64)
    sections: dict[str, float] = {}
    mark = time.perf_counter()
    results["agreement"] = check_agreement(agreement_problem, device)
    sections["agreement"], mark = time.perf_counter() - mark, time.perf_counter()

    dinomaly: dict[str, Any] = {}
    for name, implementation, candidates in _configurations():
        spec = {
            "implementation": implementation,
            "num_candidates": candidates,
            "problem": asdict(problem),
            "device": str(device),
            "repeats": repeats,
            "seed": 0,
        }
        dinomaly[name] = measure_configuration(spec) if in_process else _run_isolated(spec)
    results["dinomaly"] = dinomaly
    sections["dinomaly"], mark = time.perf_counter() - mark, time.perf_counter()

    ratios = {}
    for candidates in (CANDIDATES_OFFICIAL, CANDIDATES_PAPER):
        ours, literal = dinomaly[f"arcad_ncand{candidates}"], dinomaly[f"literal_ncand{candidates}"]
        ratios[f"time literal/arcad, N_cand {candidates}"] = _ratio(literal, ours, "time_s")
        ratios[f"memory literal/arcad, N_cand {candidates}"] = _ratio(literal, ours, "peak_bytes")
    paper_default = dinomaly[f"arcad_ncand{CANDIDATES_PAPER}"]
    official_literal = dinomaly[f"literal_ncand{CANDIDATES_OFFICIAL}"]
    ratios[f"time literal {CANDIDATES_OFFICIAL}/arcad {CANDIDATES_PAPER}"] = _ratio(
        official_literal, paper_default, "time_s"
    )
    ratios[f"memory literal {CANDIDATES_OFFICIAL}/arcad {CANDIDATES_PAPER}"] = _ratio(
        official_literal, paper_default, "peak_bytes"
    )
    results["ratios"] = ratios

    results["sinkhorn_vs_pot"] = compare_with_pot(problem, device, pot_iterations, repeats)
    sections["sinkhorn_vs_pot"], mark = time.perf_counter() - mark, time.perf_counter()

    by_n, by_k = _sweep_problems(args.quick)
    results["sweeps"] = {"N": _sweep(by_n, device, repeats, "N"), "K": _sweep(by_k, device, repeats, "K")}
    sections["sweeps"] = time.perf_counter() - mark

    memory_ratio = ratios[f"memory literal/arcad, N_cand {CANDIDATES_OFFICIAL}"]
    speed_ratio = ratios[f"time literal/arcad, N_cand {CANDIDATES_OFFICIAL}"]
    n_exponent, k_exponent = results["sweeps"]["N"]["exponent"], results["sweeps"]["K"]["exponent"]
    results["targets"] = {
        f"memory >= {MEMORY_TARGET:g}x (N_cand {CANDIDATES_OFFICIAL})": {
            "value": memory_ratio,
            "target": MEMORY_TARGET,
            "met": memory_ratio is not None and memory_ratio >= MEMORY_TARGET,
        },
        f"speed >= {SPEED_TARGET:g}x (N_cand {CANDIDATES_OFFICIAL})": {
            "value": speed_ratio,
            "target": SPEED_TARGET,
            "met": speed_ratio is not None and speed_ratio >= SPEED_TARGET,
        },
        "linear in N (exponent)": {
            "value": n_exponent,
            "target": f"<= {LINEAR_EXPONENT_MAX}",
            "met": n_exponent <= LINEAR_EXPONENT_MAX,
        },
        "linear in K (exponent)": {
            "value": k_exponent,
            "target": f"<= {LINEAR_EXPONENT_MAX}",
            "met": k_exponent <= LINEAR_EXPONENT_MAX,
        },
    }
    results["settings"]["wall_s"] = time.perf_counter() - started
    results["settings"]["section_s"] = sections
    results["environment"]["load_average_end"] = _load_average()

    _print_report(results)
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2))
        print(f"\nresults written to {args.out}")
    return results


if __name__ == "__main__":
    main()
