"""Data sets in the MVTec AD folder layout: a reader, a torch ``Dataset`` and a synthetic generator."""

from __future__ import annotations

from torch_arcad.datasets.images import MVTecDataset
from torch_arcad.datasets.mvtec import (
    ANOMALY_LABEL,
    GOOD,
    IMAGE_EXTENSIONS,
    MASK_SUFFIX,
    NORMAL_LABEL,
    CategoryScan,
    MVTecSample,
    list_categories,
    png_is_blank,
    scan_category,
)
from torch_arcad.datasets.synthetic import (
    SYNTHETIC_CATEGORIES,
    default_cache_dir,
    make_synthetic_dataset,
    render_sample,
    write_png,
)

__all__ = [
    "ANOMALY_LABEL",
    "GOOD",
    "IMAGE_EXTENSIONS",
    "MASK_SUFFIX",
    "NORMAL_LABEL",
    "SYNTHETIC_CATEGORIES",
    "CategoryScan",
    "MVTecDataset",
    "MVTecSample",
    "default_cache_dir",
    "list_categories",
    "make_synthetic_dataset",
    "png_is_blank",
    "render_sample",
    "scan_category",
    "write_png",
]
