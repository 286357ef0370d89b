"""The benchmark's batches and the two implementations it runs on them.

:class:`Problem` fixes the sizes (:data:`DINOMALY`: 16 images of 28 x 28 patches, D = 768, K = 500),
:func:`make_inputs` draws a deterministic batch, and :func:`build_step` returns one forward + backward of
:class:`torch_arcad.ArcAD` or of the literal transcription in :mod:`benchmarks.reference`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from torch_arcad import ArcAD

from .reference import PAPER, literal_arcad_step, literal_discriminator

__all__ = [
    "Problem",
    "Inputs",
    "DINOMALY",
    "QUICK",
    "DEFECT_AREA",
    "CANDIDATES_OFFICIAL",
    "CANDIDATES_PAPER",
    "make_inputs",
    "arcad_module",
    "cosine_scores",
    "build_step",
]

#: Dinomaly: 392 px crop, ViT-B/14, 28 x 28 patches, CLS + 4 register tokens in front.
DINOMALY_GRID = 28
DINOMALY_PATCH_PIXELS = 14
DINOMALY_PREFIX_TOKENS = 5
#: Fraction of a defective image covered by its defect mask.
DEFECT_AREA = 0.10
#: Synthetic features: unit directions around this many modes, plus isotropic noise of about unit length.
NUM_MODES = 64
FEATURE_NOISE = 1.0
#: The two candidate counts compared: released code and paper.
CANDIDATES_OFFICIAL = 50
CANDIDATES_PAPER = PAPER.num_candidates


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


def cosine_scores(problem: Problem, inputs: Inputs, *, normal_only: bool) -> Tensor:
    """(N, K) cosine similarities of the batch's patch features to its prototypes (the Sinkhorn scores).

    Args:
        normal_only: only the patches of normal images (what eq. 3 sees), or all B * grid^2 patches.
    """
    with torch.no_grad():
        images = problem.batch - problem.defective_images if normal_only else problem.batch
        patches = inputs.features[:images, problem.prefix_tokens :].reshape(-1, problem.dim)
        return (F.normalize(patches, dim=1) @ inputs.prototypes.t()).contiguous()


def arcad_module(problem: Problem, inputs: Inputs, num_candidates: int, sigma: float, device: torch.device) -> ArcAD:
    """The paper preset's ``ArcAD`` for ``problem``, its prototypes set to ``inputs.prototypes`` (initialised)."""
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
        arcad = arcad_module(problem, inputs, num_candidates, PAPER.sigma, device)

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
