import dataclasses

import pytest

from torch_arcad import PRESETS, ArcAD, get_preset


def test_official_differs_from_paper_at_every_deviation():
    paper, official = PRESETS["paper"], PRESETS["official"]
    differing = {f.name for f in dataclasses.fields(paper) if getattr(paper, f.name) != getattr(official, f.name)}
    assert differing == {
        "num_candidates",
        "clamp_push",
        "cls_anomalies",
        "cls_weighting",
        "discriminator_norm",
        "mask_level",
        "few_patch_assignment",
        "ema_before_synthesis",
        "pool_without_normals",
        "discriminator_batches",
        "discriminator_init",
    }
    assert official.num_candidates == 50 and paper.num_candidates == 5
    # shared settings match the released code's values
    assert paper.sigma == official.sigma == 0.015
    assert paper.epsilon == 0.05 and paper.sinkhorn_iterations == 3 and paper.momentum == 0.99
    assert paper.temperature == 0.1 and paper.alpha == 0.75 and paper.gamma == 2.0


def test_overrides_and_errors():
    assert get_preset("official", num_candidates=7).num_candidates == 7
    assert get_preset("paper", sigma=None).sigma == 0.015
    with pytest.raises(ValueError, match="preset must be one of"):
        get_preset("papr")
    with pytest.raises(ValueError, match="unknown preset settings"):
        get_preset("paper", sigmaa=0.1)


def test_arcad_applies_the_preset():
    model = ArcAD(12, 4, preset="official")
    assert model.synthesizer.num_candidates == 50
    assert model.calibration.clamp_push
    assert any(type(m).__name__ == "BatchNorm1d" for m in model.discriminator.modules())
    model = ArcAD(12, 4, preset="official", num_candidates=3, discriminator_norm="none")
    assert model.synthesizer.num_candidates == 3
    assert not any(type(m).__name__ == "BatchNorm1d" for m in model.discriminator.modules())
    with pytest.raises(ValueError, match="preset"):
        ArcAD(12, 4, preset="unknown")
