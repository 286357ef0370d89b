"""Where anomalib's timm backbones take their pretrained weights from: a local file, random, or the hub.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Union

from torch import nn


import timm


PathLike = Union[str, "os.PathLike[str]"]

#: ``backbone_weights`` value for a randomly initialised backbone (tests and smoke runs: results mean nothing).
RANDOM_WEIGHTS = "random"


# ---------------------------------------------------------------------------------------------- backbone weights


class BackboneWeightsError(RuntimeError):
    """The pretrained weights of a backbone could not be obtained (no network, no cache, or a bad local file)."""


def _check_weights(weights: PathLike | None) -> str | None:
    if weights is None or weights == RANDOM_WEIGHTS:
        return weights
    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError(f"backbone_weights must be None, {RANDOM_WEIGHTS!r} or a file path, got {weights!r}")
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"backbone_weights={str(weights)!r} is not a file: give the path of the backbone's weights "
            "(a timm / torchvision state dict, .safetensors, .pth or .bin)"
        )
    return str(path.resolve())


@contextlib.contextmanager
def timm_weights(weights: PathLike | None) -> Iterator[None]:
    """Within the block, every timm model created with ``pretrained=True`` takes its weights from ``weights``.

    anomalib's backbones are ``timm.create_model(name, pretrained=...)`` calls (anomalib's ``Dinomaly`` always
    asks for pretrained weights); this decides where they come from:

    - ``None``: timm's default source (the Hugging Face hub, or its local cache). When that fails (no network
      and no cached copy), :class:`BackboneWeightsError` says so and names the two ways out.
    - a path: the weights are loaded from that file through timm's ``pretrained_cfg_overlay=dict(file=...)``,
      so timm adapts them exactly as it adapts downloaded ones (classifier dropped for feature extraction).
    - ``"random"``: the backbone keeps its random initialisation (tests; the detector's scores then mean
      nothing).

    Example::

        with timm_weights("~/weights/wide_resnet50_2.safetensors"):
            model = ReverseDistillation()  # anomalib's own class
    """
    weights = _check_weights(weights)
    original = timm.create_model

    def create_model(model_name: str, pretrained: bool = False, *args: Any, **kwargs: Any) -> nn.Module:
        if not pretrained or weights == RANDOM_WEIGHTS:
            return original(model_name, False, *args, **kwargs)
        if weights is not None:
            overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
            overlay["file"] = weights
            try:
                return original(model_name, True, *args, pretrained_cfg_overlay=overlay, **kwargs)
            except Exception as error:
                raise BackboneWeightsError(
                    f"could not load the weights of {model_name!r} from {weights}: {error}"
                ) from error
        try:
            return original(model_name, True, *args, **kwargs)
        except Exception as error:
            raise BackboneWeightsError(
                f"could not obtain the pretrained weights of {model_name!r} ({type(error).__name__}: {error}). "
                "timm downloads them from the Hugging Face hub; without network access give a local file: "
                "backbone_weights='/path/to/weights.safetensors' (the model's timm state dict, e.g. copied from "
                "a machine where `timm.create_model(name, pretrained=True)` worked), or "
                f"backbone_weights={RANDOM_WEIGHTS!r} for a randomly initialised backbone (tests only: the scores "
                "then mean nothing)"
            ) from error

    timm.create_model = create_model
    try:
        yield
    finally:
        timm.create_model = original


