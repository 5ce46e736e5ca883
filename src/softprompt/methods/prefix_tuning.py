"""Prefix tuning (Li & Liang 2021): trainable key/value prefixes for every attention layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..config import ConfigError, PeftType, PromptLearningConfig, positive_int_or_none
from ..inject import KVPrefix, ModelShape


@dataclass
class PrefixTuningConfig(PromptLearningConfig):
    """Prefix tuning: `num_virtual_tokens` key/value pairs prepended in every layer's attention."""

    peft_type = PeftType.PREFIX_TUNING
    default_learning_rate = 1e-2  # prefixes act in every layer: a smaller step than prompt tuning's

    encoder_hidden_size: int | None = None
    """Hidden width of the projection MLP (with prefix_projection); defaults to the KV width."""
    prefix_projection: bool = False
    """Produce the prefixes through a 2-layer MLP (more stable training) instead of a flat table."""
    init_weights: str | None = None
    """None: random start; "zero": the prefixes start at zero (the projection's last layer, or the table)."""
    encoder_prefix: bool = False
    """SEQ_2_SEQ_LM only (softprompt's own field): prefix every encoder layer's self-attention too, as Li & Liang
    did, and give each decoder layer its own slots. The table is then [P, (decoder + encoder layers) * 2 * kv]: a
    layout PEFT cannot read (it refuses the width). False: PEFT's seq2seq prefix (decoder only, see seq2seq.py)."""

    SOFTPROMPT_FIELDS: ClassVar[dict[str, Any]] = {**PromptLearningConfig.SOFTPROMPT_FIELDS, "encoder_prefix": False}

    def __post_init__(self) -> None:
        super().__post_init__()
        positive_int_or_none(self, "encoder_hidden_size")
        if self.init_weights not in (None, "zero"):
            raise ConfigError(f"init_weights must be None or 'zero', got {self.init_weights!r}.")
        if self.encoder_prefix and self.task_type != "SEQ_2_SEQ_LM":
            raise ConfigError("encoder_prefix=True is for encoder-decoder models: set task_type='SEQ_2_SEQ_LM', or leave it out.")

    def prefix_layers(self, shape: ModelShape) -> int:
        """How many layers' key/value slots the table holds."""
        return shape.num_layers + (shape.encoder_layers if self.encoder_prefix else 0)

    def fill_model_fields(self, shape: ModelShape) -> None:
        super().fill_model_fields(shape)
        # As PEFT: a row holds kv_heads * head_dim values per layer and per K/V (grouped-query aware).
        self.token_dim = shape.kv_width
        self.num_attention_heads = shape.num_kv_heads
        if self.encoder_hidden_size is None:
            self.encoder_hidden_size = shape.kv_width


class PrefixEncoder(nn.Module):
    """-> table [P, num_layers * 2 * kv_heads * head_dim]. Parameter names follow PEFT's PrefixEncoder."""

    injection = KVPrefix

    def __init__(self, config: PrefixTuningConfig, shape: ModelShape, base_model: nn.Module):
        super().__init__()
        width = config.prefix_layers(shape) * 2 * shape.kv_width
        self.transform = None
        if config.prefix_projection:
            hidden = config.encoder_hidden_size or shape.kv_width
            self.embedding = nn.Embedding(config.num_virtual_tokens, shape.kv_width)
            self.transform = nn.Sequential(nn.Linear(shape.kv_width, hidden), nn.Tanh(), nn.Linear(hidden, width))
        else:
            self.embedding = nn.Embedding(config.num_virtual_tokens, width)
        if config.init_weights == "zero":
            last = self.embedding if self.transform is None else self.transform[-1]
            nn.init.zeros_(last.weight)
            if getattr(last, "bias", None) is not None:
                nn.init.zeros_(last.bias)

    def forward(self) -> torch.Tensor:
        table = self.embedding.weight  # [P, kv_width] or [P, L*2*kv_width]
        return table if self.transform is None else self.transform(table)
