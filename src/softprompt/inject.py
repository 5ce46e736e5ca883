"""The two ways a prompt enters a frozen causal LM, and the bookkeeping both need.

A prompt source returns a table `[P, D]`. Its injection says what the table means:
- `EmbeddingPrefix`: D = hidden size; rows are virtual token embeddings placed before the input.
- `KVPrefix`: D = num_layers * 2 * kv_heads * head_dim; rows are per-layer key/value prefixes.
Both lay a batch out as `[virtual][pad ...][text]` and give every real token the position it has
when the example runs alone (positions from the attention mask), so left padding changes nothing.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


@dataclass(frozen=True)
class ModelShape:
    """What a prompt must fit: read off the base model once, by a one-token forward."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int

    @property
    def kv_width(self) -> int:  # width of one layer's key (or value) for one token
        return self.num_kv_heads * self.head_dim


def cache_argument(model: nn.Module) -> str:
    """The name the model's forward gives its KV cache (`cache` in transformers 5.2x, else `past_key_values`)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def accepts_position_ids(model: nn.Module) -> bool:
    return "position_ids" in inspect.signature(model.forward).parameters


def output_cache(output):
    return output["cache"] if "cache" in output else output["past_key_values"]


@torch.no_grad()
def probe_shape(model: nn.Module) -> ModelShape:
    """Run one token through the model and read layer count, KV heads and head_dim off its cache.

    This is exact for grouped-query attention and for models whose head_dim is not hidden/heads.
    """
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    device = model.get_input_embeddings().weight.device
    was_training = model.training
    model.eval()
    output = model(input_ids=torch.zeros(1, 1, dtype=torch.long, device=device), use_cache=True)
    model.train(was_training)
    layers = output_cache(output).layers
    keys = layers[0].keys  # [1, kv_heads, 1, head_dim]
    return ModelShape(
        hidden_size=model.get_input_embeddings().embedding_dim,
        num_layers=len(layers),
        num_heads=config.num_attention_heads,
        num_kv_heads=keys.shape[1],
        head_dim=keys.shape[-1],
    )


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] mask -> [B, T] positions: each real token counts the real tokens before it; pads get 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class FrozenPrefixLayer(DynamicLayer):
    """A cache layer holding a fixed prefix: `update` returns prefix + new states and stores nothing.

    Being stateless, it gives the same result when gradient checkpointing runs a layer twice,
    and it keeps the autograd graph back to the prompt parameters.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.keys, self.values = keys, values  # [B, kv_heads, P, head_dim]
        self.is_initialized = True
        self.device = keys.device

    def update(self, key_states, value_states, *args, **kwargs):
        return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)


