"""Decomposed prompt tuning, DePT (Shi & Lipani, ICLR 2024): a shorter prompt plus a low-rank update of the input's own
token embeddings,

    prompt P [m, H] before the input, as prompt tuning's;
    offsets  = scaling * (A @ B)  [s, H], A [s, r], B [r, H];  the input's k-th real token gets offsets[k] (k < s)

so it trains m*H + r*(s + H) parameters; with m shorter than prompt tuning's count, the sequence is shorter and every
call cheaper at the same budget. B starts at zero (the offsets start at nothing); A as LoRA's A. The offsets take
their own learning rate (`offset_learning_rate`: the authors' are 1e-4..5e-3 against the prompt's 0.3).

The input's tokens are counted from its first real token (padding skipped), so left and right padding give the same
result. The adapter file holds the three tensors (`prompt_embeddings`, `lora_embedding_A`, `lora_embedding_B`): PEFT
has no DePT, so only softprompt reads it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .. import registry
from ..config import ConfigError
from .base import ModelShape
from .prompt_tuning import PromptEmbedding, PromptTuningConfig


@dataclass
class DePTConfig(PromptTuningConfig):
    """DePT: prompt tuning's table (its init options too) and low-rank offsets to the input's first tokens."""

    peft_type = "DEPT"

    offset_length: int = 256
    """s: how many of the input's first tokens get an offset (the authors use the maximum input length)."""
    offset_rank: int = 8
    """r: the rank of the offsets."""
    offset_alpha: float = 8.0
    """The offsets are scaled by offset_alpha / sqrt(offset_rank), as in the authors' code."""
    offset_learning_rate: float = 1e-3
    """The offsets' learning rate (the prompt's is the run's)."""
    offset_init_std: float = 0.0
    """B's starting noise: 0 (the authors') starts the offsets at nothing."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("offset_length", "offset_rank"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
        if not self.offset_learning_rate > 0:
            raise ConfigError(f"offset_learning_rate must be positive, got {self.offset_learning_rate!r}.")
        if not self.offset_init_std >= 0:
            raise ConfigError(f"offset_init_std must be 0 or more, got {self.offset_init_std!r}.")


class DePTEmbedding(PromptEmbedding):
    """The prompt table [m, H] and the offsets' factors A [s, r], B [r, H]."""

    collapses = False  # the file holds the offsets' factors beside the table

    def __init__(self, config: DePTConfig, shape: ModelShape, base_model: nn.Module | None):
        super().__init__(config, shape, base_model)
        self.lora_embedding_A = nn.Parameter(torch.empty(config.offset_length, config.offset_rank))
        self.lora_embedding_B = nn.Parameter(torch.zeros(config.offset_rank, shape.hidden_size))
        nn.init.normal_(self.lora_embedding_B, std=config.offset_init_std)
        nn.init.kaiming_uniform_(self.lora_embedding_A, a=5**0.5)  # U(+-1/sqrt(r)), LoRA's A
        self.scaling = config.offset_alpha / config.offset_rank**0.5
        self.offset_learning_rate = config.offset_learning_rate

    def input_offsets(self, task: int = 0) -> torch.Tensor:
        return self.scaling * (self.lora_embedding_A @ self.lora_embedding_B)  # [s, r] @ [r, H] -> [s, H]

    def parameter_groups(self, learning_rate: float) -> list[dict]:
        offsets = [self.lora_embedding_A, self.lora_embedding_B]
        return [
            {"params": [self.embedding.weight], "lr": learning_rate},
            {"params": offsets, "lr": self.offset_learning_rate},
        ]

    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        return {
            "prompt_embeddings": self.embedding.weight,
            "lora_embedding_A": self.lora_embedding_A,
            "lora_embedding_B": self.lora_embedding_B,
        }

    @classmethod
    def from_adapter_tensors(cls, config, shape: ModelShape, tensors: dict[str, torch.Tensor]) -> DePTEmbedding:
        source = cls(config, shape, None)
        source.load_state_dict(
            {
                "embedding.weight": tensors["prompt_embeddings"],
                "lora_embedding_A": tensors["lora_embedding_A"],
                "lora_embedding_B": tensors["lora_embedding_B"],
            }
        )
        return source


registry.register_method("DEPT", DePTConfig, DePTEmbedding, aliases=("dept", "decomposed_prompt_tuning"))
