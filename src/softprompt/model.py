"""The model wrapper: a frozen causal LM plus one or more prompts (adapters). It knows injections, not methods.

Several adapters can be loaded at once (PEFT's names: `load_adapter`, `set_adapter`, `delete_adapter`,
`active_adapter`, `peft_config[name]`); `forward`, `generate` and `score_continuations` take
`adapter_names`, one per row, so one batch mixes adapters of any method and prompt length, and rows
with `None` (or PEFT's "__base__") run the bare base model. At inference each adapter's prompt states
(per-layer keys/values of its virtual positions) are computed once and kept until its weights change.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
import warnings
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from transformers.modeling_outputs import CausalLMOutputWithPast

from . import adapters
from .compat import (
    PrefixCall,
    accepts_position_ids,
    allow_checkpointing_with_cache,
    base_model_adapter_methods,
    cache_argument,
    current_state,
    enable_checkpointing,
    filled_cache,
    frozen_prefix_cache,
    fsdp_sharded,
    layer_states,
    prefix_attention_context,
)
from .config import PromptLearningConfig
from .inject import (
    KVPrefix,
    Prefix,
    PromptStates,
    positions_from_mask,
    prepend_prompt,
    probe_shape,
    run_with_prefix,
)
from .methods import PromptTable, source_class_for

BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in adapter_names


class UnknownAdapterError(ValueError):
    """An adapter name that is not loaded; the message lists the loaded ones."""


class PeftModel(nn.Module):
    """A frozen base model and one or more prompts. Use `get_peft_model` or `PeftModel.from_pretrained`."""

    handles_encoders = False  # a wrapper that can prompt bidirectional encoders says so
    # Our losses are per-batch means: transformers' Trainer then divides them by the gradient accumulation steps
    # (else it passes num_items_in_batch, expecting a sum over the accumulated batch, and the gradient grows).
    accepts_loss_kwargs = False
    encoder_decoder = False  # the wrapper for encoder-decoder models (T5, BART) says so
    injection_map: dict = {}  # how this wrapper places a method's injection: {KVPrefix: ItsOwnKind, ...}

    def __init__(
        self,
        model: nn.Module,
        peft_config: PromptLearningConfig,
        adapter_name: str = "default",
        prompt_source: nn.Module | None = None,
    ):
        super().__init__()
        self.base_model = model
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        allow_checkpointing_with_cache(model)
        self.shape = probe_shape(model)
        if self.shape.bidirectional and not self.handles_encoders:
            raise ValueError(
                f"{type(model).__name__} is a bidirectional encoder: softprompt prompts encoders for sequence "
                "classification (AutoModelForSequenceClassification with task_type='SEQ_CLS')."
            )
        if self.shape.encoder_decoder != self.encoder_decoder:
            raise ValueError(
                f"{type(model).__name__} is an encoder-decoder model: use task_type='SEQ_2_SEQ_LM' (PeftModelForSeq2SeqLM)."
                if self.shape.encoder_decoder
                else f"{type(self).__name__} wraps encoder-decoder models (T5, BART); {type(model).__name__} is not one."
            )
        self.prompt_encoder = nn.ModuleDict()  # adapter name -> prompt source (PEFT's attribute name)
        self.peft_config: dict[str, PromptLearningConfig] = {}
        self.injections = {}  # adapter name -> Injection
        self.active_adapter: str | None = adapter_name
        self.adapters_disabled = False
        self.states_cache: OrderedDict[tuple, tuple[tuple, PromptStates]] = OrderedDict()  # (name, task) -> (versions, states)
        self.states_cache_limit: int | None = None  # bytes; least recently used states go first (None: no limit)
        self.add_adapter(adapter_name, peft_config, prompt_source)

    # ---- adapters (PEFT's API) -----------------------------------------------------------
    def add_adapter(self, adapter_name: str, peft_config: PromptLearningConfig, prompt_source: nn.Module | None = None) -> None:
        """Add a prompt: new and trainable from `peft_config`, or `prompt_source` (e.g. a loaded table)."""
        if not isinstance(peft_config, PromptLearningConfig):
            raise TypeError(
                f"peft_config must be a softprompt config (PromptTuningConfig, PromptEncoderConfig or "
                f"PrefixTuningConfig), got {type(peft_config).__name__}."
            )
        self.check_new_name(adapter_name)
        if fsdp_sharded(*self.modules()) and (prompt_source is None or any(p.requires_grad for p in prompt_source.parameters())):
            raise ValueError(
                "Add trainable adapters before fully_shard: FSDP would neither shard a prompt added later nor reduce its "
                "gradients. Wrap first (get_peft_model), then fully_shard the layers and the wrapper (the root)."
            )
        if peft_config.base_model_name_or_path is None:
            peft_config.base_model_name_or_path = getattr(self.base_model, "name_or_path", None) or None
        peft_config.fill_model_fields(self.shape)
        source_class = source_class_for(peft_config)
        if prompt_source is None:
            prompt_source = source_class(peft_config, self.shape, self.base_model)
        prompt_source.train(self.training)  # as the wrapper: a new adapter on a model in eval mode is in eval mode
        self.prompt_encoder[adapter_name] = prompt_source.to(self.base_model.get_input_embeddings().weight.device)
        self.peft_config[adapter_name] = peft_config
        self.injections[adapter_name] = self.injection_for(source_class, peft_config)

    def load_adapter(self, model_id: str | os.PathLike, adapter_name: str, is_trainable: bool = False, **hub_kwargs) -> None:
        """Load a saved adapter (ours or PEFT's; folder or hub repo) beside the ones already loaded.

        It must fit this base model (layers, widths, KV heads), else it is refused with the reason; the
        adapters already loaded are not touched. `set_adapter(adapter_name)` makes it the active one.
        """
        self.check_new_name(adapter_name)
        config, source, tensors = read_adapter(self.base_model, self.shape, model_id, is_trainable, self.injection_map, **hub_kwargs)
        self.add_adapter(adapter_name, config, source)
        self.take_adapter_tensors(adapter_name, tensors, is_trainable)

    def injection_for(self, source_class, config: PromptLearningConfig):
        return self.injection_map.get(source_class.injection, source_class.injection)(self.shape, config)

    def take_adapter_tensors(self, adapter_name: str, tensors: dict, is_trainable: bool) -> None:
        """A wrapper with parts of its own in the adapter file (a classification head) takes them here."""

    def adapter_modules(self, adapter_name: str) -> list[nn.Module]:
        """The modules whose parameters an adapter's files hold."""
        return [self.prompt_encoder[adapter_name]]

    def extra_adapter_tensors(self, adapter_name: str) -> dict[str, torch.Tensor]:
        """What such a wrapper adds to the adapter file, in PEFT's names."""
        return {}

    def set_adapter(self, adapter_name: str) -> None:
        """Make `adapter_name` the adapter used by calls that pass no `adapter_names`."""
        self.check_known(adapter_name)
        self.active_adapter = adapter_name

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove an adapter; if it was active, the first remaining one becomes active (as in PEFT)."""
        self.check_known(adapter_name)
        del self.prompt_encoder[adapter_name]
        del self.peft_config[adapter_name]
        del self.injections[adapter_name]
        for key in [key for key in self.states_cache if key[0] == adapter_name]:
            del self.states_cache[key]
        if self.active_adapter == adapter_name:
            self.active_adapter = next(iter(self.peft_config), None)
            if self.active_adapter is not None:
                warnings.warn(f"Adapter {adapter_name} was active and is deleted; {self.active_adapter} is now active.")

    @contextlib.contextmanager
    def disable_adapter(self):
        """Inside this context every call runs the bare base model."""
        self.adapters_disabled = True
        try:
            yield
        finally:
            self.adapters_disabled = False

    @property
    def active_adapters(self) -> list[str]:
        return [] if self.active_adapter is None else [self.active_adapter]

    def check_new_name(self, adapter_name) -> None:
        if not isinstance(adapter_name, str) or not adapter_name or "." in adapter_name or adapter_name == BASE_ADAPTER:
            raise ValueError(
                f"Invalid adapter name {adapter_name!r}: use a non-empty string without '.', other than {BASE_ADAPTER!r}."
            )
        if adapter_name in self.peft_config:
            raise ValueError(f"An adapter named {adapter_name!r} is already loaded: delete_adapter({adapter_name!r}) first, or pick another name.")

    def check_known(self, adapter_name) -> None:
        if adapter_name not in self.peft_config:
            raise UnknownAdapterError(f"Unknown adapter {adapter_name!r}. Loaded adapters: {sorted(self.peft_config)}.")

    # ---- the active adapter (what a single-adapter user sees) ------------------------------
    def active_name(self) -> str:
        if self.active_adapter is None:
            raise ValueError("No adapter is loaded: add one with load_adapter(path, name) or add_adapter(name, config).")
        return self.active_adapter

    @property
    def prompt_source(self) -> nn.Module:
        return self.prompt_encoder[self.active_name()]

    @property
    def config_(self) -> PromptLearningConfig:
        return self.peft_config[self.active_name()]

    @property
    def active_peft_config(self) -> PromptLearningConfig:
        return self.config_

    @property
    def injection(self):
        return self.injections[self.active_name()]

    def get_base_model(self) -> nn.Module:
        return self.base_model

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in {"base_model", "prompt_encoder"}:
                raise
            if name in BASE_ADAPTER_METHODS:
                raise AttributeError(
                    f"{name} is transformers' own PEFT integration on the base model; it would bypass softprompt's "
                    "adapters. Use softprompt's load_adapter, set_adapter, delete_adapter and adapter_names instead."
                ) from None
            return getattr(self.base_model, name)

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.parameters())
        return trainable, total

    def print_trainable_parameters(self) -> None:
        trainable, total = self.get_nb_trainable_parameters()
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}")

    def prompt_table(self, adapter_name: str | None = None, task: int = 0) -> torch.Tensor:
        """An adapter's prompt (for one of its tasks) as its table [P, D]: what the injection consumes."""
        name = adapter_name or self.active_name()
        source = self.prompt_encoder[name]
        tasks = getattr(source, "num_tasks", 1)
        if not 0 <= task < tasks:
            raise ValueError(f"Task id {task} is out of range: adapter {name!r} has {tasks} task(s), ids 0..{tasks - 1}.")
        return source() if task == 0 else source(task)

    # ---- prompt states and the batch prefix --------------------------------------------------
    def prompt_states(self, adapter_name: str, with_logits: bool | str = False, task: int = 0) -> PromptStates:
        """An adapter's per-layer keys/values [1, kv_heads, P, head_dim] (for one of its tasks), cached while
        its weights stay the same. Cached only when no gradient can flow to it (inference); training
        recomputes it every call."""
        source = self.prompt_encoder[adapter_name]
        base = self.base_model
        needs_grad = torch.is_grad_enabled() and any(p.requires_grad for p in source.parameters())
        if with_logits or needs_grad or source.training or fsdp_sharded(self, self.prompt_encoder, source):
            return self.injections[adapter_name].prompt_states(base, self.prompt_table(adapter_name, task), with_logits)
        weights = base.get_input_embeddings().weight
        version = (weights.dtype, weights.device, *((p.data_ptr(), p._version) for p in source.parameters()))
        key = (adapter_name, task)
        cached = self.states_cache.get(key)
        if cached is None or cached[0] != version:
            with torch.no_grad():
                cached = (version, self.injections[adapter_name].prompt_states(base, self.prompt_table(adapter_name, task)))
            self.states_cache[key] = cached
        self.states_cache.move_to_end(key)
        if self.states_cache_limit is not None:
            while len(self.states_cache) > 1 and self.prompt_cache_bytes() > self.states_cache_limit:
                self.states_cache.popitem(last=False)  # the least recently used
        return cached[1]

    def prompt_cache_bytes(self) -> int:
        """Memory held by cached prompt states, all adapters."""
        return sum(states.nbytes() for _, states in self.states_cache.values())

    def row_adapters(self, adapter_names, batch: int) -> list[str | None]:
        if len(adapter_names) != batch:
            raise ValueError(f"adapter_names has {len(adapter_names)} entries but the batch has {batch} rows: give one per row.")
        rows = [None if name in (None, BASE_ADAPTER) else name for name in adapter_names]
        for name in set(rows) - {None}:
            self.check_known(name)
        return rows

    def row_tasks(self, task_ids, rows: list[str | None]) -> list[int]:
        """One task id per row (default 0); an adapter with several tasks needs them given."""
        if task_ids is None:
            for name in set(rows) - {None}:
                if getattr(self.prompt_encoder[name], "num_tasks", 1) > 1:
                    raise ValueError(f"Adapter {name!r} has several tasks: pass task_ids, one task id per row.")
            return [0] * len(rows)
        tasks = [int(t) for t in (task_ids.tolist() if isinstance(task_ids, torch.Tensor) else task_ids)]
        if len(tasks) != len(rows):
            raise ValueError(f"task_ids has {len(tasks)} entries but the batch has {len(rows)} rows: give one per row.")
        return tasks

    def batch_prefix(self, batch: int, adapter_names=None, with_logits: bool | str = False, task_ids=None):
        """-> (Prefix for `batch` rows or None for the bare model, virtual positions' logits [1, n, V] or None)."""
        if self.adapters_disabled:
            return None, None
        if adapter_names is None and self.active_adapter is None:
            return None, None
        rows = [self.active_adapter] * batch if adapter_names is None else self.row_adapters(adapter_names, batch)
        tasks = self.row_tasks(task_ids, rows)
        if adapter_names is None and len(set(tasks)) == 1:  # every row the same prompt
            states = self.prompt_states(self.active_adapter, with_logits, tasks[0])
            return Prefix.shared(states, batch), states.logits
        if not any(rows):
            return None, None
        keys = list(zip(rows, tasks))
        states = {(name, task): self.prompt_states(name, task=task) for name, task in set(keys) if name is not None}
        template = next(iter(states.values())).layers
        return Prefix.per_row([states.get(key) for key in keys], template), None

    def run_encoder(self, run, name: str, task_ids, input_ids, inputs_embeds, attention_mask, **kwargs):
        """`run` (the base model or its backbone) on a bidirectional encoder's batch with adapter `name`'s prompt,
        which it sees together with the text: per-layer prefixes through the attention hook (outputs [B, L, ...]),
        or virtual tokens before the text (outputs [B, P+L, ...]). One task per batch."""
        batch = (input_ids if input_ids is not None else inputs_embeds).shape[0]
        tasks = self.row_tasks(task_ids, [name] * batch)
        if len(set(tasks)) > 1:
            raise ValueError("One batch of an encoder takes one task: group the rows by task_ids.")
        if isinstance(self.injections[name], KVPrefix):
            prefix = Prefix.shared(self.prompt_states(name, task=tasks[0]), batch)
            with prefix_attention_context(PrefixCall(prefix.layers, prefix.mask)):
                return run(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)
        inputs_embeds, attention_mask, token_type_ids = prepend_prompt(
            self.prompt_table(name, tasks[0]), self.base_model.get_input_embeddings(), input_ids, inputs_embeds,
            attention_mask, kwargs.pop("token_type_ids", None),
        )
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        return run(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)

    # ---- forward and generate --------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        logits_to_keep: int = 0,
        adapter_names: list[str | None] | None = None,
        task_ids=None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Logits [B, L, V] aligned with `input_ids` (no virtual positions); loss over `labels` != -100.

        `logits_to_keep=K` computes the LM head for the last K positions only (logits [B, K, V]): with
        left padding and labels at the end of each row, K = longest label + 1 is all a loss needs.
        `adapter_names`: one adapter name per row (None or "__base__": the bare model); default: the active
        adapter for every row. With one adapter, as in PEFT, the last virtual position predicts a label on
        the first input token; in a mixed batch the first input token is not predicted (as for a bare model).
        `task_ids`: one task id per row, for adapters with several tasks (multitask prompt tuning).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        for unsupported in ("past_key_values", "cache"):
            if kwargs.pop(unsupported, None) is not None:
                raise ValueError(f"{unsupported} is not supported in forward(); use generate() for cached decoding.")
        kwargs.pop("use_cache", None)
        if logits_to_keep:
            kwargs["logits_to_keep"] = logits_to_keep
        batch, length = (input_ids if input_ids is not None else inputs_embeds).shape[:2]
        input_type_mask = kwargs.pop("input_type_mask", None)
        # a method with a loss of its own (CPT) gets it when its adapter serves the whole batch
        source = None if adapter_names is not None or self.adapters_disabled or self.active_adapter is None else self.prompt_source
        own_loss = getattr(source, "loss", None) if labels is not None else None
        if input_type_mask is not None and own_loss is None:
            raise ValueError("input_type_mask is for CPT adapters (with labels); this adapter does not use it.")
        wanted = getattr(source, "prompt_logits", True) if own_loss else labels is not None
        prefix, prompt_logits = self.batch_prefix(batch, adapter_names, wanted, task_ids)
        last_virtual_logits = None if prompt_logits is None else prompt_logits[:, -1:]  # [1, 1, V]
        logits = run_with_prefix(
            self.base_model, prefix, input_ids, inputs_embeds, attention_mask, position_ids, **kwargs
        ).logits  # [B, T, V]: the last T input positions
        if own_loss is not None:
            return CausalLMOutputWithPast(loss=own_loss(prompt_logits, logits, labels, input_type_mask), logits=logits)
        num_virtual = 0
        if last_virtual_logits is not None and logits.shape[1] == length:  # it predicts the first input token
            logits = torch.cat([last_virtual_logits.expand(batch, -1, -1), logits], dim=1)  # [B, 1+L, V]
            num_virtual = 1
        if logits_to_keep and labels is not None and (labels[:, : max(length - logits.shape[1] + 1, 0)] != -100).any():
            raise ValueError(
                f"Some labels lie before the last logits_to_keep={logits_to_keep} positions, so no logits predict "
                "them: raise logits_to_keep to the longest label + 1, or leave it at 0 (all positions)."
            )
        loss = None if labels is None else causal_lm_loss(logits, labels, num_virtual)
        return CausalLMOutputWithPast(loss=loss, logits=logits[:, num_virtual:])

    @torch.no_grad()
    def score_continuations(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, continuations, adapter_names=None, task_ids=None
    ) -> torch.Tensor:
        """Summed log-probability of each continuation after each left-padded input: [B, K].

        `continuations`: token-id lists shared by every row, or one such list per row (rows may then have
        different counts K_i; scores are [B, max K_i], -inf past a row's own). The prompts and the inputs
        run once; each continuation then runs as a few tokens attending to their cache.
        """
        base, batch = self.base_model, input_ids.shape[0]
        per_row = continuations if isinstance(continuations[0][0], (list, tuple)) else [continuations] * batch
        if len(per_row) != batch:
            raise ValueError(f"continuations has {len(per_row)} per-row lists but the batch has {batch} rows.")
        prefix, _ = self.batch_prefix(batch, adapter_names, task_ids=task_ids)
        num_prefix = 0 if prefix is None else prefix.length
        full_mask = attention_mask if prefix is None else torch.cat([prefix.mask.to(attention_mask.dtype), attention_mask], 1)
        cache = filled_cache(base, [] if prefix is None else prefix.layers)  # P prompt positions, then the inputs
        kwargs = {cache_argument(base): cache}
        if accepts_position_ids(base):
            kwargs["position_ids"] = positions_from_mask(full_mask)[:, num_prefix:]
        first = base(input_ids=input_ids, attention_mask=full_mask, use_cache=True, logits_to_keep=1, **kwargs).logits
        first = first[:, -1].float().log_softmax(-1)  # [B, V]: predicts each continuation's first token
        layers = layer_states(cache)  # now P+L positions
        next_position = full_mask.sum(-1, keepdim=True) if accepts_position_ids(base) else None  # [B, 1]
        scores = torch.full((batch, max(len(c) for c in per_row)), float("-inf"), device=first.device)
        for k in range(scores.shape[1]):
            tokens = [list(c[k]) if k < len(c) else None for c in per_row]
            present = torch.tensor([t is not None for t in tokens], device=first.device)
            width = max(len(t) for t in tokens if t is not None)
            ids = torch.tensor([(t or [0]) + [(t or [0])[-1]] * (width - len(t or [0])) for t in tokens], device=input_ids.device)
            score = first.gather(1, ids[:, :1]).squeeze(1)  # [B]
            if width > 1:  # the rest of each continuation, right-padded: padding comes after, so it changes nothing
                kwargs = {cache_argument(base): frozen_prefix_cache(layers)}
                if next_position is not None:
                    kwargs["position_ids"] = next_position + torch.arange(width - 1, device=ids.device)
                mask = torch.cat([full_mask, full_mask.new_ones(batch, width - 1)], dim=1)
                logits = base(input_ids=ids[:, :-1], attention_mask=mask, use_cache=False, **kwargs).logits  # [B, n-1, V]
                rest = logits.float().log_softmax(-1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)  # [B, n-1]
                real = torch.tensor([len(t or [0]) - 1 for t in tokens], device=ids.device)  # tokens after the first
                score = score + (rest * (torch.arange(width - 1, device=ids.device) < real[:, None])).sum(-1)
            scores[:, k] = torch.where(present, score, scores[:, k])
        return scores

    @torch.no_grad()
    def generate(
        self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None, adapter_names=None, task_ids=None, **kwargs
    ):
        """`transformers` generation (greedy, sampling, beams...) after the prompt; returns input + new tokens.

        `adapter_names`, `task_ids`: one per row, as in `forward`.
        """
        if input_ids is None:
            raise ValueError("generate() needs input_ids.")
        base = self.base_model
        batch = input_ids.shape[0]
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        settings = kwargs.get("generation_config") or base.generation_config
        expand = max(kwargs.get("num_beams", settings.num_beams) or 1, kwargs.get("num_return_sequences", settings.num_return_sequences) or 1)
        if adapter_names is not None:
            adapter_names = [name for name in self.row_adapters(adapter_names, batch) for _ in range(expand)]
        if task_ids is not None:
            task_ids = [task for task in self.row_tasks(task_ids, [None] * batch) for _ in range(expand)]
        prefix, _ = self.batch_prefix(batch * expand, adapter_names, task_ids=task_ids)  # rows as generate expands them
        if prefix is None:
            return base.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        num_virtual = prefix.length
        # The cache stands for P positions that have no ids: give generate placeholders it will not embed.
        placeholder = settings.pad_token_id if settings.pad_token_id is not None else 0
        if isinstance(placeholder, (list, tuple)):
            placeholder = placeholder[0]
        full_ids = torch.cat([input_ids.new_full((batch, num_virtual), placeholder), input_ids], dim=1)
        full_mask = torch.cat([prefix.mask[::expand].to(attention_mask.dtype), attention_mask], dim=1)  # [B, P+L]
        if accepts_position_ids(base):
            kwargs["position_ids"] = positions_from_mask(full_mask)  # grows by one per step inside generate
        for length_key in ("max_length", "min_length"):
            if length_key in kwargs and kwargs[length_key] is not None:
                kwargs[length_key] += num_virtual
        if kwargs.get("max_length") is None and kwargs.get("max_new_tokens") is None and settings.max_new_tokens is None:
            kwargs["max_length"] = settings.max_length + num_virtual
        kwargs[cache_argument(base)] = filled_cache(base, prefix.layers)  # [B*expand, ...]
        output = base.generate(input_ids=full_ids, attention_mask=full_mask, **kwargs)
        if isinstance(output, torch.Tensor):
            return output[:, num_virtual:]
        output.sequences = output.sequences[:, num_virtual:]
        return output

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Checkpoint the base model's layers; the prompt's gradients stay the same (tested).

        Always non-reentrant: reentrant checkpoints back-propagate each layer separately and cannot
        reach a prompt that all layers share (a prefix projection, an encoder).
        """
        kwargs = dict(gradient_checkpointing_kwargs or {})
        if kwargs.pop("use_reentrant", False):
            warnings.warn("use_reentrant=True cannot train a shared prompt; using use_reentrant=False (same memory saving).")
        kwargs["use_reentrant"] = False
        enable_checkpointing(self.base_model, kwargs)

    # ---- saving and loading ----------------------------------------------------------------
    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        include_prompt_source: bool = False,
        is_main_process: bool = True,
        selected_adapters: list[str] | None = None,
        **_,
    ) -> None:
        """Write adapter folders atomically, in PEFT's layout: "default" in `save_directory`, any other
        adapter in `save_directory/<name>`. `include_prompt_source` adds the full encoder for resuming."""
        if not is_main_process:
            return
        names = list(self.peft_config) if selected_adapters is None else list(selected_adapters)
        for name in names:
            self.check_known(name)
        for name in sorted(names, key=lambda n: n != "default"):  # the root folder first, sub-folders into it
            folder = Path(save_directory) if name == "default" else Path(save_directory) / name
            adapters.write_folder_atomically(folder, lambda staging: self.write_adapter_files(staging, include_prompt_source, name))

    def write_adapter_files(self, folder, include_prompt_source: bool = False, adapter_name: str | None = None) -> None:
        """An adapter's files (default: the active one), written into an existing folder (callers make that atomic)."""
        name = adapter_name or self.active_name()
        source = self.prompt_encoder[name]
        with torch.no_grad():  # as at inference: an LSTM's no-grad kernel differs in the last bits
            if hasattr(source, "adapter_tensors"):  # a source that does not collapse to one table
                tensors = {key: t.float() for key, t in source.adapter_tensors().items()}
            else:
                tensors = {adapters.TABLE_KEY: self.injections[name].file_table(self.prompt_table(name).float())}
        tensors.update(self.extra_adapter_tensors(name))
        adapters.save_tensors(tensors, Path(folder) / adapters.WEIGHTS_NAME)
        if include_prompt_source:
            adapters.save_tensors(current_state(self.prompt_encoder[name]), Path(folder) / adapters.SOURCE_NAME)
        saved = dataclasses.replace(self.peft_config[name], inference_mode=True)  # the file holds the collapsed table
        saved.save_pretrained(folder)

    @classmethod
    def from_pretrained(
        cls, model: nn.Module, model_id: str | os.PathLike, adapter_name: str = "default", is_trainable: bool = False, **hub_kwargs
    ) -> PeftModel:
        """Attach a saved adapter (ours or PEFT's, local folder or hub repo) to `model`; the wrapper class
        follows the adapter's task_type unless a specific one is asked for."""
        task_type = PromptLearningConfig.from_pretrained(model_id, **hub_kwargs).task_type
        target = wrapper_class(task_type) if cls in (PeftModel, PeftModelForCausalLM) else cls
        config, source, tensors = read_adapter(model, probe_shape(model), model_id, is_trainable, target.injection_map, **hub_kwargs)
        wrapped = target(model, config, adapter_name, prompt_source=source)
        wrapped.take_adapter_tensors(adapter_name, tensors, is_trainable)
        return wrapped

    def push_to_hub(self, repo_id: str, private: bool | None = None, token: str | None = None, commit_message: str = "Upload prompt adapter") -> str:
        """Upload the active adapter as one commit (all files or none). Returns the commit URL."""
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(os.path.join(folder, "adapter"), selected_adapters=[self.active_name()])
            return adapters.upload_folder(os.path.join(folder, "adapter"), repo_id, private, token, commit_message)


BASE_ADAPTER_METHODS = base_model_adapter_methods() - set(dir(PeftModel))


def read_adapter(
    model: nn.Module, shape, model_id, is_trainable: bool, injection_map: dict | None = None, **hub_kwargs
) -> tuple[PromptLearningConfig, nn.Module, dict]:
    """A saved adapter's config, prompt source and file tensors, checked against the base model's shape.

    Inference gets the collapsed table; training (`is_trainable`) gets the full source when the folder
    has it (prompt_source.safetensors), so encoders resume exactly.
    """
    config = PromptLearningConfig.from_pretrained(model_id, **hub_kwargs)
    config.inference_mode = not is_trainable
    tensors = adapters.read_adapter_tensors(model_id, **hub_kwargs)
    source_class = source_class_for(config)
    injection = (injection_map or {}).get(source_class.injection, source_class.injection)(shape, config)
    table = injection.table_from_file(tensors[adapters.TABLE_KEY].float(), config.num_virtual_tokens)
    check_config_fits(config, shape, model_id)
    config.fill_model_fields(shape)
    check_table_fits(table, config, shape, injection.table_width())
    if hasattr(source_class, "from_adapter_tensors"):  # the adapter file holds the whole source
        try:
            source = source_class.from_adapter_tensors(config, shape, {k: t.float() for k, t in tensors.items()})
        except (KeyError, RuntimeError) as error:
            raise adapters.AdapterError(f"The adapter {model_id} does not fit its adapter_config.json: {error}") from error
    else:
        source = collapsed_or_full_source(source_class, config, shape, table, model_id, is_trainable, **hub_kwargs)
    if not is_trainable:  # for training, each source keeps its own choice (CPT's example embeddings stay frozen)
        source.requires_grad_(False)
    return config, source, tensors


def collapsed_or_full_source(source_class, config, shape, table, model_id, is_trainable: bool, **hub_kwargs) -> nn.Module:
    """The collapsed table for inference; for training, the full source (encoder included) when the folder has
    prompt_source.safetensors, else the table with a warning if an encoder is lost."""
    full_source = source_class(config, shape, None)  # not initialised from the model
    source_state = adapters.read_prompt_source(model_id, **hub_kwargs) if is_trainable else None
    if source_state is not None:  # resume training with the full source, encoder included
        try:
            full_source.load_state_dict(source_state)
        except RuntimeError as error:
            raise adapters.AdapterError(
                f"{adapters.SOURCE_NAME} in {model_id} does not fit its adapter_config.json: {error}"
            ) from error
        return full_source
    if is_trainable and has_encoder(full_source):
        warnings.warn(
            f"{model_id} has no {adapters.SOURCE_NAME}: training continues from the collapsed prompt table, "
            "without the encoder it was trained with. Save with include_prompt_source=True to resume exactly."
        )
    return PromptTable(table, source_class.injection)


class PeftModelForCausalLM(PeftModel):
    """The causal-LM wrapper (PEFT's class name)."""


def has_encoder(source: nn.Module) -> bool:
    """True when a prompt source has parameters besides its table (an MLP, LSTM or projection)."""
    return set(source.state_dict()) != {"embedding.weight"}


def check_config_fits(config: PromptLearningConfig, shape, model_id) -> None:
    """The saved model-shape fields must be the ones this base model gives (layers, widths, KV heads)."""
    expected = dataclasses.replace(config)
    expected.fill_model_fields(shape)
    wrong = [
        f"{name}={getattr(config, name)} (this model: {getattr(expected, name)})"
        for name in ("num_layers", "token_dim", "num_attention_heads")
        if getattr(config, name) is not None and getattr(config, name) != getattr(expected, name)
    ]
    if wrong:
        raise adapters.AdapterError(
            f"The adapter {model_id} does not fit this base model: {', '.join(wrong)}; this base model needs other "
            f"shapes. The adapter was trained for {config.base_model_name_or_path!r}: load that base model."
        )


def check_table_fits(table: torch.Tensor, config: PromptLearningConfig, shape, width: int) -> None:
    expected = (config.num_virtual_tokens, width)
    if tuple(table.shape) != expected:
        raise adapters.AdapterError(
            f"The adapter's prompt_embeddings has shape {tuple(table.shape)}, but this base model needs {expected} "
            f"(num_virtual_tokens={config.num_virtual_tokens}; model: hidden={shape.hidden_size}, layers={shape.num_layers}, "
            f"kv_heads={shape.num_kv_heads}, head_dim={shape.head_dim}). The adapter was trained for "
            f"{config.base_model_name_or_path!r}: load that base model."
        )


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, num_virtual: int) -> torch.Tensor:
    """Mean next-token cross-entropy over labels != -100.

    logits [B, T, V] are the last T positions; row t predicts the token at row t+1. With virtual
    rows in front, the last of them predicts the first input token (as in PEFT).
    """
    start = max(num_virtual - 1, 0)
    predictions = logits[:, start:-1]  # [B, N, V]
    targets = labels[:, labels.shape[1] - predictions.shape[1] :]  # [B, N], end-aligned
    return F.cross_entropy(predictions.float().reshape(-1, predictions.shape[-1]), targets.reshape(-1), ignore_index=-100)