def frozen_prefix_cache(layer_kv: list[tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
    cache = DynamicCache()
    cache.layers = [FrozenPrefixLayer(k, v) for k, v in layer_kv]
    return cache


def filled_cache(model: nn.Module, layer_kv: list[tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
    """An ordinary (growing) cache pre-filled with a prefix, for generation."""
    cache = DynamicCache(config=model.config)
    for layer_idx, (keys, values) in enumerate(layer_kv):
        cache.update(keys, values, layer_idx)
    return cache


def run_with_prefix_cache(model, cache, num_prefix, input_ids, inputs_embeds, attention_mask, position_ids, **kwargs):
    """Forward the inputs after a cache holding `num_prefix` prompt positions. Returns the model output."""
    batch, length = (input_ids if input_ids is not None else inputs_embeds).shape[:2]
    device = cache.layers[0].keys.device
    if attention_mask is None:
        attention_mask = torch.ones(batch, length, dtype=torch.long, device=device)
    full_mask = torch.cat([attention_mask.new_ones(batch, num_prefix), attention_mask], dim=1)  # [B, P+L]
    if accepts_position_ids(model):
        kwargs["position_ids"] = (
            positions_from_mask(full_mask)[:, num_prefix:] if position_ids is None else position_ids + num_prefix
        )
    kwargs[cache_argument(model)] = cache
    return model(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=full_mask, use_cache=False, **kwargs)


class Injection:
    """How a prompt table enters the model. Subclasses fill in the three methods."""

    def __init__(self, shape: ModelShape):
        self.shape = shape

    def table_width(self) -> int:
        raise NotImplementedError

    def forward(self, model, table, input_ids, inputs_embeds, attention_mask, position_ids, **kwargs):
        """-> logits [B, T, V] for the last T positions of the sequence (virtual ones included, if any)."""
        raise NotImplementedError

    def generation_cache(self, model, table, batch_size) -> DynamicCache:
        """A growing cache holding the P prompt positions, for `generate`."""
        raise NotImplementedError


class RecordingLayer(DynamicLayer):
    """A cache layer that keeps the states of its last update and returns them unchanged.

    Running the prompt alone through it records the prompt's keys/values; a recomputation under
    gradient checkpointing overwrites them with the same values instead of appending.
    """

    def update(self, key_states, value_states, *args, **kwargs):
        self.keys, self.values = key_states, value_states  # [1, kv_heads, P, head_dim]
        self.is_initialized = True
        self.device = key_states.device
        return key_states, value_states


class EmbeddingPrefix(Injection):
    """Virtual token embeddings [P, hidden] that come before the input.

    The virtual tokens attend only to each other, so their hidden states do not depend on the input:
    they run once per batch (batch 1), and every row attends to their keys/values. This equals
    prepending the embeddings to every row (tested against that reference) and saves (B-1)*P
    positions of compute, forward and backward; gradients flow back through the shared keys/values.
    """

    def table_width(self) -> int:
        return self.shape.hidden_size

    def forward(self, model, table, input_ids, inputs_embeds, attention_mask, position_ids, **kwargs):
        batch, length = (input_ids if input_ids is not None else inputs_embeds).shape[:2]
        prompt_layers, last_virtual_logits = self.run_prompt(model, table)
        layers = [(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in prompt_layers]  # no copy
        output = run_with_prefix_cache(
            model, frozen_prefix_cache(layers), table.shape[0], input_ids, inputs_embeds, attention_mask, position_ids, **kwargs
        )
        logits = output.logits  # [B, T, V], the last T input positions
        if logits.shape[1] == length:  # all positions asked for: the last virtual one predicts the first input token
            logits = torch.cat([last_virtual_logits.expand(batch, -1, -1), logits], dim=1)  # [B, 1+L, V]
        return logits

    def run_prompt(self, model, table) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
        """The virtual tokens alone (batch 1, positions 0..P-1) -> per-layer (keys, values), last position's logits."""
        num_virtual = table.shape[0]
        embeds = table.to(model.get_input_embeddings().weight.dtype).unsqueeze(0)  # [1, P, H]
        mask = torch.ones(1, num_virtual, dtype=torch.long, device=embeds.device)
        cache = DynamicCache()
        cache.layers = [RecordingLayer() for _ in range(self.shape.num_layers)]
        kwargs = {"position_ids": positions_from_mask(mask)} if accepts_position_ids(model) else {}
        kwargs[cache_argument(model)] = cache
        output = model(inputs_embeds=embeds, attention_mask=mask, use_cache=True, logits_to_keep=1, **kwargs)
        return [(layer.keys, layer.values) for layer in cache.layers], output.logits  # logits [1, 1, V]

    @torch.no_grad()
    def generation_cache(self, model, table, batch_size) -> DynamicCache:
        layers, _ = self.run_prompt(model, table)
        return filled_cache(model, [(k.expand(batch_size, -1, -1, -1), v.expand(batch_size, -1, -1, -1)) for k, v in layers])


class KVPrefix(Injection):
    """Per-layer key/value prefixes, table [P, num_layers * 2 * kv_heads * head_dim] in PEFT's layout."""

    def table_width(self) -> int:
        return self.shape.num_layers * 2 * self.shape.kv_width

    def layer_kv(self, table: torch.Tensor, batch: int, dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """[P, L*2*kv_heads*head_dim] -> per layer (keys, values), each [B, kv_heads, P, head_dim].

        PEFT's layout: for layer i, slot 2i holds the keys and slot 2i+1 the values.
        """
        shape, num_virtual = self.shape, table.shape[0]
        kv = table.to(dtype).view(num_virtual, shape.num_layers * 2, shape.num_kv_heads, shape.head_dim)
        kv = kv.permute(1, 2, 0, 3)  # [L*2, kv_heads, P, head_dim]
        kv = kv.unsqueeze(1).expand(-1, batch, -1, -1, -1)  # [L*2, B, kv_heads, P, head_dim], no copy
        return [(kv[2 * i], kv[2 * i + 1]) for i in range(shape.num_layers)]

    def forward(self, model, table, input_ids, inputs_embeds, attention_mask, position_ids, **kwargs):
        batch = (input_ids if input_ids is not None else inputs_embeds).shape[0]
        dtype = model.get_input_embeddings().weight.dtype
        cache = frozen_prefix_cache(self.layer_kv(table, batch, dtype))
        output = run_with_prefix_cache(
            model, cache, table.shape[0], input_ids, inputs_embeds, attention_mask, position_ids, **kwargs
        )
        return output.logits

    @torch.no_grad()
    def generation_cache(self, model, table, batch_size) -> DynamicCache:
        dtype = model.get_input_embeddings().weight.dtype
        return filled_cache(model, self.layer_kv(table, batch_size, dtype))
