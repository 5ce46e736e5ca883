"""The task layer: what differs between kinds of task when training and classifying, and nothing else.

- `LabelScoring` (task_type CAUSAL_LM): a language model writes each class's label words; rows are
  `{template}{label}<eos>`, left-padded, with the loss on the label; classes are ranked by the
  likelihood of their words.
- `SequenceClassification` (task_type SEQ_CLS): a classification head (trained with the prompt) scores
  the classes from the templated text; rows are right-padded (encoders place tokens by index).
The training loop, evaluation and the Predictor see these methods only.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .data import Encoder, Example, collate_training, sorted_batches


class LabelScoring:
    task_type = "CAUSAL_LM"

    def __init__(self, examples: list[Example]):
        self.keep = max((len(e.target_ids) for e in examples), default=1) + 1  # labels end every left-padded row

    def auto_class(self):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    @staticmethod
    def model_kwargs(encoder: Encoder) -> dict:
        return {}

    def collate(self, examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
        return collate_training(examples, pad_id)

    def loss(self, model, batch: dict) -> torch.Tensor:
        return model(**batch, logits_to_keep=self.keep).loss  # the LM head only where labels are

    @staticmethod
    def weight(batch: dict) -> torch.Tensor:
        """How many predictions the batch's mean loss averages over (label tokens)."""
        return (batch["labels"][:, 1:] != -100).sum()

    @staticmethod
    def class_log_scores(model, encoder: Encoder, examples: list[Example], batch_size: int = 16, progress: bool = True,
                         adapter_name: str | None = None) -> torch.Tensor:
        """[N, K]: each class's summed label log-likelihood."""
        from .evaluate import score_labels

        return score_labels(model, encoder, examples, batch_size, progress, adapter_name)

    @staticmethod
    def eval_loss(scores: torch.Tensor, gold: list[int], encoder: Encoder) -> float:
        """The teacher-forced loss over the gold labels' tokens, from the scores (no second pass)."""
        label_tokens = sum(len(encoder.target_ids(g)) for g in gold)
        return -scores[torch.arange(len(gold)), torch.tensor(gold)].sum().item() / label_tokens


class SequenceClassification:
    task_type = "SEQ_CLS"

    def __init__(self, examples: list[Example] | None = None):
        self.examples = examples or []  # the training rows: an adapter with head_init="fit" starts its head from them

    def auto_class(self):
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification

    @staticmethod
    def model_kwargs(encoder: Encoder) -> dict:
        """A head with one output per class, named as the task's classes."""
        names = dict(enumerate(encoder.class_names))
        return {"num_labels": len(names), "id2label": names, "label2id": {n: i for i, n in names.items()}}

    @staticmethod
    def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
        """Right-padded input_ids, attention_mask [B, T]; labels [B] (class positions)."""
        width = max(len(e.prompt_ids) for e in examples)
        return {
            "input_ids": torch.tensor([e.prompt_ids + [pad_id] * (width - len(e.prompt_ids)) for e in examples]),
            "attention_mask": torch.tensor([[1] * len(e.prompt_ids) + [0] * (width - len(e.prompt_ids)) for e in examples]),
            "labels": torch.tensor([e.label for e in examples]),
        }

    def loss(self, model, batch: dict) -> torch.Tensor:
        self.prepare_head(model)
        return model(**batch).loss

    def prepare_head(self, model, batch_size: int = 32) -> None:
        """Before the first step: fit the head of an adapter with head_init="fit" on the training rows' features
        (once; a head loaded from a checkpoint or an adapter file is kept)."""
        plain = getattr(model, "module", model)  # under DistributedDataParallel
        if not hasattr(plain, "head_needs_fit") or not plain.head_needs_fit() or not self.examples:
            return
        pad_id = getattr(getattr(plain.base_model, "config", None), "pad_token_id", None) or 0
        batches = (self.collate([self.examples[i] for i in rows], pad_id)
                   for rows in sorted_batches([len(e.prompt_ids) for e in self.examples], batch_size))
        plain.fit_head_on(batches)

    @staticmethod
    def weight(batch: dict) -> torch.Tensor:
        return torch.tensor(len(batch["labels"]))

    @classmethod
    @torch.no_grad()
    def class_log_scores(cls, model, encoder: Encoder, examples: list[Example], batch_size: int = 16, progress: bool = True,
                         adapter_name: str | None = None) -> torch.Tensor:
        """[N, K]: the head's class log-probabilities."""
        scores = torch.empty(len(examples), len(encoder.class_names))
        model.eval()
        for batch in tqdm(sorted_batches([len(e.prompt_ids) for e in examples], batch_size), desc="classifying",
                          disable=not progress, leave=False):
            inputs = cls.collate([examples[i] for i in batch], encoder.tokenizer.pad_token_id)
            names = None if adapter_name is None else [adapter_name] * len(batch)
            logits = model(input_ids=inputs["input_ids"].to(model.device), attention_mask=inputs["attention_mask"].to(model.device),
                           adapter_names=names).logits  # [B, K]
            scores[batch] = logits.float().log_softmax(-1).cpu()
        return scores

    @staticmethod
    def eval_loss(scores: torch.Tensor, gold: list[int], encoder: Encoder) -> float:
        return -scores[torch.arange(len(gold)), torch.tensor(gold)].mean().item()


TASKS = {LabelScoring.task_type: LabelScoring, SequenceClassification.task_type: SequenceClassification}


def task_kind(task_type: str | None):
    """The task class for a task_type (CAUSAL_LM by default)."""
    key = (task_type or "CAUSAL_LM").upper()
    if key not in TASKS:
        raise ValueError(f"task_type={task_type!r} is not a task softprompt trains: use CAUSAL_LM or SEQ_CLS.")
    return TASKS[key]
