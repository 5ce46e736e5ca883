"""Prompt tuning (Lester et al. 2021): a trainable table of virtual token embeddings."""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch
from torch import nn

from .. import registry
from ..config import ConfigError, PeftType, PromptLearningConfig, enum_choice
from .base import InjectionKind, ModelShape, PromptSource, init_text_ids


class PromptTuningInit(str, enum.Enum):
    TEXT = "TEXT"  # embeddings of an init text's tokens, repeated or cut to num_virtual_tokens
    SAMPLE_VOCAB = "SAMPLE_VOCAB"  # rows sampled from the vocabulary's embedding table
    RANDOM = "RANDOM"  # normal noise with the embedding table's mean and std


@dataclass
class PromptTuningConfig(PromptLearningConfig):
    """Prompt tuning: `num_virtual_tokens` trainable embeddings placed before the input."""

    peft_type = PeftType.PROMPT_TUNING

    prompt_tuning_init: str = PromptTuningInit.RANDOM
    """How to initialise the prompt: TEXT, SAMPLE_VOCAB or RANDOM."""
    prompt_tuning_init_text: str | None = None
    """The text whose token embeddings start the prompt (TEXT init), e.g. a task description."""
    tokenizer_name_or_path: str | None = None
    """Tokenizer for the init text; defaults to the base model's."""
    tokenizer_kwargs: dict | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        enum_choice(self, "prompt_tuning_init", PromptTuningInit)
        if self.prompt_tuning_init == "TEXT" and not (self.prompt_tuning_init_text or "").strip():
            raise ConfigError(
                "prompt_tuning_init='TEXT' needs prompt_tuning_init_text, e.g. "
                "prompt_tuning_init_text='Classify if the tweet is a complaint or not:'."
            )

    def fill_model_fields(self, shape) -> None:
        super().fill_model_fields(shape)
        if self.prompt_tuning_init == "TEXT" and self.tokenizer_name_or_path is None:
            # PEFT refuses a TEXT config without a tokenizer, even to load it: name the base model's
            self.tokenizer_name_or_path = self.base_model_name_or_path


class PromptEmbedding(PromptSource):
    """The prompt is the table itself: [P, hidden]."""

    injection = InjectionKind.EMBEDDINGS

    def __init__(
        self, config: PromptTuningConfig, shape: ModelShape, base_model: nn.Module, num_virtual: int | None = None
    ):
        super().__init__()
        num_virtual = num_virtual or config.num_virtual_tokens  # rows of the table
        self.embedding = nn.Embedding(num_virtual, shape.hidden_size)
        if base_model is None:  # weights will be loaded from a checkpoint
            return
        vocab = base_model.get_input_embeddings().weight.detach().float()  # [V, H]
        with torch.no_grad():
            if config.prompt_tuning_init == "TEXT":
                token_ids = init_text_ids(config, base_model, num_virtual)
                self.embedding.weight.copy_(vocab[torch.tensor(token_ids, device=vocab.device)])
            elif config.prompt_tuning_init == "SAMPLE_VOCAB":
                rows = torch.randint(0, vocab.shape[0], (num_virtual,), device=vocab.device)
                self.embedding.weight.copy_(vocab[rows])
            else:
                self.embedding.weight.normal_(vocab.mean().item(), vocab.std().item())

    def forward(self, task: int = 0) -> torch.Tensor:
        return self.embedding.weight  # [P, H]


registry.register_method(PeftType.PROMPT_TUNING, PromptTuningConfig, PromptEmbedding, aliases=("prompt_tuning",))
