"""Every place softprompt touches transformers' internals, in one file.

Cache layers, the cache argument's name, signature probing and the checkpointing switches change
between transformers releases; when an upgrade breaks softprompt, it should break here (and in
tests/test_compat.py), nowhere else. Probes are computed once per model class.
"""

from __future__ import annotations

import functools
import inspect

import torch
from torch import nn
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


@functools.lru_cache(maxsize=None)
def _forward_parameters(model_class: type) -> frozenset[str]:
    return frozenset(inspect.signature(model_class.forward).parameters)


def cache_argument(model: nn.Module) -> str:
    """The name the model's forward gives its KV cache (`cache` in transformers 5.2x, else `past_key_values`)."""
    return "cache" if "cache" in _forward_parameters(type(model)) else "past_key_values"


def accepts_position_ids(model: nn.Module) -> bool:
    return "position_ids" in _forward_parameters(type(model))


def output_cache(output):
    """The cache a forward returned, or None (encoders keep none)."""
    for name in ("cache", "past_key_values"):
        if output.get(name) is not None:
            return output[name]
    return None


def allow_checkpointing_with_cache(model: nn.Module) -> None:
    """Let gradient-checkpointed layers keep our prompt caches.

    Our caches are safe to recompute (they never append); without this transformers drops a cache under
    gradient checkpointing, and the prompt with it.
    """
    for module in model.modules():
        if hasattr(type(module), "_can_checkpoint_with_cache"):
            module._can_checkpoint_with_cache = True


def enable_checkpointing(model: nn.Module, kwargs: dict) -> None:
    enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.2x name
    if enable is not None:
        enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


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


def frozen_prefix_cache(layer_kv: list[tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
    cache = DynamicCache()
    cache.layers = [FrozenPrefixLayer(k, v) for k, v in layer_kv]
    return cache


def recording_cache(num_layers: int) -> DynamicCache:
    cache = DynamicCache()
    cache.layers = [RecordingLayer() for _ in range(num_layers)]
    return cache


def filled_cache(model: nn.Module, layer_kv: list[tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
    """An ordinary (growing) cache pre-filled with a prefix, for generation."""
    cache = DynamicCache(config=model.config)
    for layer_idx, (keys, values) in enumerate(layer_kv):
        cache.update(keys, values, layer_idx)
    return cache


def layer_states(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer (keys, values) held by a cache, each [B, kv_heads, T, head_dim]."""
    return [(layer.keys, layer.values) for layer in cache.layers]


# Methods of transformers' own PEFT integration (PeftAdapterMixin) on every PreTrainedModel. Reached
# through attribute forwarding they would act on the base model behind softprompt's back.
def base_model_adapter_methods() -> frozenset[str]:
    from transformers.integrations import PeftAdapterMixin

    return frozenset(name for name in vars(PeftAdapterMixin) if not name.startswith("__"))
