import pytest
import torch
import torch.nn.functional as F

from torch_arcad import ArcAD
from torch_arcad.functional import sinkhorn_knopp

DIM, K, GRID, SIZE = 16, 6, 4, 32


def make_batch(batch=4, defective=(3,), requires_grad=True):
    features = torch.randn(batch, DIM, GRID, GRID, requires_grad=requires_grad)
    masks = torch.zeros(batch, SIZE, SIZE)
    for i in defective:
        masks[i, 4:14, 6:20] = 1
    return features, masks


def ready(preset="paper", **kwargs):
    model = ArcAD(DIM, K, preset=preset, sigma=0.0, **kwargs)
    model.prototypes.init_prototypes(torch.randn(64, DIM))
    return model


def focal(x, y, alpha=0.75, gamma=2.0):
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    pt = p * y + (1 - p) * (1 - y)
    return ce * (1 - pt) ** gamma * (alpha * y + (1 - alpha) * (1 - y))


def transcription(model, features, masks, preset):
    """Eq. 4, 7, 8, 9 and 10 by boolean selection, written independently of the library's weighting."""
    mu = model.prototypes.prototypes.clone()
    z = F.normalize(features.flatten(2).transpose(1, 2), dim=-1)  # (B, P, D)
    patch = F.adaptive_max_pool2d(masks.unsqueeze(1), GRID).flatten(1) > 0  # (B, P)
    defective = patch.any(1)
    normal = z[~defective].reshape(-1, DIM)
    anomalies = z[patch & defective[:, None]]
    synthetic = normal  # sigma = 0: every candidate equals its anchor
    q = sinkhorn_knopp(normal.detach() @ mu.t(), 0.05, 3)
    spm = -(q * torch.log_softmax(normal @ mu.t() / 0.1, dim=1)).sum(1).mean()
    push = (anomalies @ mu.t()).amax(1)
    if preset == "official":
        push = push.relu()
    pull = 1 - (anomalies @ synthetic.detach().t()).mean(1)
    dgc = (push + pull).mean() if len(anomalies) else torch.zeros(())
    real_cls = anomalies if preset == "paper" else z[defective].reshape(-1, DIM)
    disc = model.discriminator
    logits = disc(torch.cat([normal, synthetic, real_cls]))
    n, s = len(normal), len(synthetic)
    fn, fs, fr = logits[:n], logits[n : n + s], logits[n + s :]
    if preset == "paper":
        y = torch.cat([torch.zeros(n), torch.ones(s + len(real_cls))])
        cls = focal(logits, y).mean()
    else:
        cls = 0.5 * (focal(fn, torch.zeros(n)).mean() + focal(fs, torch.ones(s)).mean()) + focal(
            fr, torch.ones(len(fr))
        ).mean()
    return spm, dgc, cls


@pytest.mark.parametrize("preset", ["paper", "official"])
def test_terms_match_an_independent_transcription(preset):
    model = ready(preset).eval()  # eval: BatchNorm statistics do not depend on which rows share the batch
    features, masks = make_batch()
    spm, dgc, cls = transcription(model, features, masks, preset)
    out = model(features, masks=masks)
    assert torch.allclose(out.spm, spm, atol=1e-5)
    assert torch.allclose(out.dgc, dgc, atol=1e-5)
    assert torch.allclose(out.cls, cls, atol=1e-5)
    assert torch.allclose(out.loss, 0.1 * (spm + dgc + cls), atol=1e-5)
    assert out.stats["num_normal"].item() == 3 * GRID * GRID
    assert out.stats["num_anomalous"].item() == int((F.adaptive_max_pool2d(masks[3:4], GRID) > 0).sum())


def test_lambdas_weight_the_terms():
    model = ready(lambda_spm=1.0, lambda_dgc=2.0, lambda_cls=3.0).eval()
    features, masks = make_batch()
    out = model(features, masks=masks)
    assert torch.allclose(out.loss, out.spm + 2 * out.dgc + 3 * out.cls, atol=1e-6)


