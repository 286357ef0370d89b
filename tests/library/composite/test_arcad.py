import warnings

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
    from_cls = torch.autograd.grad(model.config.lambda_cls * out.cls, params, retain_graph=True)
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


def test_synthetic_features_carry_gradient():
    # sigma = 0: each pseudo-anomaly equals its anchor, so L_cls over an all-normal batch is
    # (sum_i FL(d(z_i), 0) + sum_i FL(d(a_i), 1)) / 2N, and the second sum reaches the features (as released)
    features, _ = make_batch(defective=())
    model = ready()
    (got,) = torch.autograd.grad(model(features).cls, features)
    z = F.normalize(features.flatten(2).transpose(1, 2).reshape(-1, DIM), dim=1)
    logits = model.discriminator(z)
    expected = focal(logits, torch.zeros_like(logits)).sum() + focal(logits, torch.ones_like(logits)).sum()
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
    with pytest.raises(ValueError, match=r"D = dim = 16, got shape \(4, 8, 4, 4\)"):
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


@pytest.mark.parametrize("weighting", ["fraction"])
def test_fraction_weighting_matches_a_weighted_transcription(weighting):
    model = ready(mask_weighting=weighting).eval()
    features, masks = make_batch()  # the defect covers 1/8 to all of the patches it touches
    fractions = F.avg_pool2d(masks[3:4].unsqueeze(1), SIZE // GRID)
    assert len(set(fractions[fractions > 0].tolist())) > 2  # the weights differ, so the test can fail
    dgc, cls, count = fraction_transcription(model, features, masks, weighted_mean=False)
    out = model(features, masks=masks)
    torch.testing.assert_close(out.dgc, dgc, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.cls, cls, atol=1e-5, rtol=0)
    assert out.stats["num_anomalous"].item() == count  # patches are counted, not weighed
    binary = ready(mask_weighting="binary").eval()
    binary.load_state_dict(model.state_dict())
    assert not torch.allclose(binary(features, masks=masks).dgc, out.dgc)


@pytest.mark.parametrize("weighting", ["fraction"])
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


def distance_ready(preset="paper", **kwargs):
    model = ArcAD(DIM, K, preset=preset, sigma=0.05, discriminator_distance=True, **kwargs)
    model.prototypes.init_prototypes(torch.randn(64, DIM, generator=torch.Generator().manual_seed(5)))
    with torch.no_grad():
        model.discriminator.log_distance_weight.fill_(0.4)
    return model




def missed_scores(batch=4):
    """Patch scores where image 3's defect (patch rows 0 and 1) is found on its first row of patches (scored above
    every normal patch) and missed on the second."""
    g = torch.Generator().manual_seed(3)
    scores = torch.rand(batch, GRID, GRID, generator=g)
    scores[3, :1] = 2.0
    return scores


def test_missed_calibrates_only_the_anomalies_the_detector_misses():
    features, masks = make_batch(requires_grad=False)
    labels = torch.tensor([0, 0, 0, 1])
    scores = missed_scores()
    missed = ready(calibrate="missed").eval()
    reference = ready().eval()
    reference.load_state_dict(missed.state_dict())
    out = missed(features, masks=masks, labels=labels, scores=scores)
    # the same as the paper's ArcAD told that the found patches hold no defect (still a defective image)
    found = F.interpolate((scores > 1.0).float().unsqueeze(1), size=(SIZE, SIZE)).squeeze(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the edited mask may leave no anomalous patch: the warning says so
        expected = reference(features, masks=masks * (1 - found), labels=labels)
    for name in ("loss", "spm", "dgc", "cls"):
        torch.testing.assert_close(getattr(out, name), getattr(expected, name))
    anomalous = int((F.adaptive_max_pool2d(masks[3:4], GRID) > 0).sum())
    calibrated = int((F.adaptive_max_pool2d(masks[3:4], GRID)[0, 1:] > 0).sum())
    assert 0 < calibrated < anomalous  # some found, some missed: the check can fail
    assert out.stats["num_anomalous"].item() == anomalous
    assert out.stats["num_calibrated"].item() == calibrated
    assert not torch.allclose(out.dgc, reference(features, masks=masks, labels=labels).dgc)
    # a finer map is averaged over each patch: a 2 x 2 finer map with the same patch means gives the same result
    offsets = torch.tensor([[0.1, -0.1], [-0.05, 0.05]]).repeat(GRID, GRID)
    fine = scores.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2) + offsets
    finer = missed(features, masks=masks, labels=labels, scores=fine.unsqueeze(1))
    torch.testing.assert_close(finer.loss, out.loss)
    assert finer.stats["num_calibrated"].item() == calibrated


def test_missed_equals_the_paper_when_the_detector_finds_nothing():
    features, masks = make_batch(requires_grad=False)
    scores = torch.zeros(4, GRID, GRID)
    scores[:3] = 1.0  # every normal patch above every defect patch
    missed = ready(calibrate="missed").eval()
    reference = ready().eval()
    reference.load_state_dict(missed.state_dict())
    a, b = missed(features, masks=masks, scores=scores), reference(features, masks=masks)
    for name in ("loss", "spm", "dgc", "cls"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name))
    torch.testing.assert_close(a.stats["num_calibrated"], b.stats["num_anomalous"])
    torch.testing.assert_close(b.stats["num_calibrated"], b.stats["num_anomalous"])


def test_missed_needs_the_detectors_map_of_the_batch():
    features, masks = make_batch(requires_grad=False)
    model = ready(calibrate="missed")
    with pytest.raises(ValueError, match=r"scores=.*\(B, H, W\) or \(B, 1, H, W\) with B = 4"):
        model(features, masks=masks)
    with pytest.raises(ValueError, match=r"got shape \(3, 8, 8\)"):
        model(features, masks=masks, scores=torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match=r"got shape \(4, 2, 8, 8\)"):
        model(features, masks=masks, scores=torch.zeros(4, 2, 8, 8))
    with pytest.raises(TypeError, match="scores must be a floating-point tensor"):
        model(features, masks=masks, scores=torch.zeros(4, 8, 8, dtype=torch.long))
    with pytest.raises(TypeError, match="scores must be a tensor"):
        model(features, masks=masks, scores=[0.0] * 64)
    with pytest.raises(ValueError, match="calibrate"):
        ArcAD(DIM, calibrate="found")
    # the paper's ArcAD does not read scores
    ready()(features, masks=masks, scores=torch.zeros(3, 8, 8))
