"""The prompt methods, one module each: its config, its prompt source (methods.base.PromptSource) and the
`registry.register_method` line that makes it known. Importing this package registers the built-in ones."""

from .base import InjectionKind, ModelShape, PromptSource, PromptTable
from .cpt import CPTConfig, CPTEmbedding
from .dept import DePTConfig, DePTEmbedding
from .multitask_prompt_tuning import MultitaskPromptEmbedding, MultitaskPromptTuningConfig, MultitaskPromptTuningInit
from .p_tuning import PromptEncoder, PromptEncoderConfig, PromptEncoderReparameterizationType
from .prefix_tuning import PrefixEncoder, PrefixTuningConfig
from .prompt_tuning import PromptEmbedding, PromptTuningConfig, PromptTuningInit
from .residual_prompt_tuning import ResidualPromptEmbedding, ResidualPromptTuningConfig
from .ulpt import ULPTConfig, ULPTEmbedding

__all__ = [
    "CPTConfig",
    "CPTEmbedding",
    "DePTConfig",
    "DePTEmbedding",
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
    "ResidualPromptEmbedding",
    "ResidualPromptTuningConfig",
    "ULPTConfig",
    "ULPTEmbedding",
]
