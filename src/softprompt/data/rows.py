"""Choosing rows: a seeded sample, a stratified hold-out split, and class balancing by repetition."""

from __future__ import annotations

import random

from .tables import Table
from .templates import Example


def sample_rows(table: Table, limit: int | None, seed: int) -> Table:
    """A seeded sample of `limit` rows, in the table's order (all rows when it has no more)."""
    if limit is None or len(table.rows) <= limit:
        return table
    keep = sorted(random.Random(seed).sample(range(len(table.rows)), limit))
    return Table([table.rows[i] for i in keep], f"{table.origin} (a sample of {limit} rows)", table.class_names)


def groups_by_label(examples: list[Example]) -> list[list[Example]]:
    """The examples of each label, in label order; each group keeps the examples' order."""
    groups: dict[int, list[Example]] = {}
    for example in examples:
        groups.setdefault(example.label, []).append(example)
    return [groups[label] for label in sorted(groups)]


def groups_by_task(examples: list[Example]) -> list[list[Example]]:
    """The examples of each task id, in task order (one group when the rows carry none)."""
    groups: dict[int, list[Example]] = {}
    for example in examples:
        groups.setdefault(-1 if example.task is None else example.task, []).append(example)
    return [groups[task] for task in sorted(groups)]


def stratified_split(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """-> (kept, held out): about `fraction` of each label's rows held out (at least one), seeded."""
    rng = random.Random(seed)
    keep, held = [], []
    for group in groups_by_label(examples):
        rng.shuffle(group)
        n = max(1, round(len(group) * fraction))
        held += group[:n]
        keep += group[n:]
    return keep, held


def balanced(examples: list[Example], seed: int) -> list[Example]:
    """Every row, plus seeded repeats of the smaller classes of each task until each class has as many rows as
    its task's largest."""
    rng = random.Random(seed)
    rows = []
    for task_rows in groups_by_task(examples):
        groups = groups_by_label(task_rows)
        largest = max(len(group) for group in groups)
        for group in groups:
            rows += group + [rng.choice(group) for _ in range(largest - len(group))]
    return rows
