"""Prompts for a frozen model with a sequence classification head (`AutoModelForSequenceClassification`).

Decoders (Llama, Qwen2: their `score` head pools the last real token) take the prompt as a causal LM does,
the run-once shortcut included. Bidirectional encoders (BERT, RoBERTa, DistilBERT...) cannot run the
prompt apart from the text: embedding prompts (prompt tuning, p-tuning) are placed before the text in one
sequence, as PEFT does (the pooler then reads the first virtual token); key/value prompts (prefix tuning,
i.e. P-tuning v2) join every layer's attention through transformers' attention interface, which PEFT 0.21
cannot do with transformers 5. The head (`score` or `classifier`) trains with the prompt, one copy per
adapter, saved under PEFT's names for `modules_to_save` (`base_model.classifier.weight`).

Two options of softprompt's own, for encoders (config fields, saved in adapter_config.json only when set):
`pooling="mean"` has the head read the mean of the text tokens' last hidden states (virtual tokens and
padding excluded) instead of the model's [CLS]/pooler output; sentence encoders (all-MiniLM-L6-v2) were
trained to be read that way. PEFT loads such an adapter but runs it with its own [CLS] pooling. And
`head_init="fit"`: training starts the head from a class-balanced, L2-regularised logistic regression on the
features the head reads (`fit_head`), so the prompt trains from a linear probe rather than a random head.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os

import torch
from torch import nn
from torch.nn import functional as F
from transformers.modeling_outputs import SequenceClassifierOutputWithPast

from . import adapters
from .compat import current_state, load_whole_state
from .config import PromptLearningConfig
from .inject import run_with_prefix
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
        shape = getattr(self, "shape", None)
        if shape is not None and not shape.bidirectional and (peft_config.pooling != "cls" or peft_config.head_init != "model"):
            raise ValueError(
                f"pooling={peft_config.pooling!r} and head_init={peft_config.head_init!r} are for encoders (BERT, "
                f"RoBERTa, DistilBERT); {type(base).__name__} pools its last real token: leave both at their defaults."
            )
        if peft_config.head_init == "fit" and not isinstance(getattr(base, self.head_name), nn.Linear):
            raise ValueError(
                f"head_init='fit' fits a linear head; {type(base).__name__}.{self.head_name} is a "
                f"{type(getattr(base, self.head_name)).__name__}: use head_init='model'."
            )
        if peft_config.modules_to_save is None:
            peft_config.modules_to_save = list(HEAD_NAMES)
        super().add_adapter(adapter_name, peft_config, prompt_source)
        if "heads" not in self._modules:
            self.heads = nn.ModuleDict()  # adapter name -> its head
            self.__dict__["original_head"] = getattr(base, self.head_name)  # stays the base model's submodule only
            self.__dict__["settled_heads"] = set()  # adapters whose head was loaded or fitted: never fitted again
        head = copy.deepcopy(self.original_head)
        head.requires_grad_(True)
        self.heads[adapter_name] = head

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        del self.heads[adapter_name]
        self.settled_heads.discard(adapter_name)

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
        or MSE for one label). Decoders, left-padded: pooling picks each row's last real token. Encoders,
        right-padded: the model's [CLS] pooling, or the adapter's pooling="mean" over the real text tokens."""
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
                output = self.encoder_forward(name, task_ids, input_ids, inputs_embeds, attention_mask, labels, **kwargs)
        else:
            prefix, _ = self.batch_prefix(batch, adapter_names, task_ids=task_ids)
            with self.head_of(name):
                output = run_with_prefix(
                    self.base_model, prefix, input_ids, inputs_embeds, attention_mask, position_ids, labels=labels, **kwargs
                )
        return SequenceClassifierOutputWithPast(loss=output.loss, logits=output.logits)

    def encoder_forward(self, name, task_ids, input_ids, inputs_embeds, attention_mask, labels, **kwargs):
        """An encoder sees prompt and text together: no part of it runs once for the batch. With pooling="cls" the
        base model pools and classifies (its head is the adapter's); with "mean", its backbone runs and we do."""
        base = self.base_model
        given = input_ids if input_ids is not None else inputs_embeds
        if attention_mask is None:
            attention_mask = torch.ones(given.shape[:2], dtype=torch.long, device=given.device)
        text_mask = attention_mask  # [B, L]
        mean = self.peft_config[name].pooling == "mean"
        run = base.base_model if mean else functools.partial(base, labels=labels)  # BertModel, or the whole classifier
        output = self.run_encoder(run, name, task_ids, input_ids, inputs_embeds, attention_mask, **kwargs)
        if not mean:
            return output
        pooled, head = self.pool_mean(base, output.last_hidden_state, text_mask), self.heads[name]  # [B, H]
        logits = head(pooled) if isinstance(head, nn.Linear) else head(pooled[:, None])  # RoBERTa's head reads [B, L, H]
        return SequenceClassifierOutputWithPast(loss=classification_loss(base.config, logits, labels), logits=logits)

    @staticmethod
    def pool_mean(base, hidden: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """The mean of the text tokens' states (the last L of hidden [B, P+L, H]; mask [B, L]), then the
        dropout the model applies before its classifier. -> [B, H]"""
        hidden = hidden[:, hidden.shape[1] - text_mask.shape[1]:]  # drop virtual tokens
        weights = text_mask.to(hidden.dtype).unsqueeze(-1)  # [B, L, 1]
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
        dropout = getattr(base, "dropout", None)
        return dropout(pooled) if isinstance(dropout, nn.Dropout) else pooled

    # ---- starting the head from a linear probe ---------------------------------------------------
    @torch.no_grad()
    def head_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      adapter_name: str | None = None, **kwargs) -> torch.Tensor:
        """What the adapter's head reads for these rows with the current prompt, in eval mode: [B, H]."""
        name = adapter_name or self.active_name()
        captured = []
        hook = self.heads[name].register_forward_pre_hook(lambda module, args: captured.append(args[0]))
        was_training = self.training
        self.eval()
        try:
            self(input_ids=input_ids, attention_mask=attention_mask, adapter_names=[name] * input_ids.shape[0], **kwargs)
        finally:
            hook.remove()
            self.train(was_training)
        features = captured[0]
        if features.dim() != 2:
            raise ValueError(f"The head of {type(self.base_model).__name__} reads {tuple(features.shape)} per batch, not one vector per row.")
        return features.float()

    @torch.no_grad()
    def fit_head(self, features: torch.Tensor, labels: torch.Tensor, adapter_name: str | None = None,
                 l2: float = 1.0, balanced: bool = True) -> None:
        """Set a linear head to the logistic regression on `features` [N, H] and `labels` [N] (class positions):
        minimises sum_i w_i * cross-entropy_i + l2/2 * |weight|^2 (sklearn's objective with C = 1/l2), the
        classes weighted to equal total weight when `balanced`. Classes absent from `labels` get no rows."""
        name = adapter_name or self.active_name()
        head = self.heads[name]
        if not isinstance(head, nn.Linear):
            raise TypeError(f"fit_head fits a linear head; this one is a {type(head).__name__}.")
        features, labels = features.float().cpu(), labels.long().cpu()
        counts = torch.bincount(labels, minlength=head.out_features).float()
        weights = (len(labels) / (counts.clamp(min=1) * (counts > 0).sum()))[labels] if balanced else torch.ones(len(labels))
        weight = torch.zeros(head.out_features, features.shape[1], requires_grad=True)
        bias = torch.zeros(head.out_features, requires_grad=True)
        optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=500, tolerance_grad=1e-9, tolerance_change=1e-12,
                                      history_size=20, line_search_fn="strong_wolfe")

        def objective():
            optimizer.zero_grad()
            loss = (F.cross_entropy(features @ weight.T + bias, labels, reduction="none") * weights).sum()
            loss = loss + 0.5 * l2 * weight.pow(2).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            optimizer.step(objective)
        head.weight.copy_(weight.detach().to(head.weight))
        if head.bias is not None:
            head.bias.copy_(bias.detach().to(head.bias))
        self.settled_heads.add(name)

    def fit_head_on(self, batches, adapter_name: str | None = None, **options) -> None:
        """`fit_head` on the features of `batches`: an iterable of dicts with input_ids, attention_mask, labels."""
        features, labels = [], []
        device = self.base_model.get_input_embeddings().weight.device
        for batch in batches:
            features.append(self.head_features(batch["input_ids"].to(device), batch["attention_mask"].to(device), adapter_name).cpu())
            labels.append(batch["labels"].cpu())
        self.fit_head(torch.cat(features), torch.cat(labels), adapter_name, **options)

    def head_needs_fit(self, adapter_name: str | None = None) -> bool:
        """True when the adapter asks for head_init='fit' and its head was neither loaded nor fitted yet."""
        name = adapter_name or self.active_name()
        return self.peft_config[name].head_init == "fit" and name not in self.settled_heads

    def generate(self, *args, **kwargs):
        raise TypeError("A sequence classification model does not generate text: call it for class logits.")

    def score_continuations(self, *args, **kwargs):
        raise TypeError("A sequence classification model scores classes with its head: call it for class logits.")

    # ---- the head in the adapter file (PEFT's modules_to_save names) -----------------------------
    def adapter_modules(self, adapter_name: str) -> list[nn.Module]:
        return [*super().adapter_modules(adapter_name), self.heads[adapter_name]]

    def extra_adapter_tensors(self, adapter_name: str) -> dict[str, torch.Tensor]:
        return {f"{HEAD_PREFIX}{self.head_name}.{key}": value.float() for key, value in current_state(self.heads[adapter_name]).items()}

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
            load_whole_state(head, {k: v.to(current[k].dtype) if k in current else v for k, v in state.items()})
        except RuntimeError as error:
            raise adapters.AdapterError(f"The adapter's classification head does not fit this model's: {error}") from error
        head.requires_grad_(is_trainable)
        self.settled_heads.add(adapter_name)


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


def classification_loss(config, logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor | None:
    """The loss transformers' sequence classifiers compute from logits [B, K] (config.problem_type, or as they infer it)."""
    if labels is None:
        return None
    problem = config.problem_type
    if problem is None:
        problem = ("regression" if config.num_labels == 1 else
                   "single_label_classification" if labels.dtype in (torch.long, torch.int) else "multi_label_classification")
    if problem == "regression":
        return F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype)) if config.num_labels == 1 else F.mse_loss(logits, labels.to(logits.dtype))
    if problem == "single_label_classification":
        return F.cross_entropy(logits.view(-1, config.num_labels), labels.view(-1))
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


def head_labels(location) -> int | None:
    """How many classes an adapter's saved head has (its last weight's rows), or None without a head."""
    tensors = adapters.read_adapter_tensors(location)
    weights = [t for key, t in sorted(tensors.items()) if key.startswith(HEAD_PREFIX) and key.endswith(".weight")]
    return weights[-1].shape[0] if weights else None