def wrapper_class(task_type) -> type[PeftModel]:
    """The wrapper for a task type: CAUSAL_LM (or none) -> PeftModelForCausalLM, SEQ_CLS -> ...ForSequenceClassification,
    SEQ_2_SEQ_LM -> ...ForSeq2SeqLM, TOKEN_CLS -> ...ForTokenClassification, FEATURE_EXTRACTION -> ...ForFeatureExtraction."""
    from .features import PeftModelForFeatureExtraction
    from .seq2seq import PeftModelForSeq2SeqLM
    from .seq_cls import PeftModelForSequenceClassification
    from .token_cls import PeftModelForTokenClassification

    wrappers = {
        "SEQ_CLS": PeftModelForSequenceClassification,
        "SEQ_2_SEQ_LM": PeftModelForSeq2SeqLM,
        "FEATURE_EXTRACTION": PeftModelForFeatureExtraction,
        "TOKEN_CLS": PeftModelForTokenClassification,
    }
    return wrappers.get(task_type, PeftModelForCausalLM)


def get_peft_model(model: nn.Module, peft_config: PromptLearningConfig, adapter_name: str = "default", **_) -> PeftModel:
    """Freeze `model` and attach a new prompt described by `peft_config` (its task_type picks the wrapper)."""
    return wrapper_class(peft_config.task_type)(model, peft_config, adapter_name)


class AutoPeftModelForCausalLM:
    """Load an adapter and its base model from the adapter folder (or hub repo) alone."""

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        is_trainable: bool = False,
        base_model=None,
        adapter_name: str = "default",
        **model_kwargs,
    ) -> PeftModel:
        from .models import load_base_model

        config = PromptLearningConfig.from_pretrained(pretrained_model_name_or_path)
        if base_model is None:
            if not config.base_model_name_or_path:
                raise adapters.AdapterError(
                    f"{pretrained_model_name_or_path} does not name its base model (base_model_name_or_path is empty). "
                    "Load the base model yourself and use PeftModel.from_pretrained(model, adapter_dir)."
                )
            base_model = load_base_model(config.base_model_name_or_path, **model_kwargs)
        return PeftModelForCausalLM.from_pretrained(
            base_model, pretrained_model_name_or_path, adapter_name=adapter_name, is_trainable=is_trainable
        )
