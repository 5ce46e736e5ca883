"""Prompts for a frozen model with a sequence classification head (`AutoModelForSequenceClassification`).

Decoders (Llama, Qwen2: their `score` head pools the last real token) take the prompt as a causal LM does,
the run-once shortcut included. Bidirectional encoders (BERT, RoBERTa, DistilBERT...) cannot run the
prompt apart from the text: embedding prompts (prompt tuning, p-tuning) are placed before the text in one
sequence, as PEFT does (the pooler then reads the first virtual token); key/value prompts (prefix tuning,
i.e. P-tuning v2) join every layer's attention through transformers' attention interface, which PEFT 0.21
cannot do with transformers 5. The head (`score` or `classifier`) trains with the prompt, one copy per
adapter, saved under PEFT's names for `modules_to_save` (`base_model.classifier.weight`).
"""

from __future__ import annotations

import contextlib
import copy
import os

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutputWithPast

from . import adapters
from .config import PromptLearningConfig
from .compat import PrefixCall, prefix_attention_context
from .inject import KVPrefix, Prefix, run_with_prefix
from .model import PeftModel

HEAD_NAMES = ("classifier", "score")  # PEFT's modules_to_save for sequence classification
HEAD_PREFIX = "base_model."  # PEFT's key prefix for a saved head: base_model.score.weight


