"""Does eq. 8's push drag the normal patches away from the prototypes? A tiny conv autoencoder, trained from scratch
or on a frozen encoder, with and without L_dgc, on generated images with thin scratches.

Usage::

    python -m benchmarks.tiny_autoencoder [--steps 40] [--seeds 0 1 2] [--threads 1]

A report from a trainer of this kind (a tiny conv autoencoder, 40 steps, 5 thin scratches) saw the normal patches'
mean cosine to their nearest prototype fall from 0.99 to -0.70 with L_dgc and stay at 0.56 without it. Here the
same kind of model is trained on the generated ``grid`` category (64 px, 32 normal images, 5 with a thin scratch,
batches of 8 normal and 2 defective images), with ArcAD's paper preset (K = 32) and ``lambda_dgc`` 0.1 or 0, in two
settings: every layer trainable (``scratch``), or a frozen random encoder with only the 1x1 bottleneck and the
decoder trained (``frozen``, like the examples' detectors on their frozen pretrained encoders). It prints
``stats["normal_similarity"]`` and ``stats["prototypes_in_use"]`` at the first, middle and last step, per seed.
Seconds on a CPU; nothing is stored.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import torch_arcad
from torch_arcad.datasets.synthetic import render_sample

__all__ = ["main", "train"]

SIZE: int = 64
NORMAL: int = 32
DEFECTIVE: int = 5
BATCH_NORMAL: int = 8
BATCH_DEFECTIVE: int = 2
DIM: int = 32
K: int = 32


def images(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(normal (32, 3, S, S), defective (5, 3, S, S), masks (5, S, S))`` of the generated ``grid`` category."""
    rng = np.random.default_rng(seed)
    normal = [render_sample("grid", SIZE, rng)[0] for _ in range(NORMAL)]
    drawn = [render_sample("grid", SIZE, rng, "scratch", 1.0) for _ in range(DEFECTIVE)]

    def stack(arrays: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255

    masks = torch.from_numpy(np.stack([m for _, m in drawn])).float()
    return stack(normal), stack([i for i, _ in drawn]), masks


class Autoencoder(nn.Module):
    """``(B, 3, 64, 64)`` -> z ``(B, 32, 16, 16)`` -> ``(B, 3, 64, 64)``."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU())
        self.bottleneck = nn.Conv2d(32, DIM, 1)
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(DIM, 16, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(16, 3, 4, 2, 1), nn.Sigmoid()
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.bottleneck(self.encoder(x))
        return z, self.decoder(z)


def train(seed: int, steps: int, lambda_dgc: float, frozen: bool) -> list[tuple[int, float, float]]:
    """Train one model; ``[(step, normal_similarity, prototypes_in_use)]`` at the first, middle and last step."""
    normal, defective, masks = images(seed)
    torch.manual_seed(seed)
    model = Autoencoder()
    if frozen:
        model.encoder.requires_grad_(False)
    arcad = torch_arcad.ArcAD(DIM, K, lambda_dgc=lambda_dgc, seed=seed)
    params = [p for p in model.parameters() if p.requires_grad] + list(arcad.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    out = []
    for step in range(steps):
        n = torch.randperm(NORMAL, generator=generator)[:BATCH_NORMAL]
        d = torch.randperm(DEFECTIVE, generator=generator)[:BATCH_DEFECTIVE]
        x = torch.cat([normal[n], defective[d]])
        m = torch.cat([torch.zeros(BATCH_NORMAL, SIZE, SIZE), masks[d]])
        labels = torch.cat([torch.zeros(BATCH_NORMAL), torch.ones(BATCH_DEFECTIVE)]).long()
        z, reconstruction = model(x)
        recon = F.mse_loss(reconstruction[:BATCH_NORMAL], x[:BATCH_NORMAL])  # the decoder learns normal images only
        result = arcad(z, masks=m, labels=labels)
        optimizer.zero_grad()
        (recon + result.loss).backward()
        optimizer.step()
        if step in (0, steps // 2, steps - 1) and bool(result.stats["initialized"]):
            out.append((step, float(result.stats["normal_similarity"]), float(result.stats["prototypes_in_use"])))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print("| encoder | lambda_dgc | seed | normal similarity (first / middle / last step) | prototypes in use |")
    print("|---|---|---|---|---|")
    for frozen in (False, True):
        for lambda_dgc in (0.1, 0.0):
            for seed in args.seeds:
                rows = train(seed, args.steps, lambda_dgc, frozen)
                sims = " / ".join(f"{s:.2f}" for _, s, _ in rows)
                used = " / ".join(f"{u:.0f}" for _, _, u in rows)
                print(f"| {'frozen' if frozen else 'scratch'} | {lambda_dgc} | {seed} | {sims} | {used} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
