"""ArcAD under bad or contradictory input: non-finite features, labels against masks, calls before the
prototypes exist, argument types and ranges, K against the batch, half precision."""

import warnings

import pytest
import torch

from torch_arcad import ArcAD, suggest_num_prototypes
from torch_arcad.prototypes import MIN_PATCHES_PER_PROTOTYPE

DIM, K, GRID, SIZE = 16, 6, 4, 32
STATS_KEYS = {"initialized", "num_normal", "num_anomalous", "num_calibrated", "num_nonfinite", "prototype_usage",
              "prototypes_in_use", "normal_similarity", "anomalous_similarity", "discriminator_accuracy"}


def make_batch(batch=4, defective=(3,)):
    features = torch.randn(batch, DIM, GRID, GRID)
    masks = torch.zeros(batch, SIZE, SIZE)
    for i in defective:
        masks[i, 4:14, 6:20] = 1
    return features, masks


def ready(preset="paper", **kwargs):
    model = ArcAD(DIM, K, preset=preset, **kwargs)
    model.prototypes.init_prototypes(torch.randn(64, DIM))
    return model


def all_finite(*tensors):
    return all(bool(torch.isfinite(t).all()) for t in tensors)


@pytest.mark.parametrize("preset", ["paper", "official"])
def test_nan_in_a_normal_and_a_defective_patch_never_poisons_training(preset):
    torch.manual_seed(0)
    model = ready(preset)
    bottleneck = torch.nn.Conv2d(DIM, DIM, 1)
    optimizer = torch.optim.AdamW(list(bottleneck.parameters()) + list(model.parameters()), lr=1e-2)
    features, masks = make_batch()
    z = bottleneck(features)
    poison = torch.zeros_like(z)
    poison[0, :, 1, 2] = float("nan")  # a normal image's patch
    poison[3, 5, 1, 2] = float("inf")  # a defective patch, inside the mask (rows 4-13 -> grid row 1, cols 6-19 -> 2)
    with pytest.warns(UserWarning, match="NaN or inf"):
        out = model(z + poison, masks=masks)
    assert all_finite(out.loss, out.spm, out.dgc, out.cls)
    assert out.stats["num_nonfinite"].item() == 2
    assert out.stats["num_normal"].item() == 3 * GRID * GRID - 1
    optimizer.zero_grad()
    out.loss.backward()
    assert all_finite(*(p.grad for p in model.parameters()), *(p.grad for p in bottleneck.parameters()))
    optimizer.step()
    assert all_finite(*model.parameters(), *bottleneck.parameters(), model.prototypes.prototypes)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # clean input: no warning, and the non-finite one is not repeated
        clean = model(bottleneck(features), masks=masks)
    optimizer.zero_grad()
    clean.loss.backward()
    optimizer.step()
    assert all_finite(clean.loss, *model.parameters(), model.prototypes.prototypes)
    assert clean.loss.item() > 0 and clean.stats["num_nonfinite"].item() == 0
    scores = model.score(features)
    assert all_finite(scores.prototype, scores.discriminator)


