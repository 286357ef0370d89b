"""The list of arms: one entry each, record-only arms refused for training, options the library accepts."""

from __future__ import annotations

import pytest

import torch_arcad
from benchmarks.coldstart import arms
from benchmarks.coldstart.arms import ARMS, Arm, get_arm


def test_arm_names_are_unique_and_the_default_arms_come_first() -> None:
    assert len(set(arms.ARM_NAMES)) == len(ARMS)
    assert arms.ARM_NAMES[:2] == arms.DEFAULT_ARMS == ("baseline", "arcad")
    assert len({arm.label for arm in ARMS}) == len(ARMS)  # a table line names its arm unambiguously


def test_only_the_baseline_trains_without_arcad() -> None:
    assert [arm.name for arm in ARMS if not arm.arcad] == ["baseline"]
    with pytest.raises(ValueError, match="without ArcAD"):
        Arm("plain", "plain", terms=(True, False, False), arcad=False)


def test_lambdas_keep_the_terms_an_arm_names() -> None:
    base = (0.1, 0.2, 0.3)
    assert get_arm("arcad").lambdas(base) == base
    assert get_arm("spm").lambdas(base) == (0.1, 0.0, 0.0)
    assert get_arm("spm_dgc").lambdas(base) == (0.1, 0.2, 0.0)
    assert get_arm("cls").lambdas(base) == (0.0, 0.0, 0.3)
    with pytest.raises(ValueError, match="three lambdas"):
        Arm("two", "two", terms=(True, False))  # type: ignore[arg-type]


def test_an_arm_is_frozen_and_so_are_its_options() -> None:
    arm = get_arm("mask_quarter")
    with pytest.raises(AttributeError):
        arm.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        arm.arcad_options["mask_threshold"] = 0.5  # type: ignore[index]


def test_unknown_arms_name_the_known_ones() -> None:
    with pytest.raises(ValueError, match="known arms: baseline, arcad"):
        get_arm("nope")


def test_record_only_arms_say_why_and_are_not_trainable() -> None:
    record_only = {arm.name for arm in ARMS if not arm.trainable}
    assert record_only == {"sigma_dim", "focal_balanced", "sigma_dim_balanced", "cls_detached", "mask_fraction_mean",
                           "noise_range", "push_margin", "disc_distance"}
    for name in record_only:
        assert "removed from the library" in get_arm(name).removed
    assert set(arms.trainable_arms()) == set(arms.ARM_NAMES) - record_only


@pytest.mark.parametrize("name", [arm.name for arm in ARMS if arm.trainable and arm.arcad_options])
def test_every_trainable_arm_s_options_are_accepted_by_arcad(name: str) -> None:
    """A trainable arm may only use options the library still has (a removed option makes the arm record-only)."""
    module = torch_arcad.ArcAD(dim=8, num_prototypes=2, **get_arm(name).arcad_options)
    assert isinstance(module, torch_arcad.ArcAD)


def test_every_stored_run_was_made_with_its_arm_s_lambdas_options_and_harness_settings() -> None:
    """The list describes the stored runs, record-only arms included: each run's resolved harness configuration has
    its arm's ArcAD options, harness settings and lambdas (the benchmark's lambdas with the arm's terms kept)."""
    from benchmarks.coldstart import load_runs

    from helpers import REPO_ROOT

    seen = set()
    for record in load_runs(REPO_ROOT / "benchmarks" / "results" / "bench256"):
        arm = get_arm(record.arm)
        config = record.harness_config
        assert config["arcad"] is arm.arcad
        assert config.get("arcad_options", {}) == dict(arm.arcad_options), record.key
        for key, value in arm.harness_options.items():
            assert config[key] == value, record.key
        if arm.arcad:
            assert tuple(config["lambdas"]) == pytest.approx(arm.lambdas(record.settings["lambdas"])), record.key
        seen.add(arm.name)
    assert {"mask_fraction_mean", "noise_range", "push_margin", "disc_distance"} <= seen  # record-only, stored
