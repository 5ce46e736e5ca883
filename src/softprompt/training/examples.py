"""A run's rows, from its config: each task's tables loaded, tokenized, sampled and split (validation_fraction),
and each epoch's rows (balance_classes)."""

from __future__ import annotations

from dataclasses import dataclass

from .. import registry
from ..data import (
    Example,
    RowTokenizer,
    Table,
    TaskSpec,
    balanced,
    load_table,
    resolve_label_names,
    sample_rows,
    stratified_split,
)
from .config import TrainConfig


@dataclass
class TaskExamples:
    """One task's row tokenizer and tokenized rows: training, held-out selection rows (validation_fraction),
    evaluation."""

    name: str | None
    rows: RowTokenizer
    train: list[Example]
    selection: list[Example] | None
    evaluation: list[Example] | None


def load_tasks_data(config: TrainConfig, tokenizer) -> list[TaskExamples]:
    """Each task's rows: the config's one task, or each of `tasks` (rows tagged with its task id)."""
    if not config.tasks:
        source = config.train_file if config.train_file is not None else config.dataset
        train_table = load_table(source, config.dataset_config, config.train_split, "train_file")
        eval_table = None
        if config.eval_file is not None or config.eval_split:
            source = config.eval_file if config.eval_file is not None else config.dataset
            eval_table = load_table(source, config.dataset_config, config.eval_split or "validation", "eval_file")
        return [encode_task(None, config.task, train_table, eval_table, config.max_train_rows, config, tokenizer)]
    parts = []
    for n, entry in enumerate(config.tasks):
        train_table = load_table(entry.train_file, field=f"tasks.{n}.train_file")
        eval_table = None if entry.eval_file is None else load_table(entry.eval_file, field=f"tasks.{n}.eval_file")
        limit = entry.max_train_rows if entry.max_train_rows is not None else config.max_train_rows
        parts.append(encode_task(entry.name, entry.task, train_table, eval_table, limit, config, tokenizer))
    return parts


def encode_task(
    name,
    spec: TaskSpec,
    train_table: Table,
    eval_table: Table | None,
    limit: int | None,
    config: TrainConfig,
    tokenizer,
) -> TaskExamples:
    names = resolve_label_names(spec, train_table)  # from every row, before any sampling
    behaviour = registry.task_type(config.task_type).require_behaviour("softprompt train")
    rows = RowTokenizer(tokenizer, spec, names, behaviour.label_words)
    train = rows.encode_table(sample_rows(train_table, limit, config.seed))
    evaluation = None if eval_table is None else rows.encode_table(eval_table)
    selection = None
    if config.validation_fraction > 0:
        train, selection = stratified_split(train, config.validation_fraction, config.seed)
    return TaskExamples(name, rows, train, selection, evaluation)


def epoch_examples(examples: list[Example], config: TrainConfig, epoch: int) -> list[Example]:
    """The rows of one epoch: all of them, plus (balance_classes) seeded repeats of the smaller classes of each task."""
    return balanced(examples, config.seed * 100_003 + epoch) if config.balance_classes else examples


def report_truncation(parts: list[TaskExamples]) -> None:
    """Say how many rows of each split lost text to max_length."""
    for part in parts:
        for name, examples in (("train", part.train), ("validation", part.selection), ("eval", part.evaluation)):
            if examples:
                cut = sum(e.truncated for e in examples)
                if cut:
                    where = f"{part.name} {name}" if part.name else name
                    print(f"{where}: {cut} of {len(examples)} examples had their text truncated to fit max_length.")
