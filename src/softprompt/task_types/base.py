"""What `softprompt train`, evaluation and the Predictor ask of a task type: how its rows are batched and
trained on, and how it turns rows into class scores. A task type that classifies templated rows implements
`TaskBehaviour` and passes it to `registry.register_task_type`; the loop, evaluation and the Predictor see
these methods only. (A task type without one is used through the Python API only.)
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..data import Example, RowTokenizer


class TaskBehaviour:
    """How a task type trains on and classifies templated rows. Built per training run from its rows."""

    label_words: ClassVar[bool] = True
    """True: rows end with the class's label words (the model writes them); False: a head picks the class."""
    mixes_adapters: ClassVar[bool] = False
    """True: one batch may mix adapters (and several tasks' rows) when classifying."""
    generates: ClassVar[bool] = False
    """True: the model can also classify by generating the label (eval_method: generation)."""

    def __init__(self, examples: list[Example] | None = None):
        self.examples = examples or []  # the training rows

    @staticmethod
    def model_options(rows: RowTokenizer) -> dict:
        """What loading the base model for this task needs (a classifier: its class count and names)."""
        return {}

    def collate(self, examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
        """A training batch of the model's inputs, labels included."""
        raise NotImplementedError

    def loss(self, model, batch: dict) -> torch.Tensor:
        """The mean training loss of a batch from `collate`."""
        raise NotImplementedError

    @staticmethod
    def weight(batch: dict) -> torch.Tensor:
        """How many predictions the batch's mean loss averages over (for the epoch's mean)."""
        raise NotImplementedError

    @classmethod
    def class_log_scores(
        cls,
        model,
        rows: RowTokenizer,
        examples: list[Example],
        batch_size: int = 16,
        progress: bool = True,
        adapter_name: str | None = None,
    ) -> torch.Tensor:
        """[N, K]: each class's log-score for each row (K = the task's classes)."""
        raise NotImplementedError

    @staticmethod
    def eval_loss(scores: torch.Tensor, gold: list[int], rows: RowTokenizer) -> float:
        """The evaluation loss over the gold classes, from `class_log_scores`."""
        raise NotImplementedError

    @staticmethod
    def mixed_class_log_scores(
        model,
        examples: list[Example],
        rows_of: list[RowTokenizer],
        names: list[str],
        pad_id: int,
        batch_size: int = 16,
        progress: bool = False,
    ) -> list[torch.Tensor]:
        """For a task type that `mixes_adapters`: class log-scores of rows that each have their own adapter and task
        (`names[i]`, `rows_of[i]`), in shared batches: a list of [K_i]."""
        raise NotImplementedError

    @staticmethod
    def classify_by_generation(
        model,
        rows: RowTokenizer,
        examples: list[Example],
        batch_size: int = 16,
        progress: bool = True,
        adapter_name: str | None = None,
    ) -> tuple[list[int], list[str]]:
        """For a task type that `generates`: each row's class from its greedy generation (-1: no label), and the
        texts."""
        raise NotImplementedError
