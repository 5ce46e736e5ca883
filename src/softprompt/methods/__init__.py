"""The method registry. A method is a config class plus a prompt source module in its own file.

A prompt source is an `nn.Module` whose `forward()` returns a table `[P, D]` and whose class
attribute `injection` says how the table enters the model (see `inject.py`). A source with several
tasks (`num_tasks`) takes the task: `forward(task)`. A source whose file cannot hold one collapsed
table says what it holds (`adapter_tensors()`, `from_adapter_tensors()`).
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ConfigError, PeftType, PromptLearningConfig
from ..inject import Injection
from .cpt import CPTConfig, CPTEmbedding
from .multitask_prompt_tuning import MultitaskPromptEmbedding, MultitaskPromptTuningConfig, MultitaskPromptTuningInit
from .p_tuning import PromptEncoder, PromptEncoderConfig, PromptEncoderReparameterizationType
from .prefix_tuning import PrefixEncoder, PrefixTuningConfig
from .prompt_tuning import PromptEmbedding, PromptTuningConfig, PromptTuningInit

# peft_type -> (config class, prompt source class)
METHODS: dict[str, tuple[type[PromptLearningConfig], type[nn.Module]]] = {
    PeftType.PROMPT_TUNING.value: (PromptTuningConfig, PromptEmbedding),
    PeftType.P_TUNING.value: (PromptEncoderConfig, PromptEncoder),
    PeftType.PREFIX_TUNING.value: (PrefixTuningConfig, PrefixEncoder),
    PeftType.MULTITASK_PROMPT_TUNING.value: (MultitaskPromptTuningConfig, MultitaskPromptEmbedding),
    PeftType.CPT.value: (CPTConfig, CPTEmbedding),
}

# Friendly names accepted wherever a method is named (CLI, YAML).
ALIASES = {
    "prompt_tuning": "PROMPT_TUNING", "p_tuning": "P_TUNING", "ptuning": "P_TUNING", "prefix_tuning": "PREFIX_TUNING",
    "multitask_prompt_tuning": "MULTITASK_PROMPT_TUNING", "mpt": "MULTITASK_PROMPT_TUNING", "cpt": "CPT",
}


def method_key(name) -> str:
    name = name.value if isinstance(name, PeftType) else str(name)
    key = ALIASES.get(name.lower().replace("-", "_"), name.upper())
    if key not in METHODS:
        raise ConfigError(
            f"Unknown prompt method {name!r}. softprompt supports: {', '.join(METHODS)} "
            "(or prompt_tuning, p_tuning, prefix_tuning, multitask_prompt_tuning, cpt)."
        )
    return key


def config_class_for(name) -> type[PromptLearningConfig]:
    if name is None:
        raise ConfigError("The adapter config has no 'peft_type'. It is not a prompt adapter, or the file is damaged.")
    return METHODS[method_key(name)][0]


def source_class_for(config: PromptLearningConfig) -> type[nn.Module]:
    return METHODS[config.peft_type.value][1]


class PromptTable(nn.Module):
    """A method's prompt collapsed to its output table (what PEFT saves as `prompt_embeddings`).

    Inference needs nothing else: any encoder has already run.
    """

    def __init__(self, table: torch.Tensor, injection: type[Injection]):
        super().__init__()
        self.injection = injection
        self.embedding = nn.Embedding(table.shape[0], table.shape[1])
        with torch.no_grad():
            self.embedding.weight.copy_(table)

    def forward(self) -> torch.Tensor:
        return self.embedding.weight  # [P, D]


__all__ = [
    "CPTConfig",
    "CPTEmbedding",
    "METHODS",
    "MultitaskPromptEmbedding",
    "MultitaskPromptTuningConfig",
    "MultitaskPromptTuningInit",
    "PrefixEncoder",
    "PrefixTuningConfig",
    "PromptEmbedding",
    "PromptEncoder",
    "PromptEncoderConfig",
    "PromptEncoderReparameterizationType",
    "PromptTable",
    "PromptTuningConfig",
    "PromptTuningInit",
    "config_class_for",
    "method_key",
    "source_class_for",
]
