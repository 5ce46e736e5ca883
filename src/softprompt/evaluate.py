"""Classification with a prompted model: loading a trained adapter, label scoring (rank classification),
ensembles of adapters, generation, and metrics."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .data import Encoder, Example, pad_left, sorted_batches


@torch.no_grad()
def score_labels(model, encoder: Encoder, examples: list[Example], batch_size: int = 16, progress: bool = True) -> torch.Tensor:
    """Log-likelihood of each class's verbalized label (and EOS) after each prompt: [N, K].

    Each prompt runs once; the K labels continue from its cache (see PeftModel.score_continuations).
    """
    targets = [encoder.target_ids(k) for k in range(len(encoder.class_names))]
    scores = torch.empty(len(examples), len(targets))
    pad_id = encoder.tokenizer.pad_token_id
    model.eval()
    batches = sorted_batches([len(e.prompt_ids) for e in examples], batch_size)
    for batch in tqdm(batches, desc="scoring labels", disable=not progress, leave=False):
        prompts = [examples[i].prompt_ids for i in batch]
        input_ids = pad_left(prompts, pad_id).to(model.device)
        attention_mask = pad_left([[1] * len(p) for p in prompts], 0).to(model.device)
        scores[batch] = model.score_continuations(input_ids, attention_mask, targets).cpu()
    return scores


def load_for_inference(adapter: str):
    """(model, encoder) from an adapter folder (or Hub repo) written by softprompt train: base model, prompt, task."""
    from .model import AutoPeftModelForCausalLM
    from .models import load_tokenizer
    from .train import read_task  # train imports this module: import late

    model = AutoPeftModelForCausalLM.from_pretrained(adapter)
    model.eval()
    tokenizer = load_tokenizer(model.active_peft_config.base_model_name_or_path)
    spec = read_task(adapter)
    return model, Encoder(tokenizer, spec, spec.label_names)


def ensemble_probabilities(adapters: list[str], encode, batch_size: int, progress: bool = True):
    """Class probabilities averaged over adapters (an ensemble of, e.g., several seeds): ([N, K], first encoder).

    `encode(encoder)` turns the rows into examples with each adapter's own template; the adapters must share
    their classes. Adapters load one at a time, so memory stays that of one model.
    """
    total, first = None, None
    for adapter in adapters:
        model, encoder = load_for_inference(adapter)
        if first is not None and encoder.class_names != first.class_names:
            raise ValueError(
                f"Adapter {adapter} has classes {encoder.class_names}, but {adapters[0]} has {first.class_names}: "
                "an ensemble needs adapters trained for the same labels."
            )
        probabilities = score_labels(model, encoder, encode(encoder), batch_size, progress).softmax(-1)  # [N, K]
        total = probabilities if total is None else total + probabilities
        first = first or encoder
        del model
    return total / len(adapters), first


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
    model, encoder: Encoder, examples: list[Example], batch_size: int = 16, progress: bool = True
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
        output = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
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
