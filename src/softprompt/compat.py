"""Every place softprompt touches transformers' internals, in one file.

Cache layers, the cache argument's name, signature probing and the checkpointing switches change
between transformers releases; when an upgrade breaks softprompt, it should break here (and in the
correctness tests that exercise it), nowhere else. Probes are computed once per model class.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import sys
import types

import torch
from torch import nn
from torch.nn import functional as F
from transformers import DynamicCache, EncoderDecoderCache
from transformers.cache_utils import DynamicLayer


@functools.cache
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
    kwargs.setdefault("context_fn", prefix_checkpoint_contexts)  # non-reentrant checkpoints only (the ones we use)
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


class PassThroughLayer(DynamicLayer):
    """A cross-attention cache layer that keeps nothing: every call attends to the encoder's states afresh."""

    def update(self, key_states, value_states, *args, **kwargs):
        return key_states, value_states


class _NeverUpdated(dict):
    """EncoderDecoderCache.is_updated that never says a cross-attention layer is cached (stateless under
    recomputation)."""

    def __setitem__(self, key, value):
        pass

    def get(self, key, default=None):
        return False


def decoder_prefix_cache(layer_kv: list[tuple[torch.Tensor, torch.Tensor]]) -> EncoderDecoderCache:
    """A seq2seq forward's cache: the decoder's self-attention gets the fixed prefix, cross-attention nothing."""
    cross = DynamicCache()
    cross.layers = [PassThroughLayer() for _ in layer_kv]
    cache = EncoderDecoderCache(frozen_prefix_cache(layer_kv), cross)
    cache.is_updated = _NeverUpdated()
    return cache


def filled_decoder_cache(model: nn.Module, layer_kv: list[tuple[torch.Tensor, torch.Tensor]]) -> EncoderDecoderCache:
    """A seq2seq generation's cache: the decoder's self-attention pre-filled with a prefix, cross-attention empty."""
    return EncoderDecoderCache(filled_cache(model, layer_kv), DynamicCache(config=model.config))


