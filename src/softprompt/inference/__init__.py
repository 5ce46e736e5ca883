"""Inference over trained adapters: the Predictor (one base model, many adapters, their tasks), generation,
calibration by the class prior, classification metrics, and the engine that batches concurrent requests."""

from .calibration import calibrate, estimate_prior, read_calibration, write_calibration
from .generation import Completion
from .metrics import classification_metrics
from .predictor import Predictor, calibrate_adapter_folder, name_adapters

__all__ = [
    "Completion",
    "Predictor",
    "calibrate",
    "calibrate_adapter_folder",
    "classification_metrics",
    "estimate_prior",
    "name_adapters",
    "read_calibration",
    "write_calibration",
]
