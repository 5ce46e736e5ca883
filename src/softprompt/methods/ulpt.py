"""Ultra-low-dimensional prompt tuning, ULPT (Wu, Hao & Mou, EACL 2026): the prompt lives in r dimensions (r = 2 in
the paper) and a frozen random matrix lifts it to the model's width, with a learned scale and shift per dimension:

    P = shift + scale * (Z @ R)      Z [P, r] trained, R [r, H] frozen (Xavier-uniform, seeded), scale, shift [H]

so it trains P*r + 2H parameters (1,192 for 20 tokens at r = 2 on SmolLM2's width 576, against prompt tuning's
11,520). After training the prompt is the table P, saved as a plain prompt-tuning adapter that PEFT reads as its own;
training checkpoints keep Z, R, scale and shift to resume.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .. import registry
from ..config import ConfigError, PeftType, PromptLearningConfig
from .base import InjectionKind, ModelShape, PromptSource


@dataclass
class ULPTConfig(PromptLearningConfig):
    """ULPT: a prompt of `num_virtual_tokens` rows in `low_rank` dimensions, lifted by a frozen random projection."""

    peft_type = "ULPT"
    exports_as = PeftType.PROMPT_TUNING  # trained, it is saved as a plain prompt-tuning table
    default_learning_rate = 0.3  # the paper's runs use 0.6 on T5; few parameters take large steps

    low_rank: int = 2
    """r: the dimensions the prompt is trained in."""
    projection_seed: int = 0
    """Seeds the frozen projection R (saved with the training checkpoints, so resuming does not depend on it)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.low_rank, int) or self.low_rank < 1:
            raise ConfigError(f"low_rank must be a positive integer, got {self.low_rank!r}.")


class ULPTEmbedding(PromptSource):
    """Z [P, r] -> shift + scale * (Z @ R) [P, H], R frozen."""

    injection = InjectionKind.EMBEDDINGS

    def __init__(self, config: ULPTConfig, shape: ModelShape, base_model: nn.Module):
        super().__init__()
        width = shape.hidden_size
        generator = torch.Generator().manual_seed(config.projection_seed)
        bound = (6 / (config.low_rank + width)) ** 0.5  # Xavier-uniform, as the authors' T5 code
        projection = (torch.rand(config.low_rank, width, generator=generator) * 2 - 1) * bound
        self.register_buffer("projection", projection)  # [r, H], frozen, saved in checkpoints
        self.low_dim = nn.Embedding(config.num_virtual_tokens, config.low_rank)  # Z, N(0, 1) as the authors'
        self.scale = nn.Parameter(torch.ones(width))
        self.shift = nn.Parameter(torch.zeros(width))

    def forward(self, task: int = 0) -> torch.Tensor:
        return self.shift + self.scale * (self.low_dim.weight @ self.projection)  # [P, H]


registry.register_method("ULPT", ULPTConfig, ULPTEmbedding, aliases=("ulpt", "ultra_low_dim_prompt_tuning"))
