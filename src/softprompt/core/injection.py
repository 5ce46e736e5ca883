"""The two ways a prompt enters a frozen model, and the prefix both reduce to.

A prompt source returns a table `[P, D]`; its `InjectionKind` says what the table means, and an `Injection`
here makes it enter the model:
- `EmbeddingPrefix` (EMBEDDINGS): D = hidden size; rows are virtual token embeddings placed before the input.
- `KVPrefix` (KV_PREFIX): D = num_layers * 2 * kv_heads * head_dim; rows are per-layer key/value prefixes.
(A task type may place a kind its own way: seq2seq puts embeddings before the encoder's input.)
Either way, what the input sees is per-layer keys/values of P virtual positions that do not depend on
the input (`PromptStates`). A batch's `Prefix` stacks them, one adapter per row if need be, left-padded
to the longest prompt with a prefix mask; every real token gets the position it has when its row runs
alone (positions from the mask), so padding, of the prefix or of the input, changes nothing.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from ..compat import accepts_position_ids, cache_argument, frozen_prefix_cache, layer_states, recording_cache
from ..methods.base import InjectionKind, ModelShape

LayerStates = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (keys, values), each [B, kv_heads, P, head_dim]


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
    def shared(cls, states: PromptStates, batch: int) -> Prefix:
        """Every row uses the same prompt: a view, no copy."""
        layers = [(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in states.layers]
        return cls(layers, torch.ones(batch, states.length, dtype=torch.long, device=states.layers[0][0].device))

    @classmethod
    def per_row(cls, row_states: list[PromptStates | None], template: LayerStates) -> Prefix:
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


def prepend_prompt(
    table: torch.Tensor, embed: nn.Module, input_ids, inputs_embeds, attention_mask, token_type_ids=None
):
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


def add_offsets(embeds: torch.Tensor, offsets: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """embeds [B, T, H] + offsets [B, s, H]: a token gets the offset of its count among its row's real tokens.

    The mask [B, past + T] may also cover earlier (cached) tokens, whose count it gives; the embeddings are its last
    T positions. Padding gets no offset, nor do tokens past the s-th."""
    batch, length, width = embeds.shape
    if attention_mask is None:
        attention_mask = torch.ones(batch, length, dtype=torch.long, device=embeds.device)
    positions = positions_from_mask(attention_mask)[:, -length:]  # [B, T]
    index = positions.clamp(max=offsets.shape[1] - 1)[..., None].expand(-1, -1, width)
    picked = offsets.to(embeds.dtype).gather(1, index)  # [B, T, H]
    keep = (positions < offsets.shape[1]) & attention_mask[:, -length:].bool()  # [B, T]
    return embeds + picked * keep[..., None].to(embeds.dtype)


def stack_offsets(row_offsets: list[torch.Tensor | None]) -> torch.Tensor | None:
    """One offsets table [s_i, H] (or None) per row -> [B, max s_i, H], zeros past a row's own; None if none has any."""
    present = [offsets for offsets in row_offsets if offsets is not None]
    if not present:
        return None
    if all(offsets is present[0] for offsets in row_offsets):
        return present[0].expand(len(row_offsets), -1, -1)
    length = max(offsets.shape[0] for offsets in present)
    none = present[0].new_zeros(length, present[0].shape[1])
    return torch.stack([none if o is None else F.pad(o, (0, 0, 0, length - o.shape[0])) for o in row_offsets])


@contextlib.contextmanager
def offsets_on_input(model: nn.Module, offsets: torch.Tensor | None, prefix_length: int):
    """Inside, each call of `model` (a causal LM: a forward, each step of generate, a cached continuation) adds
    `offsets` [B, s, H] to its input's embeddings, counting each row's real tokens over its attention mask
    [B, prefix_length + past + T] after the first `prefix_length` (virtual) positions."""
    if offsets is None:
        yield
        return

    def add(module, args, kwargs):
        if len(args) > 1:
            raise TypeError("Pass the model's inputs by name (input_ids=..., attention_mask=...).")
        input_ids = args[0] if args else kwargs.get("input_ids")
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            embeds = module.get_input_embeddings()(input_ids)  # [B, T, H]
        mask = kwargs.get("attention_mask")
        if mask is None:  # generate drops a mask of all ones: every cached position is then real
            cache = kwargs.get(cache_argument(module))
            past = 0 if cache is None else cache.get_seq_length()
            mask = torch.ones(embeds.shape[0], past + embeds.shape[1], dtype=torch.long, device=embeds.device)
        embeds = add_offsets(embeds, offsets, mask[:, prefix_length:])  # the mask after the virtual positions
        kwargs.update(input_ids=None, inputs_embeds=embeds)
        return (), kwargs

    handle = model.register_forward_pre_hook(add, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


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
        return model(
            input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask, use_cache=False, **kwargs
        )
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

    kind: ClassVar[InjectionKind]

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

    kind = InjectionKind.EMBEDDINGS

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

    kind = InjectionKind.KV_PREFIX

    def table_width(self) -> int:
        return self.shape.num_layers * 2 * self.shape.kv_width

    def prompt_states(self, model, table, with_logits=False) -> PromptStates:
        """PEFT's layout: for layer i, slot 2i holds the keys and slot 2i+1 the values."""
        shape, num_virtual = self.shape, table.shape[0]
        dtype = model.get_input_embeddings().weight.dtype
        kv = table.to(dtype).view(num_virtual, shape.num_layers * 2, shape.num_kv_heads, shape.head_dim)
        kv = kv.permute(1, 2, 0, 3).unsqueeze(1)  # [L*2, 1, kv_heads, P, head_dim], no copy
        return PromptStates([(kv[2 * i], kv[2 * i + 1]) for i in range(shape.num_layers)])


INJECTIONS: dict[InjectionKind, type[Injection]] = {
    InjectionKind.EMBEDDINGS: EmbeddingPrefix,
    InjectionKind.KV_PREFIX: KVPrefix,
}
