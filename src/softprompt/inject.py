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


class EmbeddingPrefix(Injection):
    """Virtual token embeddings [P, hidden] placed before the input embeddings."""

    def table_width(self) -> int:
        return self.shape.hidden_size

    def forward(self, model, table, input_ids, inputs_embeds, attention_mask, position_ids, **kwargs):
        if not torch.is_grad_enabled():
            return self.forward_from_prompt_cache(model, table, input_ids, inputs_embeds, attention_mask, position_ids, **kwargs)
        if inputs_embeds is None:
            inputs_embeds = model.get_input_embeddings()(input_ids)  # [B, L, H]
        batch, length = inputs_embeds.shape[:2]
        num_virtual = table.shape[0]
        prompt = table.to(inputs_embeds.dtype).unsqueeze(0).expand(batch, -1, -1)  # [B, P, H], no copy
        embeds = torch.cat([prompt, inputs_embeds], dim=1)  # [B, P+L, H]
        if attention_mask is None:
            attention_mask = torch.ones(batch, length, dtype=torch.long, device=embeds.device)
        full_mask = torch.cat([attention_mask.new_ones(batch, num_virtual), attention_mask], dim=1)
        if accepts_position_ids(model):
            if position_ids is None:
                kwargs["position_ids"] = positions_from_mask(full_mask)
            else:
                virtual = torch.arange(num_virtual, device=embeds.device).expand(batch, -1)
                kwargs["position_ids"] = torch.cat([virtual, position_ids + num_virtual], dim=1)
        return model(inputs_embeds=embeds, attention_mask=full_mask, use_cache=False, **kwargs).logits

    def forward_from_prompt_cache(self, model, table, input_ids, inputs_embeds, attention_mask, position_ids, **kwargs):
        """Inference: the virtual tokens do not depend on the input, so run them once for the whole
        batch and let every row attend to their keys/values, instead of recomputing them per row."""
        batch = (input_ids if input_ids is not None else inputs_embeds).shape[0]
        layers = [(layer.keys.expand(batch, -1, -1, -1), layer.values.expand(batch, -1, -1, -1))
                  for layer in self.prompt_cache(model, table).layers]  # each [B, kv_heads, P, head_dim], no copy
        output = run_with_prefix_cache(
            model, frozen_prefix_cache(layers), table.shape[0], input_ids, inputs_embeds, attention_mask, position_ids, **kwargs
        )
        return output.logits

    @torch.no_grad()
    def prompt_cache(self, model, table) -> DynamicCache:
        """The virtual tokens run alone (batch 1, positions 0..P-1): their KV cache."""
        num_virtual = table.shape[0]
        embeds = table.to(model.get_input_embeddings().weight.dtype).unsqueeze(0)  # [1, P, H]
        mask = torch.ones(1, num_virtual, dtype=torch.long, device=embeds.device)
        kwargs = {"position_ids": positions_from_mask(mask)} if accepts_position_ids(model) else {}
        return output_cache(model(inputs_embeds=embeds, attention_mask=mask, use_cache=True, **kwargs))

    def generation_cache(self, model, table, batch_size) -> DynamicCache:
        cache = self.prompt_cache(model, table)
        cache.batch_repeat_interleave(batch_size)
        return cache


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
