"""Each epoch's metrics: the task type's class scores on held-out rows -> loss, accuracy, macro-F1; and which
epoch's adapter to keep."""

from __future__ import annotations

import math

from .. import registry
from ..inference import classification_metrics
from .config import TrainConfig
from .examples import TaskExamples


def evaluate_parts(model, parts: list[TaskExamples], attribute: str, config: TrainConfig, prefix: str) -> dict:
    """Metrics of each task's `attribute` rows (evaluation or selection): prefix+metric for one task; for several,
    their means as prefix+metric (what best_metric reads) and each task's as prefix+name_+metric."""
    scored = [(part, getattr(part, attribute)) for part in parts if getattr(part, attribute)]
    if not scored:
        return {}
    if len(parts) == 1:
        return prefixed(prefix, evaluate_examples(model, scored[0][0].rows, scored[0][1], config))
    per_task = {part.name: evaluate_examples(model, part.rows, examples, config) for part, examples in scored}
    mean = {
        key: sum(metrics[key] for metrics in per_task.values()) / len(per_task)
        for key in ("loss", "accuracy", "macro_f1")
    }
    line = prefixed(
        prefix,
        {
            "loss": mean["loss"],
            "ppl": safe_exp(mean["loss"]),
            "accuracy": mean["accuracy"],
            "macro_f1": mean["macro_f1"],
        },
    )
    for name, metrics in per_task.items():
        line.update(prefixed(f"{prefix}{name}_", metrics))
    return line


def evaluate_examples(model, rows, examples, config: TrainConfig) -> dict:
    """Loss/perplexity and classification metrics, from one pass of class scores (the task type's: label
    likelihoods, whose gold one is exactly the teacher-forced loss, or a head's log-probabilities)."""
    behaviour = registry.task_type(config.task_type).require_behaviour("softprompt train")
    scores = behaviour.class_log_scores(model, rows, examples, config.eval_batch_size, config.progress)  # [N, K]
    gold = [e.label for e in examples]
    loss = behaviour.eval_loss(scores, gold, rows)
    if config.eval_method == "generation":
        predicted, _ = behaviour.classify_by_generation(model, rows, examples, config.eval_batch_size, config.progress)
    else:
        predicted = scores.argmax(-1).tolist()
    metrics = classification_metrics(gold, predicted, rows.class_names)
    return {"loss": loss, "ppl": safe_exp(loss), "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]}


def selection_score(line: dict, config: TrainConfig) -> float | None:
    """The epoch's score on the selection metric (higher is better); None: nothing to select on, keep the latest."""
    if config.best_metric == "last":
        return None  # every epoch replaces the adapter: the last one is kept
    prefix = "val_" if f"val_{config.best_metric}" in line else "eval_"
    value = line.get(prefix + config.best_metric)
    if value is None:
        return None  # nothing to select on: the latest epoch is kept
    return -value if config.best_metric == "loss" else value


def prefixed(prefix: str, metrics: dict) -> dict:
    return {prefix + key: value for key, value in metrics.items()}


def safe_exp(value: float) -> float:
    return math.exp(min(value, 50.0))