def test_a_non_finite_patch_has_no_influence_on_any_term():
    # The same batch with the bad patch holding other garbage gives the same losses and gradients, and the
    # gradient of the bad patch itself is zero.
    features, masks = make_batch()
    results = []
    for value in (float("nan"), 1e30 * float("inf"), -float("inf")):
        torch.manual_seed(0)
        model = ready("official")
        x = features.clone()
        x[1, :, 2, 2] = value
        x.requires_grad_(True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = model(x, masks=masks)
        out.loss.backward()
        assert torch.all(x.grad[1, :, 2, 2] == 0)
        results.append((out.loss, out.spm, out.dgc, out.cls, model.discriminator.net[0].weight.grad, x.grad))
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert torch.equal(a, b)


def test_each_input_warning_is_issued_once():
    model = ready()
    features, masks = make_batch()
    features[0, 0, 0, 0] = float("nan")
    labels = torch.zeros(4)  # image 3 has a defect mask but label 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            model(features, masks=masks, labels=labels)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2, messages
    assert sum("NaN or inf" in m for m in messages) == 1
    assert sum("labelled normal" in m and "defect pixels" in m for m in messages) == 1
    assert all(w.filename == __file__ for w in caught)  # they point at the caller's line


def test_normal_label_with_a_defect_mask_is_treated_as_normal():
    model = ready().eval()
    features, masks = make_batch()
    with pytest.warns(UserWarning, match="labelled normal"):
        out = model(features, masks=masks, labels=torch.zeros(4))
    assert out.stats["num_normal"].item() == 4 * GRID * GRID
    assert out.stats["num_anomalous"].item() == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        derived = ArcAD(DIM, K)
        derived.prototypes.init_prototypes(torch.randn(64, DIM))
        assert derived(features, masks=masks).stats["num_anomalous"].item() > 0  # labels from the masks: no warning


def test_stats_have_the_same_keys_before_and_after_initialisation():
    model = ArcAD(DIM, K, init_factor=4)  # 24 normal patches needed, 16 per step
    features, masks = make_batch(batch=2, defective=(1,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # K = 6 for 16 normal patches: the K warning
        before = model(features, masks=masks).stats
        assert not model.initialized
        after = model(features, masks=masks).stats
    assert model.initialized
    assert set(before) == set(after) == STATS_KEYS
    for key in STATS_KEYS:
        assert before[key].shape == after[key].shape and before[key].dtype == after[key].dtype, key
    assert before["num_normal"].item() == GRID * GRID and before["num_anomalous"].item() > 0
    assert not before["prototype_usage"].any() and torch.isnan(before["discriminator_accuracy"]).all()


def test_score_before_initialisation_is_an_error():
    model = ArcAD(DIM, K)
    with pytest.raises(RuntimeError, match="init_prototypes"):
        model.score(torch.randn(2, DIM, GRID, GRID))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"num_prototypes": 2.5}, TypeError, "num_prototypes must be an int"),
        ({"num_prototypes": 0}, ValueError, "num_prototypes must be >= 1"),
        ({"num_prototypes": True}, TypeError, "num_prototypes must be an int"),
        ({"hidden_dim": 0}, ValueError, "hidden_dim must be >= 1"),
        ({"hidden_dim": 8.0}, TypeError, "hidden_dim must be an int"),
        ({"lambda_spm": -0.1}, ValueError, "lambda_spm must be >= 0"),
        ({"lambda_dgc": float("nan")}, ValueError, "lambda_dgc must be >= 0 and finite"),
        ({"lambda_cls": "0.1"}, TypeError, "lambda_cls must be a number"),
        ({"prefix_tokens": -1}, ValueError, "prefix_tokens must be >= 0"),
        ({"init_factor": 0.5}, ValueError, "init_factor must be >= 1"),
        ({"mask_threshold": "0"}, TypeError, "mask_threshold must be a number"),
    ],
)
def test_constructor_arguments_are_checked(kwargs, error, match):
    with pytest.raises(error, match=match):
        ArcAD(**{"dim": DIM, **kwargs})
    with pytest.raises(TypeError, match="dim must be an int"):
        ArcAD(16.0)


@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8, torch.bool])
def test_integer_features_are_an_error(dtype):
    model = ready()
    features = torch.ones(2, DIM, GRID, GRID, dtype=dtype)
    with pytest.raises(TypeError, match=r"floating-point tensor .* got torch\."):
        model(features)
    with pytest.raises(TypeError, match="floating-point"):
        model.score(features)


def test_too_many_prototypes_for_the_batch_warn_once_with_a_suggestion():
    model = ArcAD(DIM, 60)  # 4 images x 16 patches: about 1 patch per prototype
    features, masks = make_batch()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            model(features, masks=masks)
    assert len(caught) == 1 and caught[0].filename == __file__
    message = str(caught[0].message)
    # during initialisation the count is of the normal patches (3 normal images), and a K that fits is proposed
    assert "num_prototypes=60" in message and "48 normal patches" in message
    assert f"num_prototypes={suggest_num_prototypes(48)}" in message
    assert "exactly zero" not in message  # the suggestion (2) keeps L_spm