class PeftModelForSequenceClassification(PeftModel):
    """A frozen classifier and one or more prompts, each with its own trainable copy of the head."""

    handles_encoders = True

    def add_adapter(self, adapter_name: str, peft_config: PromptLearningConfig, prompt_source: nn.Module | None = None) -> None:
        base = self.base_model
        self.head_name = next((name for name in HEAD_NAMES if isinstance(getattr(base, name, None), nn.Module)), None)
        if self.head_name is None:
            raise ValueError(
                f"{type(base).__name__} has no classification head ({' or '.join(HEAD_NAMES)}): load the base model with "
                "AutoModelForSequenceClassification for task_type='SEQ_CLS', or use task_type='CAUSAL_LM'."
            )
        if peft_config.modules_to_save is None:
            peft_config.modules_to_save = list(HEAD_NAMES)
        super().add_adapter(adapter_name, peft_config, prompt_source)
        if "heads" not in self._modules:
            self.heads = nn.ModuleDict()  # adapter name -> its head
            self.__dict__["original_head"] = getattr(base, self.head_name)  # stays the base model's submodule only
        head = copy.deepcopy(self.original_head)
        head.requires_grad_(True)
        self.heads[adapter_name] = head

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        del self.heads[adapter_name]

    @contextlib.contextmanager
    def head_of(self, adapter_name: str | None):
        """The base model's head is `adapter_name`'s for the duration (the original one for None)."""
        setattr(self.base_model, self.head_name, self.original_head if adapter_name is None else self.heads[adapter_name])
        try:
            yield
        finally:
            setattr(self.base_model, self.head_name, self.original_head)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        adapter_names: list[str | None] | None = None,
        task_ids=None,
        **kwargs,
    ) -> SequenceClassifierOutputWithPast:
        """Class logits [B, num_labels]; loss over `labels` as the base model computes it (cross-entropy,
        or MSE for one label). With left padding, pooling picks each row's last real token."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        batch = (input_ids if input_ids is not None else inputs_embeds).shape[0]
        names = set(adapter_names or [None if self.adapters_disabled else self.active_adapter])
        if len(names) > 1:
            raise ValueError(
                "One batch of sequence classification takes one adapter (each has its own head): group the rows by "
                f"adapter, got {sorted(map(str, names))}."
            )
        name = next(iter(names))
        if name is None or self.adapters_disabled:
            with self.head_of(None):
                output = self.base_model(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                         position_ids=position_ids, labels=labels, **kwargs)
        elif self.shape.bidirectional:
            with self.head_of(name):
                output = self.encoder_forward(name, task_ids, batch, input_ids, inputs_embeds, attention_mask, labels, **kwargs)
        else:
            prefix, _ = self.batch_prefix(batch, adapter_names, task_ids=task_ids)
            with self.head_of(name):
                output = run_with_prefix(
                    self.base_model, prefix, input_ids, inputs_embeds, attention_mask, position_ids, labels=labels, **kwargs
                )
        return SequenceClassifierOutputWithPast(loss=output.loss, logits=output.logits)

    def encoder_forward(self, name, task_ids, batch, input_ids, inputs_embeds, attention_mask, labels, **kwargs):
        """An encoder sees prompt and text together: no part of it runs once for the batch."""
        base = self.base_model
        task = self.row_tasks(task_ids, [name] * batch)
        if len(set(task)) > 1:
            raise ValueError("One batch of an encoder takes one task: group the rows by task_ids.")
        if isinstance(self.injections[name], KVPrefix):  # per-layer keys/values, through the attention hook
            prefix = Prefix.shared(self.prompt_states(name, task=task[0]), batch)
            with prefix_attention_context(PrefixCall(prefix.layers, prefix.mask)):
                return base(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels, **kwargs)
        table = self.prompt_table(name, task[0])  # [P, H], placed before the text
        if inputs_embeds is None:
            inputs_embeds = base.get_input_embeddings()(input_ids)  # [B, L, H]
        virtual = table.shape[0]
        inputs_embeds = torch.cat([table.to(inputs_embeds.dtype).expand(batch, -1, -1), inputs_embeds], dim=1)
        if attention_mask is None:
            attention_mask = torch.ones(inputs_embeds.shape[:2][0], inputs_embeds.shape[1] - virtual, dtype=torch.long, device=inputs_embeds.device)
        attention_mask = torch.cat([attention_mask.new_ones(batch, virtual), attention_mask], dim=1)  # [B, P+L]
        if kwargs.get("token_type_ids") is not None:
            kwargs["token_type_ids"] = torch.cat([kwargs["token_type_ids"].new_zeros(batch, virtual), kwargs["token_type_ids"]], dim=1)
        return base(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels, **kwargs)

    def generate(self, *args, **kwargs):
        raise TypeError("A sequence classification model does not generate text: call it for class logits.")

    def score_continuations(self, *args, **kwargs):
        raise TypeError("A sequence classification model scores classes with its head: call it for class logits.")

    # ---- the head in the adapter file (PEFT's modules_to_save names) -----------------------------
    def extra_adapter_tensors(self, adapter_name: str) -> dict[str, torch.Tensor]:
        return {f"{HEAD_PREFIX}{self.head_name}.{key}": value.float() for key, value in self.heads[adapter_name].state_dict().items()}

    def take_adapter_tensors(self, adapter_name: str, tensors: dict, is_trainable: bool) -> None:
        prefix = f"{HEAD_PREFIX}{self.head_name}."
        state = {key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)}
        head = self.heads[adapter_name]
        if not state:
            raise adapters.AdapterError(
                f"The adapter {adapter_name!r} holds no classification head ({prefix}*): it was not trained for "
                "sequence classification with this model."
            )
        current = head.state_dict()
        try:
            head.load_state_dict({k: v.to(current[k].dtype) if k in current else v for k, v in state.items()})
        except RuntimeError as error:
            raise adapters.AdapterError(f"The adapter's classification head does not fit this model's: {error}") from error
        head.requires_grad_(is_trainable)


class AutoPeftModelForSequenceClassification:
    """Load an adapter, its base model (with a head of the adapter's size) from the adapter folder alone."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, is_trainable: bool = False,
                        adapter_name: str = "default", **model_kwargs) -> PeftModelForSequenceClassification:
        from transformers import AutoModelForSequenceClassification

        from .models import load_base_model

        config = PromptLearningConfig.from_pretrained(pretrained_model_name_or_path)
        if not config.base_model_name_or_path:
            raise adapters.AdapterError(f"{pretrained_model_name_or_path} does not name its base model (base_model_name_or_path).")
        labels = head_labels(pretrained_model_name_or_path)
        if labels:
            model_kwargs.setdefault("num_labels", labels)
        base = load_base_model(config.base_model_name_or_path, auto_class=AutoModelForSequenceClassification, **model_kwargs)
        return PeftModelForSequenceClassification.from_pretrained(
            base, pretrained_model_name_or_path, adapter_name=adapter_name, is_trainable=is_trainable
        )


def head_labels(location) -> int | None:
    """How many classes an adapter's saved head has (its last weight's rows), or None without a head."""
    tensors = adapters.read_adapter_tensors(location)
    weights = [t for key, t in sorted(tensors.items()) if key.startswith(HEAD_PREFIX) and key.endswith(".weight")]
    return weights[-1].shape[0] if weights else None
