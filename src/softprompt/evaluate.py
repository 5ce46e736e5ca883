"""Classification with a prompted model: label scoring (rank classification), generation, and metrics."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .data import Encoder, Example, pad_left, row_task_ids, sorted_batches


@torch.no_grad()
def score_rows(
    model, prompts: list[list[int]], continuations: list[list[list[int]]], pad_id: int,
    adapter_names: list[str | None] | None = None, batch_size: int = 16, progress: bool = True,
    task_ids: list[int] | None = None,
) -> torch.Tensor:
    """Summed log-likelihood of each row's continuations after its prompt: [N, max K] (-inf past a row's own K).

    Rows may each have their own adapter and their own continuations (e.g. several tasks in one stream);
    batches group rows of similar length, whatever their adapters. Each prompt runs once and its
    continuations run from its cache (see PeftModel.score_continuations). `task_ids`: one per row, for
    adapters with several task prompts (multitask prompt tuning).
    """
    scores = torch.full((len(prompts), max(len(c) for c in continuations)), float("-inf"))
    model.eval()
    for batch in tqdm(sorted_batches([len(p) for p in prompts], batch_size), desc="scoring labels", disable=not progress, leave=False):
        input_ids = pad_left([prompts[i] for i in batch], pad_id).to(model.device)
        attention_mask = pad_left([[1] * len(prompts[i]) for i in batch], 0).to(model.device)
        names = None if adapter_names is None else [adapter_names[i] for i in batch]
        tasks = {} if task_ids is None else {"task_ids": [task_ids[i] for i in batch]}
        batch_scores = model.score_continuations(input_ids, attention_mask, [continuations[i] for i in batch], names, **tasks)
        scores[batch, : batch_scores.shape[1]] = batch_scores.cpu()
    return scores


def score_labels(
    model, encoder: Encoder, examples: list[Example], batch_size: int = 16, progress: bool = True, adapter_name: str | None = None
) -> torch.Tensor:
    """Log-likelihood of each class's verbalized label (and EOS) after each prompt: [N, K]."""
    targets = [encoder.target_ids(k) for k in range(len(encoder.class_names))]
    names = None if adapter_name is None else [adapter_name] * len(examples)
    prompts = [e.prompt_ids for e in examples]
    return score_rows(model, prompts, [targets] * len(examples), encoder.tokenizer.pad_token_id, names, batch_size, progress,
                      row_task_ids(examples))


def match_label(text: str, label_texts: list[str]) -> int:
    """Index of the label a generated text names (exact, else the longest label it starts with); -1 if none."""
    cleaned = text.strip().lower()
    candidates = [t.strip().lower() for t in label_texts]
    if cleaned in candidates:
        return candidates.index(cleaned)
    starts = [(len(c), k) for k, c in enumerate(candidates) if c and cleaned.startswith(c)]
    return max(starts)[1] if starts else -1


@torch.no_grad()
def classify_by_generation(
    model, encoder: Encoder, examples: list[Example], batch_size: int = 16, progress: bool = True, adapter_name: str | None = None
) -> tuple[list[int], list[str]]:
    """Greedy generation after each prompt, mapped back to a class (-1: matched no label)."""
    tokenizer = encoder.tokenizer
    label_texts = [encoder.spec.label_text(name) for name in encoder.class_names]
    max_new = max(len(encoder.target_ids(k)) for k in range(len(label_texts))) + 1
    predictions, texts = [0] * len(examples), [""] * len(examples)
    model.eval()
    batches = sorted_batches([len(e.prompt_ids) for e in examples], batch_size)
    for batch in tqdm(batches, desc="generating", disable=not progress, leave=False):
        prompts = [examples[i].prompt_ids for i in batch]
        input_ids = pad_left(prompts, tokenizer.pad_token_id).to(model.device)
        attention_mask = pad_left([[1] * len(p) for p in prompts], 0).to(model.device)
        tasks = row_task_ids([examples[i] for i in batch])
        output = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            adapter_names=None if adapter_name is None else [adapter_name] * len(batch),
            **({} if tasks is None else {"task_ids": tasks}),
            max_new_tokens=max_new,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        for row, i in enumerate(batch):
            texts[i] = tokenizer.decode(output[row, input_ids.shape[1] :], skip_special_tokens=True)
            predictions[i] = match_label(texts[i], label_texts)
    return predictions, texts


def classification_metrics(gold: list[int], predicted: list[int], class_names: list[str]) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix (a last column counts unmatched)."""
    k = len(class_names)
    confusion = [[0] * (k + 1) for _ in range(k)]  # [gold][predicted], column k: no label matched
    for g, p in zip(gold, predicted):
        confusion[g][p if 0 <= p < k else k] += 1
    per_class, f1s = {}, []
    for c, name in enumerate(class_names):
        true_positive = confusion[c][c]
        predicted_c = sum(confusion[g][c] for g in range(k))
        gold_c = sum(confusion[c])
        precision = true_positive / predicted_c if predicted_c else 0.0
        recall = true_positive / gold_c if gold_c else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": gold_c}
        f1s.append(f1)
    total = len(gold)
    return {
        "accuracy": sum(confusion[c][c] for c in range(k)) / total if total else 0.0,
        "macro_f1": sum(f1s) / k if k else 0.0,
        "unmatched": sum(row[k] for row in confusion),
        "per_class": per_class,
        "confusion": confusion,
        "count": total,
    }
