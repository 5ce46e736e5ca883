"""softprompt: prompt tuning, p-tuning and prefix tuning for frozen causal language models.

A drop-in for PEFT's prompt-learning API: `from softprompt import get_peft_model, PromptTuningConfig, ...`.
"""

from .adapters import AdapterError
from .config import ConfigError, PeftConfig, PeftType, PromptLearningConfig, TaskType, get_peft_config
from .methods import (
    CPTConfig,
    MultitaskPromptTuningConfig,
    MultitaskPromptTuningInit,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptEncoderReparameterizationType,
    PromptTuningConfig,
    PromptTuningInit,
)
from .model import AutoPeftModelForCausalLM, PeftModel, PeftModelForCausalLM, get_peft_model
from .models import DEFAULT_MODEL, ModelNotFoundError, load_base_model, load_tokenizer
from .predictor import Predictor
from .seq_cls import AutoPeftModelForSequenceClassification, PeftModelForSequenceClassification

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "AdapterError",
    "AutoPeftModelForCausalLM",
    "AutoPeftModelForSequenceClassification",
    "CPTConfig",
    "ConfigError",
    "ModelNotFoundError",
    "MultitaskPromptTuningConfig",
    "MultitaskPromptTuningInit",
    "PeftConfig",
    "PeftModel",
    "PeftModelForCausalLM",
    "PeftModelForSequenceClassification",
    "PeftType",
    "Predictor",
    "PrefixTuningConfig",
    "PromptEncoderConfig",
    "PromptEncoderReparameterizationType",
    "PromptLearningConfig",
    "PromptTuningConfig",
    "PromptTuningInit",
    "TaskType",
    "get_peft_config",
    "get_peft_model",
    "load_base_model",
    "load_tokenizer",
]