def layer_states(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer (keys, values) held by a cache, each [B, kv_heads, T, head_dim]."""
    return [(layer.keys, layer.values) for layer in cache.layers]


# Methods of transformers' own PEFT integration (PeftAdapterMixin) on every PreTrainedModel. Reached
# through attribute forwarding they would act on the base model behind softprompt's back.
def base_model_adapter_methods() -> frozenset[str]:
    from transformers.integrations import PeftAdapterMixin

    return frozenset(name for name in vars(PeftAdapterMixin) if not name.startswith("__"))


def fsdp_sharded(*modules: nn.Module) -> bool:
    """True when one of `modules` is an FSDP2 unit (`fully_shard`). Its parameters are gathered anew for each
    forward, so their data pointers and versions do not follow their values, and every rank must run the same
    collectives: nothing computed through them may be cached per rank."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch built without distributed
        return False
    return any(isinstance(module, FSDPModule) for module in modules)


def fsdp_units_holding(root: nn.Module, modules: list[nn.Module]) -> list[nn.Module]:
    """The FSDP2 units that hold the parameters of `modules`: each one's nearest unit at or above it and the
    units inside it, in `root`'s module order (the same on every rank)."""
    from torch.distributed.fsdp import FSDPModule

    named = list(root.named_modules(remove_duplicate=False))  # a head may sit in two places
    units = {name: module for name, module in named if isinstance(module, FSDPModule)}
    wanted = {id(module) for module in modules}
    chosen = set()
    for name, module in named:
        if id(module) not in wanted:
            continue
        above = [unit for unit in units if unit == "" or name == unit or name.startswith(unit + ".")]
        chosen.update([max(above, key=len)] if above else [])
        chosen.update(unit for unit in units if name == "" or unit.startswith(name + "."))
    return [module for name, module in units.items() if name in chosen]


@contextlib.contextmanager
def fsdp_gathered(root: nn.Module, modules: list[nn.Module]):
    """Inside the block, the parameters of `modules` are whole tensors even when `root` is sharded with FSDP2
    (outside a forward they are DTensor shards). The all-gathers are collectives: every rank enters. What is
    written to the gathered tensors is dropped (FSDP2 keeps the shards): load with `load_whole_state`."""
    units = fsdp_units_holding(root, modules) if fsdp_sharded(*root.modules()) else []
    for unit in units:
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()


def current_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """`module.state_dict()` read from the tensors the module holds now: inside `fsdp_gathered` the whole ones
    (FSDP2's state_dict hooks would hand back the rank's shards)."""
    state = dict(module.named_parameters(remove_duplicate=False))  # (state_dict() itself crashes while gathered)
    for prefix, sub in module.named_modules():
        for name, buffer in sub.named_buffers(recurse=False):
            if name not in sub._non_persistent_buffers_set:
                state[f"{prefix}.{name}" if prefix else name] = buffer
    return {key: tensor.detach().clone() for key, tensor in state.items()}


def load_whole_state(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """`module.load_state_dict(state)` for whole tensors, also where the module's parameters are FSDP2 shards:
    each value is cut into the rank's shard first (a collective: every rank loads the same state)."""
    current = module.state_dict()
    module.load_state_dict({key: sharded_like(value, current.get(key)) for key, value in state.items()})


def sharded_like(value: torch.Tensor, target) -> torch.Tensor:
    """`value` cut into this rank's shard where `target` is a DTensor of the same global shape; else as it is."""
    if not (hasattr(target, "device_mesh") and value.shape == target.shape):
        return value
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(value.to(target.dtype), target.device_mesh, target.placements)


# ---- key/value prefixes for models that keep no cache (bidirectional encoders) ----------------
# transformers 5's attention interface: a registered attention function that every layer calls. Ours adds
# the active prefix's keys/values (and mask columns) for the layer, then runs the model's own attention.
PREFIX_ATTENTION = "softprompt_prefix"
_ACTIVE_PREFIX: contextvars.ContextVar = contextvars.ContextVar("softprompt_prefix", default=None)


INNER_ATTENTION = "_softprompt_inner_attention"  # on each module: the implementation the model had


class PrefixCall:
    """One forward's prefix: per-layer (keys, values) [B, kv_heads, P, head_dim] and mask [B, P] (or None: no
    prefix, only recording the key shapes, as the shape probe does)."""

    def __init__(self, layers=None, mask=None):
        self.layers, self.mask = layers, mask
        self.calls = 0
        self.key_shapes: list = []


def prefix_attention(module, query, key, value, attention_mask, **kwargs):
    call = _ACTIVE_PREFIX.get()
    inner = module.__dict__.get(INNER_ATTENTION, "eager")  # outside our forwards too, the model's own attention
    attend = (
        getattr(sys.modules[type(module).__module__], "eager_attention_forward", eager_attention)
        if inner == "eager"
        else _attention_functions()[inner]
    )
    if call is not None:
        index = getattr(module, "layer_idx", None)
        index = call.calls if index is None else index  # layers without an index run in order
        call.calls += 1
        call.key_shapes.append(tuple(key.shape))  # [B, kv_heads, T, head_dim]
        if call.layers is not None:
            keys, values = call.layers[index]
            key = torch.cat([keys.to(key.dtype), key], dim=-2)
            value = torch.cat([values.to(value.dtype), value], dim=-2)
            if attention_mask is not None or not bool(call.mask.all()):
                attention_mask = prefixed_mask(attention_mask, call.mask, query, key)
            if kwargs.get("position_bias") is not None:  # T5, MPNet: the prefix's keys get no position bias
                kwargs["position_bias"] = F.pad(kwargs["position_bias"], (keys.shape[-2], 0))
    return attend(module, query, key, value, attention_mask, **kwargs)


def prefixed_mask(attention_mask, prefix_mask, query, key) -> torch.Tensor:
    """An additive mask [B, 1, q, P+L]: the prefix's columns (0 where it is real), then the input's."""
    batch, length, total = query.shape[0], query.shape[-2], key.shape[-2]
    dtype = query.dtype
    blocked = torch.finfo(dtype).min
    prefix = torch.zeros(batch, 1, length, prefix_mask.shape[1], dtype=dtype, device=query.device)
    prefix = prefix.masked_fill(prefix_mask[:, None, None, :] == 0, blocked)
    if attention_mask is None:
        attention_mask = torch.zeros(batch, 1, length, total - prefix_mask.shape[1], dtype=dtype, device=query.device)
    elif attention_mask.dtype == torch.bool:
        attention_mask = torch.zeros_like(attention_mask, dtype=dtype).masked_fill(~attention_mask, blocked)
    return torch.cat([prefix, attention_mask.to(dtype).expand(batch, 1, length, -1)], dim=-1)


def eager_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, position_bias=None, **kwargs):
    """Attention with an additive bias and mask, for models with no eager function of their own:
    query [B, H, q, d], key/value [B, H, k, d] -> ([B, q, H, d], weights [B, H, q, k])."""
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if position_bias is not None:
        scores = scores + position_bias
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = F.dropout(scores.softmax(-1), p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def mpnet_self_attention_forward(
    self, hidden_states, attention_mask=None, position_bias=None, output_attentions=False, **kwargs
):
    """MPNetSelfAttention.forward of transformers 5.24, with its attention run through `prefix_attention`."""
    shape = (*hidden_states.shape[:-1], -1, self.attention_head_size)
    query, key, value = (
        projection(hidden_states).view(shape).transpose(1, 2) for projection in (self.q, self.k, self.v)
    )
    output, weights = prefix_attention(
        self, query, key, value, attention_mask, dropout=self.dropout.p, position_bias=position_bias
    )
    output = self.o(output.reshape(*hidden_states.shape[:-1], self.all_head_size))
    return (output, weights) if output_attentions else (output,)


# Attention modules that bypass transformers' attention interface: their forward, rewritten to go through ours.
ATTENTION_SHIMS = {"MPNetSelfAttention": mpnet_self_attention_forward}


def _attention_functions():
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return ALL_ATTENTION_FUNCTIONS


def use_prefix_attention(model: nn.Module) -> bool:
    """Route the model's attention through `prefix_attention` (False: it cannot be routed)."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask
    from transformers.modeling_utils import AttentionInterface

    if INNER_ATTENTION in model.__dict__:
        return True
    inner = model.config._attn_implementation or "eager"
    if inner == PREFIX_ATTENTION:  # a config shared with a model already routed: its own choice is lost
        inner = "eager"
    AttentionInterface.register(PREFIX_ATTENTION, prefix_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(PREFIX_ATTENTION, eager_mask)  # additive masks, which prefixed_mask extends
    shimmed = [module for module in model.modules() if type(module).__name__ in ATTENTION_SHIMS]
    for module in shimmed:  # on the instance: the class (and every other model) stays as it is
        module.forward = types.MethodType(ATTENTION_SHIMS[type(module).__name__], module)
    if shimmed:
        inner = "eager"
    else:
        try:
            model.set_attn_implementation(PREFIX_ATTENTION)
        except (ValueError, AttributeError):
            return False
        if model.config._attn_implementation != PREFIX_ATTENTION:  # some models only log that they cannot
            return False
    for module in model.modules():  # instance attributes: nothing reaches a saved config
        module.__dict__[INNER_ATTENTION] = inner
    return True


def prefix_checkpoint_contexts():
    """torch checkpoint's `context_fn`: a layer recomputed during backward sees the prefix its forward saw.

    The active prefix lives in a context variable that backward runs outside of; this captures it, with the
    layer count so far (layers without an index), when the checkpointed layer first runs.
    """
    call = _ACTIVE_PREFIX.get()
    if call is None or call.layers is None:
        return contextlib.nullcontext(), contextlib.nullcontext()
    replay = PrefixCall(call.layers, call.mask)
    replay.calls = call.calls
    return contextlib.nullcontext(), prefix_attention_context(replay)


@contextlib.contextmanager
def prefix_attention_context(call: PrefixCall):
    token = _ACTIVE_PREFIX.set(call)
    try:
        yield call
    finally:
        _ACTIVE_PREFIX.reset(token)


def accelerator_for(**settings):
    """An accelerate.Accelerator with these settings, also when an earlier run in this process made one with others
    (accelerate keeps its settings in a process-wide singleton and refuses a second mixed_precision)."""
    from accelerate import Accelerator  # imported here: a second to import, and only training needs it
    from accelerate.state import AcceleratorState

    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision", settings.get("mixed_precision")) != settings.get("mixed_precision"):
        AcceleratorState._reset_state()  # the distributed setup (PartialState) stays as it is
    return Accelerator(**settings)
