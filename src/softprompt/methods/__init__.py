"""The prompt methods, one module each: its config, its prompt source (methods.base.PromptSource) and the
`registry.register_method` line that makes it known. Importing this package registers the built-in ones."""

from .base import InjectionKind, ModelShape, PromptSource, PromptTable
from .cpt import CPTConfig, CPTEmbedding
from .multitask_prompt_tuning import MultitaskPromptEmbedding, MultitaskPromptTuningConfig, MultitaskPromptTuningInit
from .p_tuning import PromptEncoder, PromptEncoderConfig, PromptEncoderReparameterizationType
from .prefix_tuning import PrefixEncoder, PrefixTuningConfig
from .prompt_tuning import PromptEmbedding, PromptTuningConfig, PromptTuningInit

__all__ = [
    "CPTConfig",
    "CPTEmbedding",
    "InjectionKind",
    "ModelShape",
    "MultitaskPromptEmbedding",
    "MultitaskPromptTuningConfig",
    "MultitaskPromptTuningInit",
    "PrefixEncoder",
    "PrefixTuningConfig",
    "PromptEmbedding",
    "PromptEncoder",
    "PromptEncoderConfig",
    "PromptEncoderReparameterizationType",
    "PromptSource",
    "PromptTable",
    "PromptTuningConfig",
    "PromptTuningInit",
]