def test_a_suggestion_of_one_prototype_says_that_it_switches_l_spm_off():
    model = ArcAD(DIM, 8)
    with pytest.warns(UserWarning, match="16 normal patches") as caught:
        model(torch.randn(1, 16, DIM))  # tokens (B, N, D): 16 normal patches, K = 1 by the paper's ratio
    message = str(caught[0].message)
    assert suggest_num_prototypes(16) == 1 and "num_prototypes=1 " in message
    assert "L_spm (eq. 4) is exactly zero" in message


def test_one_prototype_gives_exactly_zero_l_spm():
    # what the warning above claims: the softmax over a single prototype is 1, its log 0, for every patch
    model = ArcAD(DIM, 1)
    model.prototypes.init_prototypes(torch.randn(8, DIM))
    features, masks = make_batch()
    out = model(features.requires_grad_(True), masks=masks)
    assert out.spm.item() == 0.0 and out.dgc.item() > 0.0


def test_initialised_prototypes_warn_from_the_batch_shape_alone():
    model = ArcAD(DIM, 20)  # 64 patches a step < 4 * 20
    model.prototypes.init_prototypes(torch.randn(64, DIM))
    with pytest.warns(UserWarning, match="num_prototypes=20 is large for the 64 normal patches"):
        model(torch.randn(4, DIM, GRID, GRID))


def test_a_suggested_k_does_not_warn():
    for batch, patches in ((1, 1), (1, 4), (1, 16), (2, 64), (1, 100), (1, 1024), (16, 784)):
        k = suggest_num_prototypes(batch * patches)
        model = ArcAD(DIM, k)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            model(torch.randn(batch, patches, DIM))


def test_suggest_num_prototypes():
    assert suggest_num_prototypes(16 * 784) == 500  # the paper's K for its batch
    assert suggest_num_prototypes(16 * 64) == 32
    assert suggest_num_prototypes(2 * 784) == 64
    assert suggest_num_prototypes(1) == 1
    for n in range(MIN_PATCHES_PER_PROTOTYPE, 20000, 7):
        k = suggest_num_prototypes(n)
        assert k & (k - 1) == 0 or k == 500
        assert n / k >= MIN_PATCHES_PER_PROTOTYPE
    with pytest.raises(ValueError, match=">= 1"):
        suggest_num_prototypes(0)
    with pytest.raises(TypeError, match="int"):
        suggest_num_prototypes(10.0)


@pytest.mark.parametrize("convert", ["half", "bfloat16"])
@pytest.mark.parametrize("preset", ["paper", "official"])
def test_half_precision_module_keeps_prototypes_and_losses_float32(convert, preset):
    torch.manual_seed(0)
    reference = ready(preset, sigma=0.0).eval()
    features, masks = make_batch()
    expected = reference(features, masks=masks)
    model = ready(preset, sigma=0.0).eval()
    model.load_state_dict(reference.state_dict())
    model = model.half() if convert == "half" else model.to(torch.bfloat16)
    dtype = torch.float16 if convert == "half" else torch.bfloat16
    assert model.prototypes.prototypes.dtype == torch.float32
    assert torch.equal(model.prototypes.prototypes, reference.prototypes.prototypes)  # not a rounded copy
    assert model.discriminator.net[0].weight.dtype == dtype
    for inputs in (features, features.to(dtype)):
        out = model(inputs, masks=masks)
        for name in ("loss", "spm", "dgc", "cls"):
            value = getattr(out, name)
            assert value.dtype == torch.float32 and torch.isfinite(value), name
            # one rounding of the discriminator's weights and inputs to 8 (bf16) or 11 (fp16) mantissa bits
            assert torch.allclose(value, getattr(expected, name), rtol=0.05, atol=0.02), name
    scores = model.score(features)
    assert scores.prototype.dtype == scores.discriminator.dtype == torch.float32
    assert torch.allclose(scores.discriminator, reference.score(features).discriminator, atol=0.02)
    train = model.train()
    x = features.clone().requires_grad_(True)
    train(x, masks=masks).loss.backward()
    assert x.grad.dtype == torch.float32 and torch.isfinite(x.grad).all()
    assert model.prototypes.prototypes.dtype == torch.float32


