"""Frozen-encoder feature cache: each image's encoder features are computed once and reused at every step.

RD4AD's and Dinomaly's encoders, and ReContrast's frozen branch, are frozen (eval mode, no gradient) and the
training images are not augmented, so the encoder's output for an image never changes during a run. On a CPU the
encoder's forward pass is most of a training step (EfficientNet-Lite0 at 256 px: about 85% of an RD4AD step), so
the harness computes it once per image and hands the stored features to the detector with each batch
(:attr:`arcad_harness.data.Batch.features`).

The store is keyed by the encoder's weights (a digest of its state dict), the image size and the image's path, so
the two arms of a comparison, the fused-score fit and the evaluation of every run of a benchmark on one split share
one computation. Features are kept on the CPU, in memory (``"memory"``, up to :data:`MEMORY_BUDGET_BYTES`, the
oldest encoder's entries dropped first) or in files under a folder (``"disk"`` mode, one file per image, read
memory-mapped) for sets too large for memory. ``"off"`` runs the encoder at every step.

Results are the same with and without the cache: the frozen encoder processes each image independently (eval-mode
BatchNorm, no dropout), so features differ only by the rounding of batched convolutions over other batch
compositions (about 1e-7 relative); ``tests/harness/test_cache.py`` checks losses and metrics on a tiny set. An image is
identified by its path, modification time and size.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["CACHE_MODES", "FeatureStore", "encoder_digest", "get_store", "parse_cache_mode"]

#: ``memory``: features in RAM; ``disk:<folder>`` or ``disk`` with a folder: one file per image; ``off``: no cache.
CACHE_MODES: tuple[str, ...] = ("memory", "disk", "off")
#: Largest total size of the in-memory store (bytes). EfficientNet-Lite0 at 256 px: 0.66 MiB per image (RD4AD,
#: ReContrast), 0.53 MiB (Dinomaly tokens), so 8 GiB holds more than 10,000 images.
MEMORY_BUDGET_BYTES: int = 8 * 1024**3
#: Characters of the hex digests used in keys and file names.
DIGEST_CHARS: int = 16


def encoder_digest(encoder: nn.Module) -> str:
    """A digest of a module's type and state dict (parameters and buffers, names, shapes and values).

    Two encoders with the same digest compute the same features; a fine-tuned or differently initialised copy
    gets another digest.
    """
    digest = hashlib.sha256(type(encoder).__qualname__.encode())
    for name, tensor in encoder.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:DIGEST_CHARS]


class FeatureStore:
    """Per-image encoder features, computed once by :meth:`features`.

    Args:
        folder: ``None`` keeps features in memory; a folder writes one ``.pt`` file per (encoder, image size, image)
            there and reads it memory-mapped.
        budget_bytes: largest total size kept in memory (``folder=None`` only).
    """

    def __init__(self, folder: str | Path | None = None, budget_bytes: int = MEMORY_BUDGET_BYTES) -> None:
        self.folder = Path(folder).expanduser() if folder is not None else None
        self.budget_bytes = int(budget_bytes)
        self._memory: OrderedDict[str, list[Tensor]] = OrderedDict()
        self._bytes = 0
        self.computed = 0  # images encoded
        self.reused = 0  # images served from the store

    def __len__(self) -> int:
        return len(self._memory) if self.folder is None else sum(1 for _ in self.folder.glob("*/*.pt"))

    def _key(self, digest: str, image_size: int, path: str) -> str:
        identity = path
        if os.path.isfile(path):  # a rewritten file is a new image
            stat = os.stat(path)
            identity = f"{path}:{stat.st_mtime_ns}:{stat.st_size}"
        return f"{digest}-{image_size}-{hashlib.sha256(identity.encode()).hexdigest()[:DIGEST_CHARS]}"

    def _file(self, key: str) -> Path:
        assert self.folder is not None
        return self.folder / key[: DIGEST_CHARS] / f"{key}.pt"

    def _get(self, key: str) -> list[Tensor] | None:
        if self.folder is None:
            found = self._memory.get(key)
            if found is not None:
                self._memory.move_to_end(key)
            return found
        file = self._file(key)
        return torch.load(file, mmap=True, weights_only=True) if file.is_file() else None

    def _put(self, key: str, features: list[Tensor]) -> None:
        if self.folder is None:
            size = sum(t.numel() * t.element_size() for t in features)
            self._memory[key] = features
            self._bytes += size
            while self._bytes > self.budget_bytes and len(self._memory) > 1:
                _, dropped = self._memory.popitem(last=False)
                self._bytes -= sum(t.numel() * t.element_size() for t in dropped)
            return
        file = self._file(key)
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(f".{file.name}.tmp")
        torch.save(features, tmp)
        tmp.replace(file)

    @torch.no_grad()
    def features(
        self,
        encode: nn.Module,
        images: Tensor,
        paths: Sequence[str],
        image_size: int,
        digest: str,
        batch_size: int,
    ) -> list[Tensor]:
        """The encoder's output for ``images``, computed for the images not yet stored.

        Args:
            encode: the frozen encoder (called in its current mode; the harness keeps it in eval mode).
            images: float (B, 3, H, W) in [0, 1], on the encoder's device.
            paths: the B images' paths (their identity in the store).
            image_size: the side the images were resized to.
            digest: :func:`encoder_digest` of the encoder.
            batch_size: images per encoder call for the missing ones.

        Returns:
            One tensor per encoder output, (B, ...) each, on ``images``'s device.
        """
        if images.shape[0] != len(paths):
            raise ValueError(f"expected one path per image, got {len(paths)} paths for {images.shape[0]} images")
        keys = [self._key(digest, image_size, p) for p in paths]
        found = [self._get(k) for k in keys]
        missing = [i for i, f in enumerate(found) if f is None]
        for start in range(0, len(missing), batch_size):
            chunk = missing[start : start + batch_size]
            outputs = encode(images[chunk])
            for j, i in enumerate(chunk):
                per_image = [o[j].detach().to("cpu", copy=True) for o in outputs]
                self._put(keys[i], per_image)
                found[i] = per_image
        self.computed += len(missing)
        self.reused += len(paths) - len(missing)
        layers = len(found[0])  # type: ignore[arg-type]
        return [
            torch.stack([f[layer] for f in found]).to(images.device)  # type: ignore[index]
            for layer in range(layers)
        ]


_STORES: dict[str, FeatureStore] = {}


def parse_cache_mode(mode: object) -> tuple[str, str]:
    """``(kind, folder)`` of a cache mode ``"memory"``, ``"off"`` or ``"disk:<folder>"``; ``ValueError`` otherwise."""
    kind, _, folder = str(mode).partition(":")
    if kind not in CACHE_MODES or (kind == "disk") != bool(folder):
        raise ValueError(f"feature_cache must be 'memory', 'off' or 'disk:<folder>', got {mode!r}")
    return kind, folder


def get_store(mode: str) -> FeatureStore | None:
    """The process-wide store of a cache mode: ``"memory"``, ``"disk:<folder>"`` or ``"off"`` (``None``)."""
    kind, folder = parse_cache_mode(mode)
    if kind == "off":
        return None
    if mode not in _STORES:
        _STORES[mode] = FeatureStore(folder or None)
    return _STORES[mode]
