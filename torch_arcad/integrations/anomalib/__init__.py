"""ArcAD in anomalib: its ``ReverseDistillation`` and ``Dinomaly`` trained on a cold-start split, in its ``Engine``.

Install with ``pip install "torch-arcad[anomalib]"`` (anomalib 2.7). This module is the only one of the package
that imports anomalib. What it adds to anomalib, without copying any of its model code:

- :class:`ArcADReverseDistillation` and :class:`ArcADDinomaly`: anomalib's models with ArcAD attached. ``z`` is taken
  by a forward hook on the model's bottleneck (RD4AD's OCBE output ``(B, 512 * expansion, h, w)``; Dinomaly's
  bottleneck MLP output ``(B, 1 + registers + h * w, D)``). The training step computes anomalib's own
  reconstruction loss on the normal images of the batch only and adds ``arcad(z, masks, labels).loss``;
  ArcAD's discriminator joins the optimiser, in a parameter group that the model's learning-rate scheduler
  also drives; ArcAD's terms are logged through Lightning (``train_recon_loss``, ``arcad_loss``, ``arcad_spm``,
  ``arcad_dgc``, ``arcad_cls``). Inference is anomalib's (``self.model`` is untouched); with ``arcad_maps=True``
  the validation, test and predict batches also carry ArcAD's prototype-distance and discriminator maps. ArcAD's
  state (prototypes, discriminator) is part of the Lightning checkpoint.
- :class:`SteppedDinomaly`: anomalib's ``Dinomaly`` with its warm-up/cosine schedule stepped once per optimiser
  step, as the schedule is defined (anomalib 2.7 returns it without ``interval="step"``, so under ``Engine`` it
  advances once per epoch and the learning rate stays 0 for the whole first epoch). The baseline to compare
  :class:`ArcADDinomaly` with.
- :class:`ColdStartMVTecAD` and :class:`ColdStartFolder`: anomalib's ``MVTecAD`` / ``Folder`` datamodules whose
  train and test sets follow the cold-start split of :func:`torch_arcad.coldstart.make_split` (section 4.1):
  the split's defective images go to training with their masks (``train_defects=False`` keeps only the split's
  normal images, for the baseline), and ``defects_per_batch=k`` guarantees k defective images in every batch
  (:class:`DefectBatchSampler`).
- :func:`timm_weights`: where anomalib's timm backbones take their pretrained weights from: a local file (for
  machines without access to the Hugging Face hub), ``"random"`` (tests, smoke runs), or the hub with a clear
  :class:`BackboneWeightsError` when the weights cannot be obtained. The models take it as ``backbone_weights``.
"""

from __future__ import annotations

try:
    import anomalib  # noqa: F401
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "torch_arcad.integrations.anomalib needs anomalib: pip install \"torch-arcad[anomalib]\""
    ) from error

from .data import ColdStartFolder, ColdStartMVTecAD, DefectBatchSampler
from .models import ArcADDinomaly, ArcADReverseDistillation, SteppedDinomaly
from .weights import RANDOM_WEIGHTS, BackboneWeightsError, timm_weights

__all__ = [
    "RANDOM_WEIGHTS",
    "ArcADDinomaly",
    "ArcADReverseDistillation",
    "BackboneWeightsError",
    "ColdStartFolder",
    "ColdStartMVTecAD",
    "DefectBatchSampler",
    "SteppedDinomaly",
    "timm_weights",
]
