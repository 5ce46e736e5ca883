"""The two ways a prompt enters a frozen causal LM, and the prefix both reduce to.

A prompt source returns a table `[P, D]`. Its injection says what the table means:
- `EmbeddingPrefix`: D = hidden size; rows are virtual token embeddings placed before the input.
- `KVPrefix`: D = num_layers * 2 * kv_heads * head_dim; rows are per-layer key/value prefixes.
Either way, what the input sees is per-layer keys/values of P virtual positions that do not depend on
the input (`PromptStates`). A batch's `Prefix` stacks them, one adapter per row if need be, left-padded
to the longest prompt with a prefix mask; every real token gets the position it has when its row runs
alone (positions from the mask), so padding, of the prefix or of the input, changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .compat import (
    PrefixCall,
    accepts_position_ids,
    cache_argument,
    frozen_prefix_cache,
    layer_states,
    output_cache,
    prefix_attention_context,
    recording_cache,
    use_prefix_attention,
)

LayerStates = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (keys, values), each [B, kv_heads, P, head_dim]


@dataclass(frozen=True)
class ModelShape:
    """What a prompt must fit: read off the base model once, by a one-token forward."""

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


@torch.no_grad()
def probe_shape(model: nn.Module) -> ModelShape:
    """Run one token through the model and read layer count, KV heads and head_dim off its cache.

    This is exact for grouped-query attention and for models whose head_dim is not hidden/heads.
    """
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    device = model.get_input_embeddings().weight.device
    one_token = torch.zeros(1, 1, dtype=torch.long, device=device)
    encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
    extra = {"decoder_input_ids": one_token} if encoder_decoder else {}
    was_training = model.training
    model.eval()
    cache = output_cache(model(input_ids=one_token, use_cache=True, **extra))
    backbone = getattr(model, "base_model", model)
    if cache is None and backbone is not model:  # a head that returns no cache (token classification)
        cache = output_cache(backbone(input_ids=one_token, use_cache=True, **extra))
    model.train(was_training)
    if cache is None:
        return probe_encoder_shape(model, config)
    layers = layer_states(getattr(cache, "self_attention_cache", cache))  # a seq2seq model: the decoder's
    keys = layers[0][0]  # [1, kv_heads, 1, head_dim]
    return ModelShape(
        hidden_size=model.get_input_embeddings().embedding_dim,
        num_layers=len(layers),
        num_heads=getattr(config, "num_attention_heads", None) or config.num_heads,
        num_kv_heads=keys.shape[1],
        head_dim=keys.shape[-1],
        encoder_decoder=encoder_decoder,
        encoder_layers=getattr(config, "num_hidden_layers", 0) if encoder_decoder else 0,
    )


@torch.no_grad()
def probe_encoder_shape(model: nn.Module, config) -> ModelShape:
    """A model that keeps no cache (an encoder): route its attention through ours and record the key shapes."""
    if not use_prefix_attention(model):
        raise ValueError(
            f"{type(model).__name__} keeps no key/value cache and its attention cannot be routed through "
            "transformers' attention interface, so no prompt can reach its layers."
        )
    device = model.get_input_embeddings().weight.device
    was_training = model.training
    model.eval()
    with prefix_attention_context(PrefixCall()) as call:
        model(input_ids=torch.zeros(1, 1, dtype=torch.long, device=device))
    model.train(was_training)
    keys = call.key_shapes  # one [1, kv_heads, 1, head_dim] per layer
    return ModelShape(
        hidden_size=model.get_input_embeddings().embedding_dim,
        num_layers=len(keys),
        num_heads=getattr(config, "num_attention_heads", None) or getattr(config, "n_heads"),
        num_kv_heads=keys[0][1],
        head_dim=keys[0][-1],
        bidirectional=True,
    )


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] mask -> [B, T] positions: each real token counts the real tokens before it; pads get 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@dataclass
class PromptStates:
    """One adapter's prompt as the input sees it: per-layer keys/values of its P virtual positions (batch 1).

    `logits` [1, n, V]: what the last n virtual positions predict (embedding prompts only, and only when
    asked for: the loss uses the last for a label on the first input token, as PEFT does; CPT reads all).
    """

    layers: LayerStates  # each [1, kv_heads, P, head_dim]
    logits: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return self.layers[0][0].shape[-2]

    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.layers)


@dataclass
class Prefix:
    """A batch's prompt positions: per-layer keys/values [B, kv_heads, P, head_dim] and mask [B, P].

    Rows with a shorter prompt (or none: the bare base model) are left-padded with masked positions.
    """

    layers: LayerStates
    mask: torch.Tensor  # [B, P], 1 on a row's real virtual positions

    @property
    def length(self) -> int:
        return self.mask.shape[1]

    @classmethod
    def shared(cls, states: PromptStates, batch: int) -> "Prefix":
        """Every row uses the same prompt: a view, no copy."""
        layers = [(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in states.layers]
        return cls(layers, torch.ones(batch, states.length, dtype=torch.long, device=states.layers[0][0].device))

    @classmethod
    def per_row(cls, row_states: list[PromptStates | None], template: LayerStates) -> "Prefix":
        """One prompt (or None: no prompt) per row, left-padded to the longest. `template`: any layer states,
        for the shapes, dtype and device of an empty prefix."""
        distinct = list({id(s): s for s in row_states if s is not None}.values())
        if len(distinct) == 1 and all(s is distinct[0] for s in row_states):
            return cls.shared(distinct[0], len(row_states))
        length = max((s.length for s in distinct), default=0)
        device = template[0][0].device
        lengths = torch.tensor([0 if s is None else s.length for s in row_states], device=device)
        mask = (torch.arange(length, device=device) >= length - lengths[:, None]).long()  # [B, P]
        # slot 0 is the empty prompt; rows pick their adapter's slot
        slot_of = {id(s): n + 1 for n, s in enumerate(distinct)}
        index = torch.tensor([0 if s is None else slot_of[id(s)] for s in row_states], device=device)
        layers = []
        for layer, (like, _) in enumerate(template):
            empty = like.new_zeros(1, like.shape[1], length, like.shape[-1])
            keys = torch.cat([empty] + [left_pad(s.layers[layer][0], length) for s in distinct])  # [1+U, kv, P, hd]
            values = torch.cat([empty] + [left_pad(s.layers[layer][1], length) for s in distinct])
            layers.append((keys.index_select(0, index), values.index_select(0, index)))  # [B, kv, P, hd]
        return cls(layers, mask)


def prepend_prompt(table: torch.Tensor, embed: nn.Module, input_ids, inputs_embeds, attention_mask, token_type_ids=None):
    """A bidirectional model's input with the virtual tokens [P, H] before each row's text (no part of it can run
    apart from the text) -> (inputs_embeds [B, P+L, H], attention_mask [B, P+L], token_type_ids [B, P+L] or None)."""
    if inputs_embeds is None:
        inputs_embeds = embed(input_ids)  # [B, L, H]
    batch, length = inputs_embeds.shape[:2]
    virtual = table.shape[0]
    if attention_mask is None:
        attention_mask = torch.ones(batch, length, dtype=torch.long, device=inputs_embeds.device)
    inputs_embeds = torch.cat([table.to(inputs_embeds.dtype).expand(batch, -1, -1), inputs_embeds], dim=1)
    attention_mask = torch.cat([attention_mask.new_ones(batch, virtual), attention_mask], dim=1)
    if token_type_ids is not None:
        token_type_ids = torch.cat([token_type_ids.new_zeros(batch, virtual), token_type_ids], dim=1)
    return inputs_embeds, attention_mask, token_type_ids


def left_pad(states: torch.Tensor, length: int) -> torch.Tensor:
    """[1, kv_heads, p, head_dim] -> [1, kv_heads, length, head_dim] with zeros in front."""
    return F.pad(states, (0, 0, length - states.shape[-2], 0))


def run_with_prefix(model, prefix: Prefix | None, input_ids, inputs_embeds, attention_mask, position_ids, **kwargs):
    """Forward the inputs after the prefix's positions (or none). Returns the model output.

    The cache is stateless (`FrozenPrefixLayer`), so gradients reach the prefix and recomputation under
    gradient checkpointing gives the same result.
    """
    batch, length = (input_ids if input_ids is not None else inputs_embeds).shape[:2]
    device = (input_ids if input_ids is not None else inputs_embeds).device
    if attention_mask is None:
        attention_mask = torch.ones(batch, length, dtype=torch.long, device=device)
    if prefix is None or prefix.length == 0:
        if position_ids is None and accepts_position_ids(model):
            kwargs["position_ids"] = positions_from_mask(attention_mask)
        elif position_ids is not None:
            kwargs["position_ids"] = position_ids
        return model(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask, use_cache=False, **kwargs)
    full_mask = torch.cat([prefix.mask.to(attention_mask.dtype), attention_mask], dim=1)  # [B, P+L]
    if accepts_position_ids(model):
        kwargs["position_ids"] = (
            positions_from_mask(full_mask)[:, prefix.length :]
            if position_ids is None
            else position_ids + prefix.mask.sum(-1, keepdim=True)
        )
    kwargs[cache_argument(model)] = frozen_prefix_cache(prefix.layers)
    return model(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=full_mask, use_cache=False, **kwargs)


class Injection:
    """How a prompt table enters the model: its width, and the prompt states it gives."""

    def __init__(self, shape: ModelShape, config=None):
        self.shape = shape
        self.config = config  # the adapter's config, for injections whose layout depends on it

    def table_width(self) -> int:
        raise NotImplementedError

    def prompt_states(self, model, table: torch.Tensor, with_logits: bool | str = False) -> PromptStates:
        """with_logits: False, True (the last virtual position's) or "all" (every virtual position's)."""
        raise NotImplementedError

    def file_table(self, table: torch.Tensor) -> torch.Tensor:
        """The table as the adapter file holds it (PEFT's layout); the same table unless a layout differs."""
        return table

    def table_from_file(self, table: torch.Tensor, num_virtual_tokens: int) -> torch.Tensor:
        """The inverse of `file_table`: the [P, D] table this injection consumes."""
        return table


class EmbeddingPrefix(Injection):
    """Virtual token embeddings [P, hidden] that come before the input.

    The virtual tokens attend only to each other, so their hidden states do not depend on the input:
    they run once (batch 1, positions 0..P-1), and every row attends to their keys/values. This equals
    prepending the embeddings to every row (tested against that reference) and saves (B-1)*P
    positions of compute, forward and backward; gradients flow back through the shared keys/values.
    """

    def table_width(self) -> int:
        return self.shape.hidden_size

    def prompt_states(self, model, table, with_logits=False) -> PromptStates:
        num_virtual = table.shape[0]
        embeds = table.to(model.get_input_embeddings().weight.dtype).unsqueeze(0)  # [1, P, H]
        mask = torch.ones(1, num_virtual, dtype=torch.long, device=embeds.device)
        cache = recording_cache(self.shape.num_layers)
        kwargs = {"position_ids": positions_from_mask(mask)} if accepts_position_ids(model) else {}
        kwargs[cache_argument(model)] = cache
        keep = num_virtual if with_logits == "all" else 1
        output = model(inputs_embeds=embeds, attention_mask=mask, use_cache=True, logits_to_keep=keep, **kwargs)
        return PromptStates(layer_states(cache), output.logits if with_logits else None)  # logits [1, keep, V]


class KVPrefix(Injection):
    """Per-layer key/value prefixes, table [P, num_layers * 2 * kv_heads * head_dim] in PEFT's layout."""

    def table_width(self) -> int:
        return self.shape.num_layers * 2 * self.shape.kv_width

    def prompt_states(self, model, table, with_logits=False) -> PromptStates:
        """PEFT's layout: for layer i, slot 2i holds the keys and slot 2i+1 the values."""
        shape, num_virtual = self.shape, table.shape[0]
        dtype = model.get_input_embeddings().weight.dtype
        kv = table.to(dtype).view(num_virtual, shape.num_layers * 2, shape.num_kv_heads, shape.head_dim)
        kv = kv.permute(1, 2, 0, 3).unsqueeze(1)  # [L*2, 1, kv_heads, P, head_dim], no copy
        return PromptStates([(kv[2 * i], kv[2 * i + 1]) for i in range(shape.num_layers)])
