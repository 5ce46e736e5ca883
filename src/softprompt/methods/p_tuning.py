"""P-tuning (Liu et al. 2021): virtual token embeddings produced by an MLP or LSTM encoder over a table."""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch
from torch import nn

from .. import registry
from ..config import ConfigError, PeftType, PromptLearningConfig, enum_choice, positive_int_or_none
from .base import InjectionKind, ModelShape, PromptSource


class PromptEncoderReparameterizationType(str, enum.Enum):
    MLP = "MLP"
    LSTM = "LSTM"


@dataclass
class PromptEncoderConfig(PromptLearningConfig):
    """P-tuning: a table of `num_virtual_tokens` rows passed through an encoder, then placed before the input."""

    peft_type = PeftType.P_TUNING

    encoder_reparameterization_type: str = PromptEncoderReparameterizationType.MLP
    """MLP (3 linear layers with ReLU) or LSTM (bidirectional LSTM, then a 2-layer MLP)."""
    encoder_hidden_size: int | None = None
    """Hidden width of the encoder; defaults to the model's hidden size."""
    encoder_num_layers: int = 2
    """LSTM layers (the MLP always has PEFT's fixed shape)."""
    encoder_dropout: float = 0.0
    """Dropout between LSTM layers."""

    def __post_init__(self) -> None:
        super().__post_init__()
        enum_choice(self, "encoder_reparameterization_type", PromptEncoderReparameterizationType)
        positive_int_or_none(self, "encoder_hidden_size")
        positive_int_or_none(self, "encoder_num_layers")
        if not 0.0 <= float(self.encoder_dropout) < 1.0:
            raise ConfigError(f"encoder_dropout must be in [0, 1), got {self.encoder_dropout!r}.")

    def fill_model_fields(self, shape: ModelShape) -> None:
        super().fill_model_fields(shape)
        if self.encoder_hidden_size is None:
            self.encoder_hidden_size = shape.hidden_size


class PromptEncoder(PromptSource):
    """table [P, H] -> encoder -> virtual embeddings [P, H]. Parameter names follow PEFT's PromptEncoder."""

    injection = InjectionKind.EMBEDDINGS

    def __init__(self, config: PromptEncoderConfig, shape: ModelShape, base_model: nn.Module):
        super().__init__()
        width, hidden = shape.hidden_size, config.encoder_hidden_size or shape.hidden_size
        self.embedding = nn.Embedding(config.num_virtual_tokens, width)
        self.lstm_head = None
        if config.encoder_reparameterization_type == "LSTM":
            self.lstm_head = nn.LSTM(
                input_size=width,
                hidden_size=hidden,
                num_layers=config.encoder_num_layers,
                dropout=config.encoder_dropout,
                bidirectional=True,
                batch_first=True,
            )
            self.mlp_head = nn.Sequential(nn.Linear(2 * hidden, 2 * hidden), nn.ReLU(), nn.Linear(2 * hidden, width))
        else:
            self.mlp_head = nn.Sequential(
                nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, width)
            )

    def forward(self, task: int = 0) -> torch.Tensor:
        table = self.embedding.weight  # [P, H]
        if self.lstm_head is not None:
            table = self.lstm_head(table.unsqueeze(0))[0].squeeze(0)  # [P, 2*hidden]
        return self.mlp_head(table)  # [P, H]


registry.register_method(PeftType.P_TUNING, PromptEncoderConfig, PromptEncoder, aliases=("p_tuning", "ptuning"))
