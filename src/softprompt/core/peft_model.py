"""The task-agnostic wrapper: a frozen base model plus one or more prompts (adapters). It knows the two
injection kinds, never method names; each task type (softprompt.task_types) subclasses it with its forward.

Several adapters can be loaded at once (PEFT's names: `load_adapter`, `set_adapter`, `delete_adapter`,
`active_adapter`, `peft_config[name]`); task types take `adapter_names`, one per row, so one batch mixes
adapters of any method and prompt length, and rows with `None` (or PEFT's "__base__") run the bare base
model. At inference each adapter's prompt states (per-layer keys/values of its virtual positions) are
computed once and kept until its weights change.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections import OrderedDict

import torch
from torch import nn

from .. import registry
from ..compat import (
    PrefixCall,
    allow_checkpointing_with_cache,
    base_model_adapter_methods,
    enable_checkpointing,
    fsdp_sharded,
    prefix_attention_context,
)
from ..config import PromptLearningConfig
from ..errors import UnknownAdapterError
from ..methods.base import InjectionKind
from .adapter_files import AdapterFilesMixin, read_adapter
from .batch_prompts import BASE_ADAPTER, BatchPromptsMixin
from .injection import INJECTIONS, Injection, Prefix, PromptStates, prepend_prompt
from .shape import probe_shape


class PeftModel(BatchPromptsMixin, AdapterFilesMixin, nn.Module):
    """A frozen base model and one or more prompts. Use `get_peft_model` or `PeftModel.from_pretrained`."""

    handles_encoders = False  # a wrapper that can prompt bidirectional encoders says so
    # Our losses are per-batch means: transformers' Trainer then divides them by the gradient accumulation steps
    # (else it passes num_items_in_batch, expecting a sum over the accumulated batch, and the gradient grows).
    accepts_loss_kwargs = False
    encoder_decoder = False  # the wrapper for encoder-decoder models (T5, BART) says so
    generates = False  # the wrapper offers generate() (a task type whose models write text)
    injection_map: dict[InjectionKind, type[Injection]] = INJECTIONS  # how this wrapper places each injection kind

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
                f"{type(model).__name__} is an encoder-decoder model: use task_type='SEQ_2_SEQ_LM' "
                "(PeftModelForSeq2SeqLM)."
                if self.shape.encoder_decoder
                else f"{type(self).__name__} wraps encoder-decoder models (T5, BART); "
                f"{type(model).__name__} is not one."
            )
        self.prompt_encoder = nn.ModuleDict()  # adapter name -> prompt source (PEFT's attribute name)
        self.peft_config: dict[str, PromptLearningConfig] = {}
        self.injections = {}  # adapter name -> Injection
        self.active_adapter: str | None = adapter_name
        self.adapters_disabled = False
        self.states_cache: OrderedDict[tuple, tuple[tuple, PromptStates]] = (
            OrderedDict()
        )  # (name, task) -> (versions, states)
        self.states_cache_limit: int | None = None  # bytes; least recently used states go first (None: no limit)
        self.add_adapter(adapter_name, peft_config, prompt_source)

    # ---- adapters (PEFT's API) -----------------------------------------------------------
    def add_adapter(
        self, adapter_name: str, peft_config: PromptLearningConfig, prompt_source: nn.Module | None = None
    ) -> None:
        """Add a prompt: new and trainable from `peft_config`, or `prompt_source` (e.g. a loaded table)."""
        if not isinstance(peft_config, PromptLearningConfig):
            raise TypeError(
                f"peft_config must be a softprompt config (the config of one of {registry.describe_methods()}), "
                f"got {type(peft_config).__name__}."
            )
        self.check_new_name(adapter_name)
        if fsdp_sharded(*self.modules()) and (
            prompt_source is None or any(p.requires_grad for p in prompt_source.parameters())
        ):
            raise ValueError(
                "Add trainable adapters before fully_shard: FSDP would neither shard a prompt added later nor "
                "reduce its gradients. Wrap first (get_peft_model), then fully_shard the layers and the wrapper "
                "(the root)."
            )
        if peft_config.base_model_name_or_path is None:
            peft_config.base_model_name_or_path = getattr(self.base_model, "name_or_path", None) or None
        peft_config.fill_model_fields(self.shape)
        source_class = registry.method(peft_config.peft_type).source_class
        if source_class.injection not in self.injection_map:
            raise ValueError(
                f"{peft_config.peft_type} does not fit {type(self).__name__}: it has no place for "
                f"{source_class.injection}."
            )
        if prompt_source is None:
            prompt_source = source_class(peft_config, self.shape, self.base_model)
        prompt_source.train(self.training)  # as the wrapper: a new adapter on a model in eval mode is in eval mode
        self.prompt_encoder[adapter_name] = prompt_source.to(self.base_model.get_input_embeddings().weight.device)
        self.peft_config[adapter_name] = peft_config
        self.injections[adapter_name] = self.injection_for(source_class, peft_config)

    def load_adapter(
        self, model_id: str | os.PathLike, adapter_name: str, is_trainable: bool = False, **hub_kwargs
    ) -> None:
        """Load a saved adapter (ours or PEFT's; folder or hub repo) beside the ones already loaded.

        It must fit this base model (layers, widths, KV heads), else it is refused with the reason; the
        adapters already loaded are not touched. `set_adapter(adapter_name)` makes it the active one.
        """
        self.check_new_name(adapter_name)
        config, source, tensors = read_adapter(self.shape, model_id, is_trainable, self.injection_for, **hub_kwargs)
        self.add_adapter(adapter_name, config, source)
        self.take_adapter_tensors(adapter_name, tensors, is_trainable)

    def injection_for(self, source_class, config: PromptLearningConfig) -> Injection:
        return self.injection_map[source_class.injection](self.shape, config)

    @classmethod
    def base_model_options(cls, adapter_location) -> dict:
        """What loading the base model for a saved adapter of this task type needs (a classifier: its class count)."""
        return {}

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
                warnings.warn(
                    f"Adapter {adapter_name} was active and is deleted; {self.active_adapter} is now active.",
                    stacklevel=2,
                )

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
                f"Invalid adapter name {adapter_name!r}: "
                f"use a non-empty string without '.', other than {BASE_ADAPTER!r}."
            )
        if adapter_name in self.peft_config:
            raise ValueError(
                f"An adapter named {adapter_name!r} is already loaded: "
                f"delete_adapter({adapter_name!r}) first, or pick another name."
            )

    def check_known(self, adapter_name) -> None:
        if adapter_name not in self.peft_config:
            raise UnknownAdapterError(f"Unknown adapter {adapter_name!r}. Loaded adapters: {sorted(self.peft_config)}.")

    # ---- the active adapter (what a single-adapter user sees) ------------------------------
    def active_name(self) -> str:
        if self.active_adapter is None:
            raise ValueError(
                "No adapter is loaded: add one with load_adapter(path, name) or add_adapter(name, config)."
            )
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
            if name in PROMPTED_CALLS:  # the base model's would run without the prompt
                raise AttributeError(
                    f"{type(self).__name__} has no {name}(): its task type does not offer it (it does not "
                    "generate text), and the base model's would ignore the prompt. Call the model for its outputs: "
                    "model(**inputs)."
                ) from None
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

    def parameter_groups(self, learning_rate: float) -> list[dict]:
        """The optimizer's groups of trainable parameters: each prompt source's own (DePT's offsets take their own
        rate), then the rest (a classifier's head) at `learning_rate`."""
        groups, seen = [], set()
        for source in self.prompt_encoder.values():
            for group in source.parameter_groups(learning_rate):
                seen.update(id(p) for p in group["params"])
                params = [p for p in group["params"] if p.requires_grad]
                groups += [{**group, "params": params}] if params else []
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in seen]
        return groups + ([{"params": rest, "lr": learning_rate}] if rest else [])

    def print_trainable_parameters(self) -> None:
        trainable, total = self.get_nb_trainable_parameters()
        print(
            f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}"
        )

    def prompt_table(self, adapter_name: str | None = None, task: int = 0) -> torch.Tensor:
        """An adapter's prompt (for one of its tasks) as its table [P, D]: what the injection consumes."""
        name = adapter_name or self.active_name()
        source = self.prompt_encoder[name]
        if not 0 <= task < source.num_tasks:
            raise ValueError(
                f"Task id {task} is out of range: adapter {name!r} has {source.num_tasks} task(s), ids "
                f"0..{source.num_tasks - 1}."
            )
        return source(task)

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
                cached = (
                    version,
                    self.injections[adapter_name].prompt_states(base, self.prompt_table(adapter_name, task)),
                )
            self.states_cache[key] = cached
        self.states_cache.move_to_end(key)
        if self.states_cache_limit is not None:
            while len(self.states_cache) > 1 and self.prompt_cache_bytes() > self.states_cache_limit:
                self.states_cache.popitem(last=False)  # the least recently used
        return cached[1]

    def prompt_cache_bytes(self) -> int:
        """Memory held by cached prompt states, all adapters."""
        return sum(states.nbytes() for _, states in self.states_cache.values())

    def run_encoder(self, run, name: str, task_ids, input_ids, inputs_embeds, attention_mask, **kwargs):
        """`run` (the base model or its backbone) on a bidirectional encoder's batch with adapter `name`'s prompt,
        which it sees together with the text: per-layer prefixes through the attention hook (outputs [B, L, ...]),
        or virtual tokens before the text (outputs [B, P+L, ...]). One task per batch."""
        batch = (input_ids if input_ids is not None else inputs_embeds).shape[0]
        tasks = self.row_tasks(task_ids, [name] * batch)
        if len(set(tasks)) > 1:
            raise ValueError("One batch of an encoder takes one task: group the rows by task_ids.")
        inputs_embeds = self.offset_input(name, tasks[0], input_ids, inputs_embeds, attention_mask)
        input_ids = None if inputs_embeds is not None else input_ids
        if self.injections[name].kind is InjectionKind.KV_PREFIX:
            prefix = Prefix.shared(self.prompt_states(name, task=tasks[0]), batch)
            with prefix_attention_context(PrefixCall(prefix.layers, prefix.mask)):
                return run(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)
        inputs_embeds, attention_mask, token_type_ids = prepend_prompt(
            self.prompt_table(name, tasks[0]),
            self.base_model.get_input_embeddings(),
            input_ids,
            inputs_embeds,
            attention_mask,
            kwargs.pop("token_type_ids", None),
        )
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        return run(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Checkpoint the base model's layers; the prompt's gradients stay the same (tested).

        Always non-reentrant: reentrant checkpoints back-propagate each layer separately and cannot
        reach a prompt that all layers share (a prefix projection, an encoder).
        """
        kwargs = dict(gradient_checkpointing_kwargs or {})
        if kwargs.pop("use_reentrant", False):
            warnings.warn(
                "use_reentrant=True cannot train a shared prompt; using use_reentrant=False (same memory saving).",
                stacklevel=2,
            )
        kwargs["use_reentrant"] = False
        enable_checkpointing(self.base_model, kwargs)

    # ---- loading (saving: AdapterFilesMixin) -------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        model: nn.Module,
        model_id: str | os.PathLike,
        adapter_name: str = "default",
        is_trainable: bool = False,
        **hub_kwargs,
    ) -> PeftModel:
        """Attach a saved adapter (ours or PEFT's, local folder or hub repo) to `model`. `PeftModel.from_pretrained`
        wraps it in its task type's class (the adapter's task_type); a task type's class wraps it in that class."""
        target = cls
        if cls is PeftModel:
            target = registry.task_type(PromptLearningConfig.from_pretrained(model_id, **hub_kwargs).task_type).wrapper
        shape = probe_shape(model)
        config, source, tensors = read_adapter(
            shape,
            model_id,
            is_trainable,
            lambda source_class, config: target.injection_map[source_class.injection](shape, config),
            **hub_kwargs,
        )
        wrapped = target(model, config, adapter_name, prompt_source=source)
        wrapped.take_adapter_tensors(adapter_name, tensors, is_trainable)
        return wrapped


BASE_ADAPTER_METHODS = base_model_adapter_methods() - set(dir(PeftModel))
PROMPTED_CALLS = {"generate", "score_continuations"}  # what a task type offers only where it prompts them
