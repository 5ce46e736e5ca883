"""Training: `TrainConfig` (the run's settings, documented field by field), the loop `train()`, its checkpoints
and metrics log; `Trainer`/`Seq2SeqTrainer` (hf_trainer.py) for users of transformers' Trainer."""

from ..errors import TrainingDiverged
from .config import CalibrationConfig, TaskConfig, TrainConfig
from .config_help import help_text, typed_overrides
from .loop import train

__all__ = [
    "CalibrationConfig",
    "TaskConfig",
    "TrainConfig",
    "TrainingDiverged",
    "help_text",
    "train",
    "typed_overrides",
]
