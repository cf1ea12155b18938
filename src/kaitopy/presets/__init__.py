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
    TuningMethod,
    check_tuning_fits,
    estimate,
    fitting_skus,
    longest_context,
    runtime_for,
    tuning_required_gib,
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
    "TuningMethod",
    "UnknownInstanceType",
    "UnknownPreset",
    "check_tuning_fits",
    "estimate",
    "fitting_skus",
    "longest_context",
    "runtime_for",
    "tuning_required_gib",
]
