import dataclasses

import pytest

from torch_arcad import PRESETS, ArcAD, ArcADConfig, get_preset


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


@pytest.mark.parametrize(
    ("setting", "value", "error", "match"),
    [
        ("lambda_dgc", -1.0, ValueError, "lambda_dgc must be >= 0"),
        ("temperature", 0.0, ValueError, "temperature must be > 0"),
        ("epsilon", float("inf"), ValueError, "epsilon must be > 0 and finite"),
        ("momentum", 1.5, ValueError, r"momentum must be in \[0, 1\]"),
        ("alpha", -0.1, ValueError, r"alpha must be in \[0, 1\]"),
        ("mask_level", 1.0, ValueError, r"mask_level must be in \[0, 1\)"),
        ("mask_threshold", 1.0, ValueError, r"mask_threshold must be in \[0, 1\)"),
        ("sinkhorn_iterations", -1, ValueError, "sinkhorn_iterations must be >= 0"),
        ("num_candidates", 0, ValueError, "num_candidates must be >= 1"),
        ("num_candidates", 2.0, TypeError, "num_candidates must be an int"),
        ("hidden_dim", 0, ValueError, "hidden_dim must be >= 1"),
        ("seed", "0", TypeError, "seed must be an int"),
        ("clamp_push", 1, TypeError, "clamp_push must be a bool"),
        ("mask_weighting", "fraction_mean", ValueError, "mask_weighting must be one of"),
        ("cls_weighting", "classes", ValueError, "cls_weighting must be one of"),
        ("discriminator_norm", "layer", ValueError, "discriminator_norm must be one of"),
    ],
)
def test_every_setting_is_checked_where_it_is_defined(setting, value, error, match):
    with pytest.raises(error, match=match):
        ArcADConfig(**{setting: value})
    with pytest.raises(error, match=match):  # the same check, reached through the constructor's overrides
        ArcAD(12, 4, **{setting: value})


def test_config_is_frozen_and_the_presets_are_instances():
    assert all(isinstance(config, ArcADConfig) for config in PRESETS.values())
    with pytest.raises(dataclasses.FrozenInstanceError):
        PRESETS["paper"].sigma = 0.1
    assert get_preset(PRESETS["official"], sigma=0.02) == dataclasses.replace(PRESETS["official"], sigma=0.02)
    assert PRESETS["paper"].changes() == {}
    assert set(PRESETS["official"].changes()) == {
        f.name for f in dataclasses.fields(ArcADConfig)
        if getattr(PRESETS["official"], f.name) != getattr(PRESETS["paper"], f.name)
    }


def test_repr_shows_the_whole_configuration():
    model = ArcAD(12, 4, preset="official", lambda_dgc=0.05, mask_threshold=0.25)
    text = repr(model)
    for field in dataclasses.fields(ArcADConfig):
        assert f"{field.name}={getattr(model.config, field.name)!r}" in text
    assert "lambda_dgc=0.05" in text and "preset='official'" in text
    assert model.config.lambda_dgc == 0.05 and model.weighting.threshold == 0.25


def test_a_config_object_is_a_preset():
    config = get_preset("official", num_candidates=3)
    model = ArcAD(12, 4, preset=config)
    assert model.config == config and model.preset == "custom" and model.synthesizer.num_candidates == 3


def test_removed_options_are_unknown_settings():
    for name in ("sigma_max", "push_margin", "discriminator_distance", "detach_cls", "detach_synthetic",
                 "sigma_reference_dim"):
        with pytest.raises(ValueError, match="unknown preset settings"):
            ArcAD(12, 4, **{name: 1})