def test_tokens_with_prefix_equal_maps():
    model = ready().eval()
    features, masks = make_batch(requires_grad=False)
    tokens = torch.cat([torch.randn(4, 5, DIM), features.flatten(2).transpose(1, 2)], dim=1)
    a = model(features, masks=masks)
    model.prefix_tokens = 5
    b = model(tokens, masks=masks)
    assert torch.allclose(a.loss, b.loss, atol=1e-6)


def test_gradient_routing():
    model = ready()
    features, masks = make_batch()
    out = model(features, masks=masks)
    params = list(model.discriminator.parameters())
    # the discriminator is reached by L_cls only
    grads = torch.autograd.grad(out.spm + out.dgc, params, allow_unused=True, retain_graph=True)
    assert all(g is None or not g.any() for g in grads)
    total = torch.autograd.grad(out.loss, params, retain_graph=True)
    from_cls = torch.autograd.grad(model.lambda_cls * out.cls, params, retain_graph=True)
    for a, b in zip(total, from_cls):
        assert torch.allclose(a, b)
    # every term reaches the bottleneck features; the prototypes get nothing
    for term in (out.spm, out.dgc, out.cls):
        (grad,) = torch.autograd.grad(term, features, retain_graph=True)
        assert grad.abs().sum() > 0
    out.loss.backward()
    assert model.prototypes.prototypes.grad is None
    assert list(model.parameters()) == params


def test_only_the_discriminator_is_trainable():
    model = ArcAD(DIM, K)
    names = [name for name, _ in model.named_parameters()]
    assert names and all(name.startswith("discriminator.") for name in names)


@pytest.mark.parametrize("detach", [False, True])
def test_synthetic_features_carry_gradient_unless_detached(detach):
    # sigma = 0: each pseudo-anomaly equals its anchor, so L_cls over an all-normal batch is
    # (sum_i FL(d(z_i), 0) + sum_i FL(d(a_i), 1)) / 2N, and the second sum reaches the features only if not detached
    features, _ = make_batch(defective=())
    model = ready(detach_synthetic=detach)
    (got,) = torch.autograd.grad(model(features).cls, features)
    z = F.normalize(features.flatten(2).transpose(1, 2).reshape(-1, DIM), dim=1)
    logits = model.discriminator(z)
    expected = focal(logits, torch.zeros_like(logits)).sum()
    if not detach:
        expected = expected + focal(logits, torch.ones_like(logits)).sum()
    (want,) = torch.autograd.grad(expected / (2 * z.shape[0]), features)
    assert torch.allclose(got, want, atol=1e-6)


def test_no_anomalies_gives_zero_dgc_that_backpropagates():
    model = ready()
    features, _ = make_batch(defective=())
    out = model(features)
    assert out.dgc.item() == 0.0
    out.loss.backward()
    assert torch.isfinite(features.grad).all()


def test_all_defective_batch_is_finite():
    model = ready()
    features, masks = make_batch(batch=2, defective=(0, 1))
    out = model(features, masks=masks)
    assert out.spm.item() == 0.0
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert torch.isfinite(features.grad).all()


def test_batch_of_one():
    model = ready()
    for defective in ((), (0,)):
        features, masks = make_batch(batch=1, defective=defective)
        out = model(features, masks=masks)
        assert torch.isfinite(out.loss)
        out.loss.backward()


def test_labels_override_masks():
    model = ready().eval()
    features, masks = make_batch(defective=())
    # image 1 is defective but its mask is empty (Magnetic Tile has such images): it is neither normal nor anomalous
    out = model(features, masks=masks, labels=torch.tensor([0, 1, 0, 0]))
    assert out.stats["num_normal"].item() == 3 * GRID * GRID
    assert out.stats["num_anomalous"].item() == 0
    official = ready("official").eval()
    stats = official(features, masks=masks, labels=torch.tensor([0, 1, 0, 0])).stats
    assert stats["discriminator_accuracy"].shape == (3,)


def test_mask_threshold_changes_the_anomaly_set():
    features, masks = make_batch(requires_grad=False)
    loose = ready(mask_threshold=0.0).eval()(features, masks=masks).stats["num_anomalous"]
    strict = ready(mask_threshold=0.9).eval()(features, masks=masks).stats["num_anomalous"]
    assert strict < loose


