"""Batches of tokenized rows: left padding (decoders read the last tokens), length-grouped training order,
longest-first evaluation order."""

from __future__ import annotations

import random

import torch

from .templates import Example


def pad_left(sequences: list[list[int]], pad_value: int) -> torch.Tensor:
    width = max(len(s) for s in sequences)
    return torch.tensor([[pad_value] * (width - len(s)) + s for s in sequences], dtype=torch.long)


def collate_training(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded to the longest row of the batch: input_ids, attention_mask [B, T]; labels -100 off-target;
    task_ids [B] when the rows carry task ids (a multitask run)."""
    sequences = [e.prompt_ids + e.target_ids for e in examples]
    labels = [[-100] * len(e.prompt_ids) + e.target_ids for e in examples]
    batch = {
        "input_ids": pad_left(sequences, pad_id),
        "attention_mask": pad_left([[1] * len(s) for s in sequences], 0),
        "labels": pad_left(labels, -100),
    }
    tasks = row_task_ids(examples)
    if tasks is not None:
        batch["task_ids"] = torch.tensor(tasks, dtype=torch.long)
    return batch


def row_task_ids(examples: list[Example]) -> list[int] | None:
    """The rows' task ids for `task_ids=`, or None when no row carries one (the adapter's only task)."""
    if all(e.task is None for e in examples):
        return None
    return [e.task or 0 for e in examples]


def length_grouped_batches(lengths: list[int], batch_size: int, seed: int, group: int = 50) -> list[list[int]]:
    """Shuffled batches of similar length: shuffle, sort within groups of `group` batches, shuffle batch order."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches = []
    span = batch_size * group
    for start in range(0, len(order), span):
        chunk = sorted(order[start : start + span], key=lambda i: -lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Evaluation batches, longest first, so padding is minimal; callers restore the order."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