def test_a_defective_image_without_an_anomalous_patch_warns_once():
    model = ready(mask_threshold=0.5)
    features = torch.randn(4, DIM, GRID, GRID)
    masks = torch.zeros(4, SIZE, SIZE)
    masks[3, 10, :] = 1  # a 1-pixel line: an eighth of each patch it crosses, below the threshold
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            out = model(features, masks=masks)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "1 defective image(s) have no anomalous patch" in messages[0], messages
    assert caught[0].filename == __file__
    # derived from the mask, the image is defective: none of its patches is taken as normal, none is a real anomaly
    assert out.stats["num_normal"].item() == 3 * GRID * GRID and out.stats["num_anomalous"].item() == 0


def test_labels_without_masks_warn_once():
    model = ready()
    features = torch.randn(4, DIM, GRID, GRID)
    with pytest.warns(UserWarning, match="labelled defective but no masks were given") as caught:
        out = model(features, labels=torch.tensor([0, 0, 1, 1]))
    assert "2 image(s)" in str(caught[0].message)
    assert out.stats["num_normal"].item() == 2 * GRID * GRID and out.stats["num_anomalous"].item() == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(features, labels=torch.tensor([0, 0, 1, 1]))  # once only
        model(features)  # no labels, no masks: an all-normal batch, nothing to say


def test_the_k_warning_waits_for_a_batch_with_normal_patches():
    model = ArcAD(DIM, 60)
    features, masks = make_batch(defective=(0, 1, 2, 3))  # no normal image: nothing to say about K yet
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(features, masks=masks)
    features, masks = make_batch()  # 3 normal images: 48 normal patches for 60 prototypes
    with pytest.warns(UserWarning, match="num_prototypes=60 is large for the 48 normal patches"):
        model(features, masks=masks)


def test_the_wrong_dimension_names_the_callers_shape():
    model = ArcAD(DIM, K, prefix_tokens=1)
    with pytest.raises(ValueError, match=r"\(B, N, D\) with D = dim = 16, got shape \(2, 17, 8\)"):
        model(torch.randn(2, 17, 8))


def test_similarity_and_usage_stats_match_a_transcription():
    torch.manual_seed(1)
    model = ready().eval()
    features, masks = make_batch()
    mu = model.prototypes.prototypes.clone()  # the step's (pre-update) prototypes
    stats = model(features, masks=masks).stats
    z = torch.nn.functional.normalize(features.permute(0, 2, 3, 1).reshape(4, GRID * GRID, DIM), dim=-1)
    best, nearest = (z @ mu.t()).max(dim=-1)
    anomalous = torch.nn.functional.adaptive_max_pool2d(masks[3][None, None], GRID).flatten() > 0
    torch.testing.assert_close(stats["normal_similarity"], best[:3].mean())
    torch.testing.assert_close(stats["anomalous_similarity"], best[3][anomalous].mean())
    assert stats["prototypes_in_use"].item() == len(set(nearest[:3].flatten().tolist()))
    assert torch.equal(stats["prototype_usage"], torch.bincount(nearest[:3].flatten(), minlength=K).float())


def test_similarity_stats_are_nan_without_the_patches_they_average():
    model = ready()
    features, masks = make_batch(defective=())
    stats = model(features, masks=masks).stats
    assert torch.isnan(stats["anomalous_similarity"]) and torch.isfinite(stats["normal_similarity"])
    before = ArcAD(DIM, K, init_factor=100)(features, masks=masks).stats  # 600 patches needed, 64 given
    assert torch.isnan(before["normal_similarity"]) and before["prototypes_in_use"].item() == 0