def test_uninitialised_model_contributes_zero_and_initialises_itself():
    model = ArcAD(DIM, K, init_factor=4)  # needs 24 normal patches; one normal image has 16
    features, masks = make_batch(batch=2, defective=(1,))
    out = model(features, masks=masks)
    assert not model.initialized
    assert out.loss.item() == 0.0 and out.cls.item() == 0.0
    out.loss.backward()
    out = model(features, masks=masks)
    assert model.initialized
    assert out.loss.item() > 0
    assert torch.unique(model.prototypes.prototypes, dim=0).shape[0] == K


def test_non_finite_features_do_not_corrupt_prototypes():
    # A non-finite patch is left out: which non-finite value it holds changes nothing, and the other patches
    # still update the prototypes.
    features, masks = make_batch(requires_grad=False)
    results = []
    for value in (float("nan"), float("inf"), -float("inf")):
        torch.manual_seed(0)
        model = ready()
        before = model.prototypes.prototypes.clone()
        bad = features.clone()
        bad[0, 0, 0, 0] = value
        with pytest.warns(UserWarning, match="NaN or inf"):
            out = model(bad, masks=masks)
        assert torch.isfinite(model.prototypes.prototypes).all()
        assert not torch.equal(model.prototypes.prototypes, before)
        assert out.stats["num_nonfinite"].item() == 1
        results.append((out.loss, model.prototypes.prototypes))
    for loss, prototypes in results[1:]:
        assert torch.equal(loss, results[0][0]) and torch.equal(prototypes, results[0][1])


def test_state_dict_round_trip():
    model = ready("official")
    features, masks = make_batch(requires_grad=False)
    for _ in range(2):
        model(features, masks=masks)
    state = model.state_dict()
    assert {"prototypes.prototypes", "prototypes.initialized", "prototypes.num_updates"} <= set(state)
    fresh = ArcAD(DIM, K, preset="official", sigma=0.0)
    fresh.load_state_dict(state)
    assert fresh.initialized
    a = model.eval()(features, masks=masks)
    b = fresh.eval()(features, masks=masks)
    assert torch.equal(a.loss, b.loss)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_is_finite_and_close_to_float32(dtype):
    model = ready().eval()
    features, masks = make_batch(requires_grad=False)
    reference = model(features, masks=masks)
    with torch.autocast("cpu", dtype=dtype):
        out = model(features.to(dtype), masks=masks)
    assert model.prototypes.prototypes.dtype == torch.float32
    for name in ("loss", "spm", "dgc", "cls"):
        value = getattr(out, name)
        assert value.dtype == torch.float32 and torch.isfinite(value)
        # tolerance: one rounding of the features to 8 (bf16) or 11 (fp16) mantissa bits, through the MLP
        assert torch.allclose(value, getattr(reference, name), rtol=0.05, atol=0.02), name


def test_score_maps():
    model = ready().eval()
    features = torch.randn(2, DIM, GRID, GRID)
    mu = model.prototypes.prototypes
    # every patch sits on a prototype except one planted outlier, orthogonal-ish to all of them
    idx = torch.randint(K, (2, GRID, GRID))
    features = mu[idx].permute(0, 3, 1, 2).clone()
    outlier = torch.randn(DIM)
    outlier -= mu.t() @ torch.linalg.lstsq(mu.t(), outlier.unsqueeze(1)).solution.squeeze(1)
    features[1, :, 2, 3] = outlier
    scores = model.score(features)
    assert scores.prototype.shape == scores.discriminator.shape == (2, GRID, GRID)
    assert not scores.prototype.requires_grad
    assert torch.isfinite(scores.prototype).all() and torch.isfinite(scores.discriminator).all()
    assert scores.prototype[1, 2, 3] == scores.prototype.max()
    assert scores.prototype.flatten().topk(2).values[1] < 1e-5
    assert ((scores.discriminator >= 0) & (scores.discriminator <= 1)).all()


