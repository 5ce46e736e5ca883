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
from .features import PeftModelForFeatureExtraction
from .seq2seq import AutoPeftModelForSeq2SeqLM, PeftModelForSeq2SeqLM
from .seq_cls import AutoPeftModelForSequenceClassification, PeftModelForSequenceClassification
from .token_cls import PeftModelForTokenClassification

__version__ = "0.1.0"


def __getattr__(name: str):
    """softprompt.Trainer and Seq2SeqTrainer import transformers' Trainer (seconds): only when asked for."""
    if name in ("Trainer", "Seq2SeqTrainer"):
        from . import hf_trainer

        return getattr(hf_trainer, name)
    raise AttributeError(f"module 'softprompt' has no attribute {name!r}")


__all__ = [
    "DEFAULT_MODEL",
    "AdapterError",
    "AutoPeftModelForCausalLM",
    "AutoPeftModelForSeq2SeqLM",
    "AutoPeftModelForSequenceClassification",
    "CPTConfig",
    "ConfigError",
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
    "PromptTuningConfig",
    "PromptTuningInit",
    "Seq2SeqTrainer",
    "TaskType",
    "Trainer",
    "get_peft_config",
    "get_peft_model",
    "load_base_model",
    "load_tokenizer",
]
