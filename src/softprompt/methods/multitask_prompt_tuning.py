"""Multitask prompt tuning (Wang et al. 2023): a shared prompt times a low-rank matrix per task.

The prompt of task t is `shared [P, H] * (cols[t] [P, r] @ rows[t] [r, H])` (elementwise): one table
shared by all tasks, and a rank-r correction each. Rows pick their task with `task_ids`; each task's
prompt then enters the model like prompt tuning's. A target task starts from a source adapter trained
on several tasks: the mean of its tasks, one of them, or only its shared prompt (PEFT's inits).
The adapter file holds the shared table and the task factors (PEFT's tensor names), not one table.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .. import adapter_io, registry
from ..config import ConfigError, PeftType, PromptLearningConfig, enum_choice, positive_int_or_none
from ..errors import AdapterError
from .base import ModelShape
from .prompt_tuning import PromptEmbedding, PromptTuningConfig

SOURCE_INITS = ("AVERAGE_SOURCE_TASKS", "EXACT_SOURCE_TASK", "ONLY_SOURCE_SHARED")


class MultitaskPromptTuningInit(str, enum.Enum):
    TEXT = "TEXT"  # the shared prompt from an init text's token embeddings
    RANDOM = "RANDOM"
    AVERAGE_SOURCE_TASKS = "AVERAGE_SOURCE_TASKS"  # a source adapter's shared prompt and its tasks' mean factors
    EXACT_SOURCE_TASK = "EXACT_SOURCE_TASK"  # ... and the factors of one of its tasks (prompt_tuning_init_task)
    ONLY_SOURCE_SHARED = "ONLY_SOURCE_SHARED"  # ... its shared prompt only; the factors start fresh


@dataclass
class MultitaskPromptTuningConfig(PromptTuningConfig):
    """Multitask prompt tuning: `num_tasks` prompts sharing one table, each with a rank-`num_ranks` factor."""

    peft_type = PeftType.MULTITASK_PROMPT_TUNING

    prompt_tuning_init: str = MultitaskPromptTuningInit.RANDOM
    """TEXT, RANDOM, or from a source adapter: AVERAGE_SOURCE_TASKS, EXACT_SOURCE_TASK, ONLY_SOURCE_SHARED."""
    prompt_tuning_init_state_dict_path: str | None = None
    """The source adapter's adapter_model.safetensors (or its folder), for the source inits."""
    prompt_tuning_init_task: int | None = 0
    """The source task EXACT_SOURCE_TASK starts from."""
    num_ranks: int | None = 1
    """Rank of each task's factor."""
    num_tasks: int | None = 1
    """How many tasks (task ids 0 .. num_tasks-1)."""

    def __post_init__(self) -> None:
        PromptLearningConfig.__post_init__(self)  # prompt tuning's own init check knows fewer inits
        enum_choice(self, "prompt_tuning_init", MultitaskPromptTuningInit)
        positive_int_or_none(self, "num_ranks")
        positive_int_or_none(self, "num_tasks")
        if self.prompt_tuning_init == "TEXT" and not (self.prompt_tuning_init_text or "").strip():
            raise ConfigError("prompt_tuning_init='TEXT' needs prompt_tuning_init_text, e.g. 'Classify the tweet:'.")
        if self.prompt_tuning_init in SOURCE_INITS and not self.prompt_tuning_init_state_dict_path:
            raise ConfigError(
                f"prompt_tuning_init={self.prompt_tuning_init!r} starts from a source adapter: set "
                "prompt_tuning_init_state_dict_path to its adapter_model.safetensors (or its folder)."
            )


