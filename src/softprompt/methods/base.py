"""What a method is: a config (softprompt.config) and a `PromptSource`, the small trainable module that makes
the prompt. The model wrapper knows sources only through this interface, never by method name.

A source's `forward(task)` returns its prompt table [P, D]; its class says how that table enters the frozen
model (`injection`):
- `InjectionKind.EMBEDDINGS`: D = hidden size, rows are virtual token embeddings placed before the input;
- `InjectionKind.KV_PREFIX`: D = layers * 2 * kv_heads * head_dim, rows are per-layer key/value prefixes
  (PEFT's layout: for layer i, slot 2i holds the keys and slot 2i+1 the values).
Everything else a source may need is declared here with the default most methods keep.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from .. import base_models
from ..errors import ConfigError


class InjectionKind(str, enum.Enum):
    EMBEDDINGS = "embeddings"  # virtual token embeddings [P, hidden] before the input
    KV_PREFIX = "kv_prefix"  # per-layer key/value prefixes [P, layers * 2 * kv_heads * head_dim]


@dataclass(frozen=True)
class ModelShape:
    """What a prompt must fit: read off the base model once (softprompt.core.shape.probe_shape)."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    bidirectional: bool = False  # an encoder: every token sees every other, and no cache is kept
    encoder_decoder: bool = False  # T5, BART: the fields above describe the decoder; encoder_layers the encoder
    encoder_layers: int = 0

    @property
    def kv_width(self) -> int:  # width of one layer's key (or value) for one token
        return self.num_kv_heads * self.head_dim


class PromptSource(nn.Module):
    """The interface every method's prompt module implements (subclass it and override what differs).

    Built as `SourceClass(config, shape, base_model)`; `base_model` is None when the weights will be loaded
    from a file, so the source must then skip any initialisation that reads the model.
    """

    injection: ClassVar[InjectionKind]
    """How the table enters the model."""
    collapses: ClassVar[bool] = True
    """True: after training the source is just its table, and the adapter file holds that table (PEFT's
    `prompt_embeddings`; inference then needs no method code). False: the file holds `adapter_tensors()`."""
    has_own_loss: ClassVar[bool] = False
    """True: a causal LM's training loss is `loss(...)` (CPT), when this adapter serves the whole batch."""
    prompt_logits: ClassVar[bool | str] = True
    """Which virtual positions' logits that loss reads: True, the last (it predicts the first input token); "all"."""
    loss_inputs: ClassVar[tuple[str, ...]] = ()
    """Forward arguments only this source's loss reads (CPT: input_type_mask); datasets may carry them."""

    @property
    def num_tasks(self) -> int:
        """How many task prompts the source holds; rows pick one with `task_ids`."""
        return 1

    def forward(self, task: int = 0) -> torch.Tensor:
        """The prompt table [P, D] (of task `task`)."""
        raise NotImplementedError

    def input_offsets(self, task: int = 0) -> torch.Tensor | None:
        """Offsets [s, H] added to the embeddings of the input's first s real tokens (DePT), or None (most methods:
        the input's embeddings are left as they are)."""
        return None

    def parameter_groups(self, learning_rate: float) -> list[dict]:
        """The optimizer's parameter groups for this source: one at the run's learning rate unless a method's
        parts take their own (DePT's offsets)."""
        return [{"params": list(self.parameters()), "lr": learning_rate}]

    def loss(self, prompt_logits: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, **inputs) -> torch.Tensor:
        """The training loss, for a source with `has_own_loss`. prompt_logits [1, n, V], logits [B, T, V],
        labels [B, L]."""
        raise NotImplementedError

    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        """What the adapter file holds, for a source that does not collapse to one table."""
        raise NotImplementedError

    @classmethod
    def from_adapter_tensors(cls, config, shape: ModelShape, tensors: dict[str, torch.Tensor]) -> PromptSource:
        """The inverse of `adapter_tensors`."""
        raise NotImplementedError


class PromptTable(PromptSource):
    """A method's prompt collapsed to its output table (what PEFT saves as `prompt_embeddings`).

    Inference needs nothing else: any encoder has already run.
    """

    def __init__(self, table: torch.Tensor, injection: InjectionKind):
        super().__init__()
        self.injection = injection
        self.embedding = nn.Embedding(table.shape[0], table.shape[1])
        with torch.no_grad():
            self.embedding.weight.copy_(table)

    def forward(self, task: int = 0) -> torch.Tensor:
        return self.embedding.weight  # [P, D]


def has_encoder(source: nn.Module) -> bool:
    """True when a prompt source has parameters besides its table (an MLP, LSTM or projection)."""
    return set(source.state_dict()) != {"embedding.weight"}


def init_text_ids(config, base_model: nn.Module, count: int, field: str = "prompt_tuning_init_text") -> list[int]:
    """The token ids of the config's init text (its field `field`), read with its tokenizer or the base model's,
    repeated or cut to `count`."""
    name = config.tokenizer_name_or_path or config.base_model_name_or_path or base_model.name_or_path
    if not name:  # a model built from a config names no folder or hub id
        raise ConfigError(f"{field} needs a tokenizer and the base model names none: set tokenizer_name_or_path.")
    tokenizer = base_models.load_tokenizer(name, **(getattr(config, "tokenizer_kwargs", None) or {}))
    token_ids = tokenizer(getattr(config, field), add_special_tokens=False)["input_ids"]
    if not token_ids:
        raise ConfigError(f"{field}={getattr(config, field)!r} gives no tokens.")
    return (token_ids * -(-count // len(token_ids)))[:count]  # ceil(count / tokens) copies, cut to count