def test_score_matches_tokens_and_does_not_change_mode():
    model = ready(discriminator_norm="batch")
    features = torch.randn(2, DIM, GRID, GRID)
    tokens = torch.cat([torch.zeros(2, 1, DIM), features.flatten(2).transpose(1, 2)], dim=1)
    a = model.score(features)
    model.prefix_tokens = 1
    b = model.score(tokens)
    assert torch.allclose(a.prototype, b.prototype) and torch.allclose(a.discriminator, b.discriminator)
    assert model.discriminator.training


def test_bad_input():
    model = ready()
    features, masks = make_batch()
    with pytest.raises(ValueError, match=r"\(B, N, D\)"):
        model(torch.randn(4, DIM))
    with pytest.raises(ValueError, match="square"):
        model(torch.randn(4, 15, DIM))
    with pytest.raises(ValueError, match="D=16"):
        model(torch.randn(4, 8, GRID, GRID))
    with pytest.raises(ValueError, match="batch size"):
        model(features, masks=masks[:3])
    with pytest.raises(ValueError, match="cannot be matched"):
        model(features, masks=torch.zeros(4, 2, 2))
    with pytest.raises(ValueError, match=r"\(B,\)"):
        model(features, masks=masks, labels=torch.zeros(5))
    with pytest.raises(ValueError, match="preset"):
        ArcAD(DIM, preset="nope")
    with pytest.raises(ValueError):
        ArcAD(DIM, mask_threshold=1.0)
    with pytest.raises(ValueError):
        ArcAD(DIM, cls_anomalies="all")


# ------------------------------------------------------------------------------------------ named options


@pytest.mark.parametrize(("dim", "reference"), [(256, 768), (176, 768), (768, 768), (1024, 256)])
def test_noise_scale_gives_the_reference_dimension_angle(dim, reference):
    from torch_arcad import HypersphereAnomalySynthesizer
    from torch_arcad.arcad import noise_scale

    sigma = 0.015
    assert noise_scale(sigma, dim, None) == sigma
    scaled = noise_scale(sigma, dim, reference)
    assert scaled == pytest.approx(sigma * (reference / dim) ** 0.5)

    def mean_cosine(d: int, s: float) -> float:
        generator = torch.Generator().manual_seed(0)
        anchors = torch.nn.functional.normalize(torch.randn(4000, d, generator=generator), dim=1)
        prototypes = torch.nn.functional.normalize(torch.randn(8, d, generator=generator), dim=1)
        synthetic = HypersphereAnomalySynthesizer(s, 1)(anchors, prototypes, generator=generator)
        return float((synthetic * anchors).sum(dim=1).mean())

    # one candidate (no selection): normalize(z + n) sits at about 1 / sqrt(1 + sigma^2 D) from z
    assert mean_cosine(dim, scaled) == pytest.approx(mean_cosine(reference, sigma), abs=2e-3)
    assert mean_cosine(reference, sigma) == pytest.approx((1 + sigma**2 * reference) ** -0.5, abs=2e-3)


def test_sigma_reference_dim_sets_the_synthesizer_noise_and_leaves_the_presets_alone():
    plain = ArcAD(256, 8)
    scaled = ArcAD(256, 8, sigma_reference_dim=768)
    assert plain.synthesizer.sigma == pytest.approx(0.015)
    assert scaled.synthesizer.sigma == pytest.approx(0.015 * 3**0.5)
    assert scaled.config == plain.config  # an option of the module, not a change of the preset
    for bad in (0, -5, 2.5, True, "768"):
        with pytest.raises(ValueError, match="sigma_reference_dim"):
            ArcAD(256, 8, sigma_reference_dim=bad)


def test_class_balanced_focal_option_reaches_the_discriminator():
    arcad = ArcAD(16, 4, alpha=0.5, cls_weighting="classes")
    assert arcad.discriminator.weighting == "classes" and arcad.discriminator.alpha == 0.5
    torch.manual_seed(0)
    arcad.prototypes.init_prototypes(torch.nn.functional.normalize(torch.randn(4, 16), dim=1))
    features = torch.randn(2, 16, 4, 4, requires_grad=True)
    masks = torch.zeros(2, 8, 8)
    masks[1, :4, :4] = 1
    out = arcad(features, masks=masks, labels=torch.tensor([0, 1]))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert torch.isfinite(features.grad).all()


