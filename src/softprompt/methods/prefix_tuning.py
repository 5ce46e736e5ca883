"""Prefix tuning (Li & Liang 2021): trainable key/value prefixes for every attention layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from .. import compat, registry
from ..config import ConfigError, PeftType, PromptLearningConfig, positive_int_or_none
from .base import InjectionKind, ModelShape, PromptSource, init_text_ids


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

    prefix_init_text: str | None = None
    """softprompt's own field: start the prefixes as the keys and values the frozen model computes for this text
    (its tokens repeated or cut to num_virtual_tokens), so that training starts from the model reading the text
    before each input (Li & Liang's initialisation from real words' activations, their fix for few examples).
    Decoder-only models, flat table (prefix_projection=False)."""
    tokenizer_name_or_path: str | None = None
    """Tokenizer for prefix_init_text; defaults to the base model's."""

    SOFTPROMPT_FIELDS: ClassVar[dict[str, Any]] = {
        **PromptLearningConfig.SOFTPROMPT_FIELDS,
        "encoder_prefix": False,
        "prefix_init_text": None,
        "tokenizer_name_or_path": None,
    }
    PEFT_MISREADS = (*PromptLearningConfig.PEFT_MISREADS, "encoder_prefix")  # PEFT refuses its table's width

    def __post_init__(self) -> None:
        super().__post_init__()
        positive_int_or_none(self, "encoder_hidden_size")
        if self.init_weights not in (None, "zero"):
            raise ConfigError(f"init_weights must be None or 'zero', got {self.init_weights!r}.")
        if self.prefix_init_text is not None:
            if not self.prefix_init_text.strip():
                raise ConfigError(
                    "prefix_init_text is empty: give a task description, e.g. 'Is this tweet a complaint?', or leave "
                    "it out."
                )
            if self.prefix_projection or self.init_weights is not None:
                raise ConfigError(
                    "prefix_init_text sets the prefix table itself: use it with prefix_projection=False and no "
                    "init_weights."
                )
        if self.encoder_prefix and self.task_type != "SEQ_2_SEQ_LM":
            raise ConfigError(
                "encoder_prefix=True is for encoder-decoder models: set task_type='SEQ_2_SEQ_LM', or leave it out."
            )

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


class PrefixEncoder(PromptSource):
    """-> table [P, num_layers * 2 * kv_heads * head_dim]. Parameter names follow PEFT's PrefixEncoder."""

    injection = InjectionKind.KV_PREFIX

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
        if config.prefix_init_text is not None and base_model is not None:  # (None: weights come from a checkpoint)
            with torch.no_grad():
                self.embedding.weight.copy_(text_prefix_table(config, shape, base_model))

    def forward(self, task: int = 0) -> torch.Tensor:
        table = self.embedding.weight  # [P, kv_width] or [P, L*2*kv_width]
        return table if self.transform is None else self.transform(table)


@torch.no_grad()
def text_prefix_table(config: PrefixTuningConfig, shape: ModelShape, base_model: nn.Module) -> torch.Tensor:
    """The frozen model's keys and values for the init text at positions 0..P-1 -> [P, L * 2 * kv_width] in PEFT's
    layout (row p: layer 0's key, layer 0's value, layer 1's key, ...; each kv_heads x head_dim).

    A prefix is read as the cache of P earlier tokens, so at the start the model sees exactly the text before
    each input.
    """
    if shape.bidirectional or shape.encoder_decoder:
        raise ConfigError(
            "prefix_init_text needs a decoder-only model (its keys and values are read off its cache); "
            "leave it out for encoders and encoder-decoders."
        )
    count = config.num_virtual_tokens
    token_ids = init_text_ids(config, base_model, count, field="prefix_init_text")
    device = base_model.get_input_embeddings().weight.device
    was_training = base_model.training
    base_model.eval()
    cache = compat.output_cache(base_model(input_ids=torch.tensor([token_ids], device=device), use_cache=True))
    base_model.train(was_training)
    if cache is None:
        raise ConfigError(
            f"prefix_init_text: {type(base_model).__name__} returns no cache to read keys and values from; "
            "leave it out."
        )
    layers = compat.layer_states(cache)  # per layer (K, V), each [1, kv_heads, P, head_dim]
    states = torch.stack([state[0] for layer in layers for state in layer])  # [2L, kv_heads, P, head_dim]
    if states.shape != (2 * shape.num_layers, shape.num_kv_heads, count, shape.head_dim):  # e.g. a sliding window
        raise ConfigError(
            f"prefix_init_text: {type(base_model).__name__}'s cache holds keys/values of shape "
            f"{tuple(states.shape)}, not one [kv_heads, P, head_dim] per layer; leave the option out."
        )
    return states.permute(2, 0, 1, 3).reshape(count, -1).float()  # [P, 2L * kv_width]


registry.register_method(PeftType.PREFIX_TUNING, PrefixTuningConfig, PrefixEncoder, aliases=("prefix_tuning",))
