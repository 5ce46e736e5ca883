"""Residual prompt tuning (Razdaibiedina et al., Findings of ACL 2023): the prompt table passes through a shallow
bottleneck MLP with a skip connection, P' = P + LayerNorm(W_up relu(W_down P)), one MLP shared by every virtual token
(the paper's choice over one per token). The reparameterisation makes training robust to the learning rate and the
start; after training the prompt is just P', so the adapter file is a plain prompt-tuning table that PEFT reads as its
own PROMPT_TUNING adapter (and inference needs no method code). Training checkpoints keep the MLP to resume.

One departure, for models whose token embeddings are small (SmolLM2's have std 0.14, where the authors' T5 has far
larger ones): `residual_init="zero"` (the default) starts the LayerNorm's gain at 0, so the branch adds nothing at
first and the prompt starts exactly as prompt tuning's init (a text, say); "layer_norm" is the authors' start
(gain 1), whose branch then outweighs such a model's tokens several times over.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .. import registry
from ..config import ConfigError, PeftType
from .base import ModelShape
from .prompt_tuning import PromptEmbedding, PromptTuningConfig


@dataclass
class ResidualPromptTuningConfig(PromptTuningConfig):
    """Residual prompt tuning: prompt tuning's table through a shared bottleneck MLP with a skip connection."""

    peft_type = "RESIDUAL_PROMPT_TUNING"
    exports_as = PeftType.PROMPT_TUNING  # trained, it is saved as a plain prompt-tuning table

    bottleneck_size: int = 400
    """Width of the MLP's bottleneck (the authors use 400-800 on T5-base)."""
    residual_init: str = "zero"
    """zero: the LayerNorm's gain starts at 0 (the prompt starts as initialised); layer_norm: gain 1 (the authors')."""
    residual_dropout: float = 0.0
    """Dropout on the MLP's output, before the LayerNorm."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.bottleneck_size, int) or self.bottleneck_size < 1:
            raise ConfigError(f"bottleneck_size must be a positive integer, got {self.bottleneck_size!r}.")
        if self.residual_init not in ("zero", "layer_norm"):
            raise ConfigError(f"residual_init must be 'zero' or 'layer_norm', got {self.residual_init!r}.")
        if not 0.0 <= float(self.residual_dropout) < 1.0:
            raise ConfigError(f"residual_dropout must be in [0, 1), got {self.residual_dropout!r}.")


class ResidualPromptEmbedding(PromptEmbedding):
    """table [P, H] -> table + LayerNorm(MLP(table)) [P, H]."""

    def __init__(self, config: ResidualPromptTuningConfig, shape: ModelShape, base_model: nn.Module):
        super().__init__(config, shape, base_model)  # the table, started as prompt tuning's (TEXT, SAMPLE_VOCAB...)
        width = shape.hidden_size
        self.mlp = nn.Sequential(
            nn.Linear(width, config.bottleneck_size),
            nn.ReLU(),
            nn.Linear(config.bottleneck_size, width),
            nn.Dropout(config.residual_dropout),
            nn.LayerNorm(width),
        )
        if config.residual_init == "zero":
            nn.init.zeros_(self.mlp[-1].weight)

    def forward(self, task: int = 0) -> torch.Tensor:
        table = self.embedding.weight  # [P, H]
        return table + self.mlp(table)  # [P, H]


registry.register_method(
    "RESIDUAL_PROMPT_TUNING",
    ResidualPromptTuningConfig,
    ResidualPromptEmbedding,
    aliases=("residual_prompt_tuning", "residual"),
)