def test_detach_cls_keeps_the_loss_and_the_discriminator_gradient_and_cuts_the_bottleneck_one():
    torch.manual_seed(0)
    features = torch.randn(2, 16, 4, 4)
    masks = torch.zeros(2, 8, 8)
    masks[1, :4, :4] = 1
    labels = torch.tensor([0, 1])
    results = {}
    for detach in (False, True):
        torch.manual_seed(1)
        arcad = ArcAD(16, 4, lambda_spm=0.0, lambda_dgc=0.0, lambda_cls=1.0, detach_cls=detach)
        arcad.prototypes.init_prototypes(F.normalize(torch.randn(4, 16, generator=torch.Generator().manual_seed(2))))
        x = features.clone().requires_grad_(True)
        out = arcad(x, masks=masks, labels=labels, generator=torch.Generator().manual_seed(3))
        out.loss.backward()
        results[detach] = (out.cls.detach(), x.grad, [p.grad.clone() for p in arcad.discriminator.parameters()])
    torch.testing.assert_close(results[True][0], results[False][0])  # the same L_cls
    for detached, attached in zip(results[True][2], results[False][2]):
        torch.testing.assert_close(detached, attached)  # the same discriminator update
    assert results[False][1] is not None and torch.count_nonzero(results[False][1]) > 0
    assert results[True][1] is None or torch.count_nonzero(results[True][1]) == 0  # nothing reaches the features
    with pytest.raises(TypeError, match="detach_cls"):
        ArcAD(16, 4, detach_cls="yes")


