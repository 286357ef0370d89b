"""ArcAD inside other training frameworks, one module each, each with its own optional extra.

- :mod:`torch_arcad.integrations.anomalib`: anomalib's ``ReverseDistillation`` and ``Dinomaly`` trained with ArcAD
  on a cold-start split, in anomalib's ``Engine`` (``pip install "torch-arcad[anomalib]"``).

Nothing here is imported by ``import torch_arcad``: the core library needs only torch, numpy and einops.
"""
