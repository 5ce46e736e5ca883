"""softprompt: prompt tuning, p-tuning, prefix tuning and their kin for frozen transformer models (causal LMs,
encoder-decoders, classifiers and encoders), with PEFT's API and adapter files.

A drop-in for PEFT's prompt-learning API: `from softprompt import get_peft_model, PromptTuningConfig, ...`.
The package, bottom to top (imports run downward only; .importlinter holds the contract CI checks):

    errors, registry, config, adapter_io, base_models, compat, data   the ground floor
    methods      one module per method: its config and PromptSource, registered
    core         injections, the prompt-states cache, the task-agnostic PeftModel, get_peft_model
    task_types   one module per task type: its wrapper, Auto class and train/eval behaviour, registered
    inference    Predictor, generation, calibration, metrics, the batching engine
    training     TrainConfig, the loop, checkpoints; the HF Trainer
    serving      the HTTP server's routers;  cli  the command line
"""

from .base_models import DEFAULT_MODEL, load_base_model, load_tokenizer
from .config import PeftConfig, PeftType, PromptLearningConfig, TaskType, get_peft_config
from .core import AutoPeftModel, PeftModel, get_peft_model
from .errors import AdapterError, ConfigError, DataError, ModelNotFoundError, TrainingDiverged, UnknownAdapterError
from .inference import Predictor
from .methods import (
    CPTConfig,
    DePTConfig,
    MultitaskPromptTuningConfig,
    MultitaskPromptTuningInit,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptEncoderReparameterizationType,
    PromptSource,
    PromptTuningConfig,
    PromptTuningInit,
    ResidualPromptTuningConfig,
    ULPTConfig,
)
from .registry import register_method, register_task_type
from .task_types import (
    AutoPeftModelForCausalLM,
    AutoPeftModelForFeatureExtraction,
    AutoPeftModelForSeq2SeqLM,
    AutoPeftModelForSequenceClassification,
    AutoPeftModelForTokenClassification,
    PeftModelForCausalLM,
    PeftModelForFeatureExtraction,
    PeftModelForSeq2SeqLM,
    PeftModelForSequenceClassification,
    PeftModelForTokenClassification,
    TaskBehaviour,
)
from .training import TrainConfig, train
from .version import __version__


def __getattr__(name: str):
    """softprompt.Trainer and Seq2SeqTrainer import transformers' Trainer (seconds): only when asked for."""
    if name in ("Trainer", "Seq2SeqTrainer"):
        from .training import hf_trainer

        return getattr(hf_trainer, name)
    raise AttributeError(f"module 'softprompt' has no attribute {name!r}")


__all__ = [
    "DEFAULT_MODEL",
    "AdapterError",
    "AutoPeftModel",
    "AutoPeftModelForCausalLM",
    "AutoPeftModelForFeatureExtraction",
    "AutoPeftModelForSeq2SeqLM",
    "AutoPeftModelForSequenceClassification",
    "AutoPeftModelForTokenClassification",
    "CPTConfig",
    "ConfigError",
    "DataError",
    "ModelNotFoundError",
    "MultitaskPromptTuningConfig",
    "MultitaskPromptTuningInit",
    "PeftConfig",
    "PeftModel",
    "PeftModelForCausalLM",
    "PeftModelForFeatureExtraction",
    "PeftModelForSeq2SeqLM",
    "PeftModelForSequenceClassification",
    "PeftModelForTokenClassification",
    "PeftType",
    "Predictor",
    "PrefixTuningConfig",
    "PromptEncoderConfig",
    "PromptEncoderReparameterizationType",
    "PromptLearningConfig",
    "PromptSource",
    "PromptTuningConfig",
    "PromptTuningInit",
    "ResidualPromptTuningConfig",
    "Seq2SeqTrainer",
    "TaskBehaviour",
    "TaskType",
    "TrainConfig",
    "Trainer",
    "TrainingDiverged",
    "ULPTConfig",
    "DePTConfig",
    "UnknownAdapterError",
    "__version__",
    "get_peft_config",
    "get_peft_model",
    "load_base_model",
    "load_tokenizer",
    "register_method",
    "register_task_type",
    "train",
]