def fraction_transcription(model, features, masks, weighted_mean):
    """Eq. 8 and 9 (paper preset) with each real anomaly's term times its defect fraction, by boolean selection;
    the means divide by the weights' sum (``weighted_mean``) or by the number of anomalous patches."""
    mu = model.prototypes.prototypes.clone()
    z = F.normalize(features.flatten(2).transpose(1, 2), dim=-1)  # (B, P, D)
    fraction = F.avg_pool2d(masks.unsqueeze(1), SIZE // GRID).flatten(1)  # (B, P): pixels are 0/1
    patch = fraction > 0
    defective = patch.any(1)
    normal = z[~defective].reshape(-1, DIM)
    anomalies, weight = z[patch & defective[:, None]], fraction[patch & defective[:, None]]
    synthetic = normal  # sigma = 0
    per_anomaly = (anomalies @ mu.t()).amax(1) + 1 - (anomalies @ synthetic.detach().t()).mean(1)
    count = weight.sum() if weighted_mean else torch.tensor(float(len(weight)))
    dgc = (weight * per_anomaly).sum() / count
    logits = model.discriminator(torch.cat([normal, synthetic, anomalies]))
    n = len(normal)
    y = torch.cat([torch.zeros(n), torch.ones(n + len(anomalies))])
    w = torch.cat([torch.ones(2 * n), weight])
    cls = (w * focal(logits, y)).sum() / (2 * n + count)
    return dgc, cls, int(patch[defective].sum())


@pytest.mark.parametrize("weighting", ["fraction", "fraction_mean"])
def test_fraction_weighting_matches_a_weighted_transcription(weighting):
    model = ready(mask_weighting=weighting).eval()
    features, masks = make_batch()  # the defect covers 1/8 to all of the patches it touches
    fractions = F.avg_pool2d(masks[3:4].unsqueeze(1), SIZE // GRID)
    assert len(set(fractions[fractions > 0].tolist())) > 2  # the weights differ, so the test can fail
    dgc, cls, count = fraction_transcription(model, features, masks, weighted_mean=weighting == "fraction_mean")
    out = model(features, masks=masks)
    torch.testing.assert_close(out.dgc, dgc, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.cls, cls, atol=1e-5, rtol=0)
    assert out.stats["num_anomalous"].item() == count  # patches are counted, not weighed
    binary = ready(mask_weighting="binary").eval()
    binary.load_state_dict(model.state_dict())
    assert not torch.allclose(binary(features, masks=masks).dgc, out.dgc)


@pytest.mark.parametrize("weighting", ["fraction", "fraction_mean"])
def test_fraction_weighting_equals_binary_when_defects_fill_their_patches(weighting):
    features, _ = make_batch(requires_grad=False)
    masks = torch.zeros(4, SIZE, SIZE)
    masks[3, 8:24, 0:16] = 1  # exactly four whole patches
    binary = ready().eval()
    fraction = ready(mask_weighting=weighting).eval()
    fraction.load_state_dict(binary.state_dict())
    a, b = binary(features, masks=masks), fraction(features, masks=masks)
    for name in ("loss", "dgc", "cls"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name))


def test_fraction_weighting_keeps_binary_targets_and_the_image_level_positives():
    features, masks = make_batch(requires_grad=False)
    # official: L_cls's positives are every patch of a defective image, so only L_dgc is weighted
    official = ready("official", mask_weighting="fraction").eval()
    reference = ready("official").eval()
    reference.load_state_dict(official.state_dict())
    a, b = official(features, masks=masks), reference(features, masks=masks)
    torch.testing.assert_close(a.cls, b.cls)
    assert not torch.allclose(a.dgc, b.dgc)
    # the real-group accuracy is the share of anomalous patches called anomalous, unweighted
    torch.manual_seed(0)
    features, _ = make_batch(requires_grad=False)
    model = ready(mask_weighting="fraction").eval()
    accuracy = model(features, masks=masks).stats["discriminator_accuracy"][2]
    z = F.normalize(features.flatten(2).transpose(1, 2), dim=-1)
    anomalous = F.adaptive_max_pool2d(masks[3:4], GRID).flatten() > 0
    fraction = F.avg_pool2d(masks[3:4].unsqueeze(1), SIZE // GRID).flatten()[anomalous]
    with torch.no_grad():
        called = (model.discriminator(z[3][anomalous]) > 0).float()
    weighted = (called * fraction).sum() / fraction.sum()
    assert not torch.isclose(called.mean(), weighted)  # the two readings differ here, so the check can fail
    torch.testing.assert_close(accuracy, called.mean())
    assert "mask_weighting='fraction'" in repr(ready(mask_weighting="fraction"))
    with pytest.raises(ValueError, match="mask_weighting"):
        ArcAD(DIM, mask_weighting="soft")


def test_sigma_max_reaches_the_synthesizer_scaled_like_sigma_and_leaves_the_presets_alone():
    plain = ArcAD(256, 8)
    ranged = ArcAD(256, 8, sigma_max=0.12)
    assert plain.synthesizer.sigma_max is None
    assert ranged.synthesizer.sigma == pytest.approx(0.015) and ranged.synthesizer.sigma_max == pytest.approx(0.12)
    both = ArcAD(256, 8, sigma_max=0.12, sigma_reference_dim=768)
    assert both.synthesizer.sigma_max == pytest.approx(0.12 * 3**0.5)
    assert ranged.config == plain.config
    for bad in (0.01, -1.0, float("nan"), "0.2", True):
        with pytest.raises(ValueError, match="sigma"):
            ArcAD(256, 8, sigma_max=bad)


def test_sigma_max_spreads_the_pseudo_anomalies_the_discriminator_is_trained_on():
    """With sigma_max the pseudo-anomalies of one step lie at several angles from their anchors; the step's L_cls
    sees them (the synthesizer's output is what the discriminator gets)."""
    seen = {}
    for sigma_max in (None, 0.5):
        model = ArcAD(DIM, K, sigma=0.05, sigma_max=sigma_max)
        model.prototypes.init_prototypes(torch.randn(64, DIM, generator=torch.Generator().manual_seed(0)))
        features, masks = make_batch(requires_grad=False)
        captured = []
        model.synthesizer.register_forward_hook(lambda module, args, output, log=captured: log.append((args[0], output)))
        model(features, masks=masks, generator=torch.Generator().manual_seed(1))
        anchors, synthetic = captured[0]
        seen[sigma_max] = (anchors * synthetic).sum(1)
    assert seen[0.5].std() > 5 * seen[None].std()
    assert seen[0.5].min() < seen[None].min()


def test_push_margin_matches_a_transcription_with_the_push_stopped_short():
    features, masks = make_batch(requires_grad=False)
    plain = ready().eval()
    z = F.normalize(features.flatten(2).transpose(1, 2), dim=-1)
    patch = F.adaptive_max_pool2d(masks.unsqueeze(1), GRID).flatten(1) > 0
    anomalies = z[patch & patch.any(1, keepdim=True)]
    normal = z[~patch.any(1)].reshape(-1, DIM)
    push = (anomalies @ plain.prototypes.prototypes.t()).amax(1)
    ordered = push.sort().values
    margin = float(ordered[len(ordered) // 2 - 1 : len(ordered) // 2 + 1].mean())
    assert (push < margin).any() and (push > margin).any()
    stopped = ready(push_margin=margin).eval()
    stopped.load_state_dict(plain.state_dict())
    pull = 1 - (anomalies @ normal.t()).mean(1)  # sigma = 0: the pseudo-anomalies are the normal patches
    expected = ((push - margin).clamp_min(0) + pull).mean()
    out = stopped(features, masks=masks)
    torch.testing.assert_close(out.dgc, expected, atol=1e-5, rtol=0)
    assert out.dgc < plain(features, masks=masks).dgc
    assert "push_margin" in repr(stopped.calibration)


def test_push_margin_is_checked_and_replaces_the_official_clamp_explicitly():
    for bad in (1.0, -2.0, True, float("nan")):
        with pytest.raises(ValueError, match="push_margin"):
            ArcAD(DIM, K, push_margin=bad)
    with pytest.raises(ValueError, match="clamp_push=False"):
        ArcAD(DIM, K, preset="official", push_margin=0.5)
    official = ArcAD(DIM, K, preset="official", push_margin=0.5, clamp_push=False)
    assert official.calibration.push_margin == 0.5 and not official.calibration.clamp_push


def test_pseudo_anomaly_distance_is_the_measured_distance_of_eq5_pseudo_anomalies():
    from torch_arcad import HypersphereAnomalySynthesizer
    from torch_arcad.arcad import pseudo_anomaly_distance

    for dim, sigma in ((256, 0.015), (768, 0.015), (176, 0.05)):
        generator = torch.Generator().manual_seed(0)
        anchors = F.normalize(torch.randn(4000, dim, generator=generator), dim=1)
        prototypes = F.normalize(torch.randn(8, dim, generator=generator), dim=1)
        synthetic = HypersphereAnomalySynthesizer(sigma, 1)(anchors, prototypes, generator=generator)
        measured = float((1 - (synthetic * anchors).sum(dim=1)).mean())
        assert pseudo_anomaly_distance(sigma, dim) == pytest.approx(measured, rel=0.03)
    for bad in (0.0, -0.1):
        with pytest.raises(ValueError, match="sigma"):
            pseudo_anomaly_distance(bad, 16)


def distance_ready(preset="paper", **kwargs):
    model = ArcAD(DIM, K, preset=preset, sigma=0.05, discriminator_distance=True, **kwargs)
    model.prototypes.init_prototypes(torch.randn(64, DIM, generator=torch.Generator().manual_seed(5)))
    with torch.no_grad():
        model.discriminator.log_distance_weight.fill_(0.4)
    return model


def test_discriminator_distance_score_matches_a_transcription():
    from torch_arcad.arcad import pseudo_anomaly_distance

    model = distance_ready()
    features, _ = make_batch(requires_grad=False)
    scale = pseudo_anomaly_distance(0.05, DIM)
    assert model.discriminator.distance_scale == pytest.approx(1 - (1 + 0.05**2 * DIM) ** -0.5)
    z = F.normalize(features.flatten(2).transpose(1, 2).reshape(-1, DIM), dim=1)
    distance = 1 - (z @ model.prototypes.prototypes.t()).amax(dim=1)
    logits = model.discriminator.net(z).squeeze(1) + torch.exp(torch.tensor(0.4)) * distance / scale
    scores = model.score(features)
    torch.testing.assert_close(scores.discriminator.reshape(-1), torch.sigmoid(logits), atol=1e-6, rtol=0)
    torch.testing.assert_close(scores.prototype.reshape(-1), distance, atol=1e-6, rtol=0)


def test_discriminator_distance_cls_matches_a_transcription():
    """L_cls (eq. 9, one union mean) on logits that add the distance term, with every distance computed here from
    the pre-update prototypes: the patches' and the pseudo-anomalies' (captured from the synthesizer)."""
    model = distance_ready().eval()
    features, masks = make_batch(requires_grad=False)
    mu = model.prototypes.prototypes.clone()
    captured = []
    model.synthesizer.register_forward_hook(lambda module, args, output: captured.append(output))
    out = model(features, masks=masks, generator=torch.Generator().manual_seed(1))
    z = F.normalize(features.flatten(2).transpose(1, 2), dim=-1)  # (B, P, D)
    synthetic = captured[0].reshape(4, GRID * GRID, DIM)
    patch = F.adaptive_max_pool2d(masks.unsqueeze(1), GRID).flatten(1) > 0
    rows = torch.cat([z[:3].reshape(-1, DIM), synthetic[:3].reshape(-1, DIM), z[3][patch[3]]])
    distance = 1 - (rows @ mu.t()).amax(dim=1)
    logits = model.discriminator.net(rows).squeeze(1) + torch.exp(torch.tensor(0.4)) * distance / (
        model.discriminator.distance_scale
    )
    y = torch.cat([torch.zeros(3 * GRID * GRID), torch.ones(len(rows) - 3 * GRID * GRID)])
    torch.testing.assert_close(out.cls, focal(logits, y).mean(), atol=1e-5, rtol=0)
    # the patches' distances come from the step's similarities when it has them, computed afresh otherwise
    flat, pseudo = z.reshape(-1, DIM), captured[0]
    fresh = model._cls_distance(flat, pseudo, mu, None)
    torch.testing.assert_close(model._cls_distance(flat, pseudo, mu, flat @ mu.t()), fresh)
    torch.testing.assert_close(fresh, 1 - (torch.cat([flat, pseudo]) @ mu.t()).amax(dim=1))


@pytest.mark.parametrize("preset", ["paper", "official"])
def test_discriminator_distance_trains_its_weight_and_the_bottleneck(preset):
    model = distance_ready(preset)
    features, masks = make_batch()
    out = model(features, masks=masks)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert model.discriminator.log_distance_weight.grad is not None
    assert model.discriminator.log_distance_weight.grad != 0
    assert features.grad.abs().sum() > 0
    assert "discriminator.log_distance_weight" in model.state_dict()
    assert "discriminator.log_distance_weight" not in ArcAD(DIM, K, preset=preset).state_dict()
    # with detach_cls the distance term, too, sends L_cls nothing into the bottleneck
    detached = distance_ready(preset, detach_cls=True)
    features, masks = make_batch()
    out = detached(features, masks=masks)
    (grad,) = torch.autograd.grad(out.cls, features, allow_unused=True)
    assert grad is None or not grad.any()


def test_discriminator_distance_is_checked_and_leaves_the_presets_alone():
    with pytest.raises(ValueError, match="sigma > 0"):
        ArcAD(DIM, K, sigma=0.0, discriminator_distance=True)
    with pytest.raises(TypeError, match="discriminator_distance"):
        ArcAD(DIM, K, discriminator_distance=1)
    assert ArcAD(DIM, K, discriminator_distance=True).config == ArcAD(DIM, K).config
    assert not ArcAD(DIM, K).discriminator.reads_distance
    scaled = ArcAD(256, K, sigma_reference_dim=768, discriminator_distance=True)
    # the unit follows the noise actually used: the 768-dim angle
    assert scaled.discriminator.distance_scale == pytest.approx(1 - (1 + 0.015**2 * 768) ** -0.5)
