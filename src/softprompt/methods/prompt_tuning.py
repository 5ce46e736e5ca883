"""Prompt tuning (Lester et al. 2021): a trainable table of virtual token embeddings."""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch
from torch import nn

from ..config import ConfigError, PeftType, PromptLearningConfig, enum_choice
from ..inject import EmbeddingPrefix, ModelShape


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


class PromptEmbedding(nn.Module):
    """The prompt is the table itself: [P, hidden]."""

    injection = EmbeddingPrefix

    def __init__(self, config: PromptTuningConfig, shape: ModelShape, base_model: nn.Module, num_virtual: int | None = None):
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

    def forward(self) -> torch.Tensor:
        return self.embedding.weight  # [P, H]


def init_text_ids(config, base_model: nn.Module, count: int, field: str = "prompt_tuning_init_text") -> list[int]:
    """The token ids of the config's init text (its field `field`), read with its tokenizer or the base model's,
    repeated or cut to `count`."""
    from ..models import load_tokenizer

    name = config.tokenizer_name_or_path or config.base_model_name_or_path or base_model.name_or_path
    if not name:  # a model built from a config names no folder or hub id
        raise ConfigError(f"{field} needs a tokenizer and the base model names none: set tokenizer_name_or_path.")
    tokenizer = load_tokenizer(name, **(getattr(config, "tokenizer_kwargs", None) or {}))
    token_ids = tokenizer(getattr(config, field), add_special_tokens=False)["input_ids"]
    if not token_ids:
        raise ConfigError(f"{field}={getattr(config, field)!r} gives no tokens.")
    return (token_ids * -(-count // len(token_ids)))[:count]  # ceil(count / tokens) copies, cut to count
