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
trained to be read that way (`"normalized_mean"`: scaled to unit length, as sentence-transformers gives it).
PEFT loads such an adapter but runs it with its own [CLS] pooling. And
`head_init="fit"`: training starts the head from a class-balanced, L2-regularised logistic regression on the
features the head reads (`fit_head`), so the prompt trains from a linear probe rather than a random head.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm
from transformers import AutoModelForSequenceClassification
from transformers.modeling_outputs import SequenceClassifierOutputWithPast

from .. import registry
from ..config import PromptLearningConfig
from ..core import AutoPeftModel
from ..data import Example, RowTokenizer, sorted_batches
from .base import TaskBehaviour
from .heads import AdapterHeads


class PeftModelForSequenceClassification(AdapterHeads):
    """A frozen sequence classifier and one or more prompts, each with its own trainable copy of the head."""

    def add_adapter(
        self, adapter_name: str, peft_config: PromptLearningConfig, prompt_source: nn.Module | None = None
    ) -> None:
        if not self.shape.bidirectional and (peft_config.pooling != "cls" or peft_config.head_init != "model"):
            raise ValueError(
                f"pooling={peft_config.pooling!r} and head_init={peft_config.head_init!r} are for encoders (BERT, "
                f"RoBERTa, DistilBERT); {type(self.base_model).__name__} pools its last real token: leave both at "
                "their defaults."
            )
        super().add_adapter(adapter_name, peft_config, prompt_source)

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
                output = self.base_model(
                    input_ids=input_ids,
                    inputs_embeds=inputs_embeds,
                    attention_mask=attention_mask,
                    position_ids=position_ids,
                    labels=labels,
                    **kwargs,
                )
        elif self.shape.bidirectional:
            with self.head_of(name):
                output = self.encoder_forward(
                    name, task_ids, input_ids, inputs_embeds, attention_mask, labels, **kwargs
                )
        else:
            prefix, _ = self.batch_prefix(batch, adapter_names, task_ids=task_ids)
            with self.head_of(name):
                output = self.run_decoder(
                    prefix, adapter_names, task_ids, input_ids, inputs_embeds, attention_mask, position_ids,
                    labels=labels, **kwargs,
                )  # fmt: skip
        return SequenceClassifierOutputWithPast(loss=output.loss, logits=output.logits)

    def encoder_forward(self, name, task_ids, input_ids, inputs_embeds, attention_mask, labels, **kwargs):
        """An encoder sees prompt and text together: no part of it runs once for the batch. With pooling="cls" the
        base model pools and classifies (its head is the adapter's); with "mean" or "normalized_mean", its backbone
        runs and we do."""
        base = self.base_model
        given = input_ids if input_ids is not None else inputs_embeds
        if attention_mask is None:
            attention_mask = torch.ones(given.shape[:2], dtype=torch.long, device=given.device)
        text_mask = attention_mask  # [B, L]
        pooling = self.peft_config[name].pooling
        mean = pooling != "cls"
        run = base.base_model if mean else functools.partial(base, labels=labels)  # BertModel, or the whole classifier
        output = self.run_encoder(run, name, task_ids, input_ids, inputs_embeds, attention_mask, **kwargs)
        if not mean:
            return output
        pooled = self.pool_mean(base, output.last_hidden_state, text_mask, pooling == "normalized_mean")  # [B, H]
        head = self.heads[name]
        logits = (
            head(pooled) if isinstance(head, nn.Linear) else head(pooled[:, None])
        )  # RoBERTa's head reads [B, L, H]
        return SequenceClassifierOutputWithPast(loss=classification_loss(base.config, logits, labels), logits=logits)

    @staticmethod
    def pool_mean(base, hidden: torch.Tensor, text_mask: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """The mean of the text tokens' states (the last L of hidden [B, P+L, H]; mask [B, L]), scaled to unit
        length if `normalize`, then the dropout the model applies before its classifier. -> [B, H]"""
        hidden = hidden[:, hidden.shape[1] - text_mask.shape[1] :]  # drop virtual tokens
        weights = text_mask.to(hidden.dtype).unsqueeze(-1)  # [B, L, 1]
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
        if normalize:
            pooled = F.normalize(pooled, dim=-1)
        dropout = getattr(base, "dropout", None)
        return dropout(pooled) if isinstance(dropout, nn.Dropout) else pooled


class AutoPeftModelForSequenceClassification(AutoPeftModel):
    """Load a SEQ_CLS adapter and its base model (with a head of the adapter's size) from the adapter folder alone."""

    task_type = "SEQ_CLS"


def classification_loss(config, logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor | None:
    """The loss transformers' sequence classifiers compute from logits [B, K] (config.problem_type, or as they
    infer it)."""
    if labels is None:
        return None
    problem = config.problem_type
    if problem is None:
        problem = (
            "regression"
            if config.num_labels == 1
            else "single_label_classification"
            if labels.dtype in (torch.long, torch.int)
            else "multi_label_classification"
        )
    if problem == "regression":
        return (
            F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
            if config.num_labels == 1
            else F.mse_loss(logits, labels.to(logits.dtype))
        )
    if problem == "single_label_classification":
        return F.cross_entropy(logits.view(-1, config.num_labels), labels.view(-1))
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


class HeadClassification(TaskBehaviour):
    """A classification head (trained with the prompt) scores the classes from the templated text; rows are
    right-padded (encoders place tokens by index)."""

    label_words = False

    @staticmethod
    def model_options(rows: RowTokenizer) -> dict:
        """A head with one output per class, named as the task's classes."""
        names = dict(enumerate(rows.class_names))
        return {"num_labels": len(names), "id2label": names, "label2id": {n: i for i, n in names.items()}}

    @staticmethod
    def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
        """Right-padded input_ids, attention_mask [B, T]; labels [B] (class positions)."""
        width = max(len(e.prompt_ids) for e in examples)
        return {
            "input_ids": torch.tensor([e.prompt_ids + [pad_id] * (width - len(e.prompt_ids)) for e in examples]),
            "attention_mask": torch.tensor(
                [[1] * len(e.prompt_ids) + [0] * (width - len(e.prompt_ids)) for e in examples]
            ),
            "labels": torch.tensor([e.label for e in examples]),
        }

    def loss(self, model, batch: dict) -> torch.Tensor:
        self.prepare_head(model)
        return model(**batch).loss

    def prepare_head(self, model, batch_size: int = 32) -> None:
        """Before the first step: fit the head of an adapter with head_init="fit" on the training rows' features
        (once; a head loaded from a checkpoint or an adapter file is kept)."""
        plain = getattr(model, "module", model)  # under DistributedDataParallel
        if not plain.head_needs_fit() or not self.examples:
            return
        pad_id = getattr(getattr(plain.base_model, "config", None), "pad_token_id", None) or 0
        batches = (
            self.collate([self.examples[i] for i in rows], pad_id)
            for rows in sorted_batches([len(e.prompt_ids) for e in self.examples], batch_size)
        )
        plain.fit_head_on(batches)

    @staticmethod
    def weight(batch: dict) -> torch.Tensor:
        """Rows."""
        return torch.tensor(len(batch["labels"]))

    @classmethod
    @torch.no_grad()
    def class_log_scores(
        cls,
        model,
        rows: RowTokenizer,
        examples: list[Example],
        batch_size: int = 16,
        progress: bool = True,
        adapter_name: str | None = None,
    ) -> torch.Tensor:
        """[N, K]: the head's class log-probabilities."""
        scores = torch.empty(len(examples), len(rows.class_names))
        model.eval()
        for batch in tqdm(
            sorted_batches([len(e.prompt_ids) for e in examples], batch_size),
            desc="classifying",
            disable=not progress,
            leave=False,
        ):
            inputs = cls.collate([examples[i] for i in batch], rows.tokenizer.pad_token_id)
            names = None if adapter_name is None else [adapter_name] * len(batch)
            logits = model(
                input_ids=inputs["input_ids"].to(model.device),
                attention_mask=inputs["attention_mask"].to(model.device),
                adapter_names=names,
            ).logits  # [B, K]
            scores[batch] = logits.float().log_softmax(-1).cpu()
        return scores

    @staticmethod
    def eval_loss(scores: torch.Tensor, gold: list[int], rows: RowTokenizer) -> float:
        return -scores[torch.arange(len(gold)), torch.tensor(gold)].mean().item()


registry.register_task_type(
    "SEQ_CLS", PeftModelForSequenceClassification, AutoModelForSequenceClassification, HeadClassification
)
