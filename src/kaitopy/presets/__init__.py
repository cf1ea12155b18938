"""kaitopy.presets: the model and GPU catalogs and the estimator that matches one to the other."""

from kaitopy.presets.catalog import (
    Catalog,
    CatalogError,
    GpuSku,
    ModelPreset,
    UnknownInstanceType,
    UnknownPreset,
)
from kaitopy.presets.estimator import (
    DoesNotFit,
    EstimateError,
    Plan,
    Runtime,
    estimate,
    fitting_skus,
    longest_context,
    runtime_for,
)

__all__ = [
    "Catalog",
    "CatalogError",
    "DoesNotFit",
    "EstimateError",
    "GpuSku",
    "ModelPreset",
    "Plan",
    "Runtime",
    "UnknownInstanceType",
    "UnknownPreset",
    "estimate",
    "fitting_skus",
    "longest_context",
    "runtime_for",
]