class MultitaskPromptEmbedding(PromptEmbedding):
    """shared [P, H], prefix_task_cols [T, P, r], prefix_task_rows [T, r, H] -> task t's table [P, H]
    (P = 2 * num_virtual_tokens on an encoder-decoder: the encoder's rows, then the decoder's)."""

    collapses = False  # the table depends on the task: the file holds the shared table and every task's factors

    def __init__(self, config: MultitaskPromptTuningConfig, shape: ModelShape, base_model: nn.Module):
        # On an encoder-decoder, PEFT's table has 2P rows: P before the encoder's input, P before the decoder's.
        virtual = config.num_virtual_tokens * (2 if shape.encoder_decoder else 1)
        super().__init__(config, shape, base_model, virtual)  # the shared table: TEXT or RANDOM as prompt tuning
        tasks, ranks = config.num_tasks or 1, config.num_ranks or 1
        self.prefix_task_cols = nn.Parameter(torch.normal(0.0, 0.02, size=(tasks, virtual, ranks)))
        self.prefix_task_rows = nn.Parameter(torch.normal(0.0, 0.02, size=(tasks, ranks, shape.hidden_size)))
        if base_model is not None and config.prompt_tuning_init in SOURCE_INITS:
            self.load_source(config)

    @property
    def num_tasks(self) -> int:
        return self.prefix_task_cols.shape[0]

    def load_source(self, config: MultitaskPromptTuningConfig) -> None:
        path = Path(config.prompt_tuning_init_state_dict_path)
        if not path.exists():
            raise AdapterError(
                f"prompt_tuning_init_state_dict_path: the source adapter {path} does not exist. Train the source "
                "tasks first "
                "(configs/transfer/mpt_source.yaml), or point to its adapter folder."
            )
        source = adapter_io.read_tensors(path / adapter_io.WEIGHTS_NAME if path.is_dir() else path)
        missing = {"prompt_embeddings", "prefix_task_cols", "prefix_task_rows"} - set(source)
        if missing:
            raise AdapterError(f"{path} is not a multitask prompt tuning adapter: it lacks {sorted(missing)}.")
        cols, rows = source["prefix_task_cols"], source["prefix_task_rows"]
        if config.prompt_tuning_init == "EXACT_SOURCE_TASK":
            task = config.prompt_tuning_init_task or 0
            if not 0 <= task < cols.shape[0]:
                raise ConfigError(
                    f"prompt_tuning_init_task={task}, but the source adapter has {cols.shape[0]} tasks "
                    f"(0..{cols.shape[0] - 1})."
                )
            cols, rows = cols[task : task + 1], rows[task : task + 1]
        else:
            cols, rows = cols.mean(0, keepdim=True), rows.mean(0, keepdim=True)
        state = {"embedding.weight": source["prompt_embeddings"]}
        if config.prompt_tuning_init != "ONLY_SOURCE_SHARED":  # every target task starts from the source factors
            state.update(
                prefix_task_cols=cols.expand_as(self.prefix_task_cols).clone(),
                prefix_task_rows=rows.expand_as(self.prefix_task_rows).clone(),
            )
        try:
            self.load_state_dict(state, strict=False)
        except RuntimeError as error:
            raise AdapterError(f"The source adapter {path} does not fit this prompt: {error}") from error

    def forward(self, task: int = 0) -> torch.Tensor:
        correction = self.prefix_task_cols[task] @ self.prefix_task_rows[task]  # [P, r] @ [r, H] -> [P, H]
        return self.embedding.weight * correction  # [P, H]

    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        """What the adapter file holds (PEFT's names)."""
        return {
            "prompt_embeddings": self.embedding.weight,
            "prefix_task_cols": self.prefix_task_cols,
            "prefix_task_rows": self.prefix_task_rows,
        }

    @classmethod
    def from_adapter_tensors(
        cls, config, shape: ModelShape, tensors: dict[str, torch.Tensor]
    ) -> MultitaskPromptEmbedding:
        source = cls(config, shape, None)
        source.load_state_dict(
            {
                "embedding.weight": tensors["prompt_embeddings"],
                "prefix_task_cols": tensors["prefix_task_cols"],
                "prefix_task_rows": tensors["prefix_task_rows"],
            }
        )
        return source


registry.register_method(
    PeftType.MULTITASK_PROMPT_TUNING,
    MultitaskPromptTuningConfig,
    MultitaskPromptEmbedding,
    aliases=("multitask_prompt_tuning", "mpt"),
)
