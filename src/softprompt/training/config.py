"""The training run's settings: `TrainConfig` and its parts, read from YAML with the config file's folder as the
base of its relative paths (config_paths.py), overridden by `--field value` on the command line. The field
docstrings below are the documentation: `softprompt train --help` prints them (config_help.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .. import registry
from ..base_models import DEFAULT_MODEL, DTYPES
from ..config import PromptLearningConfig
from ..data import TaskSpec
from ..errors import ConfigError
from .config_paths import paths_from, set_dotted


def plain(config) -> dict:
    """A config dataclass as nested plain data, its data sources as `in_memory` shows them."""
    data = {}
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        if item.name in ("train_file", "eval_file"):
            value = in_memory(value)
        elif dataclasses.is_dataclass(value):
            value = plain(value)
        elif isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            value = [plain(entry) for entry in value]
        data[item.name] = value
    return data


def in_memory(source):
    """A data source as run_config.yaml shows it: paths and addresses as they are, in-memory tables described."""
    if source is None or isinstance(source, (str, os.PathLike)):
        return source
    return f"<{type(source).__name__} of {len(source)} rows, given in Python>"


def task_spec(data: dict, where: str) -> TaskSpec:
    """A TaskSpec from a config's mapping; unknown fields are named."""
    known = {f.name for f in dataclasses.fields(TaskSpec)}
    unknown = sorted(set(data) - known)
    if "task_type" in unknown:
        raise ConfigError(f"{where}: task_type is the run's (the top-level task_type), not a task's.")
    if unknown:
        raise ConfigError(f"{where}: unknown fields {unknown}. Known fields: {sorted(known)}.")
    return TaskSpec(**data)


@dataclass
class CalibrationConfig:
    """After training, the class prior on unlabelled texts, stored with the adapter
    (softprompt.inference.calibration)."""

    texts_file: str
    """Unlabelled inputs of the task: a local table or hf://datasets/... files."""
    column: str | None = None
    """Their text column; None: the task's first text column."""
    limit: int | None = 300
    """A seeded sample of this many rows; None: every row."""


@dataclass
class TaskConfig:
    """One task of a run over several tasks (`tasks:`): its data and how its rows are shown. The i-th task's rows
    run with task id i (`task_ids` per row), each task scored over its own labels."""

    name: str
    """The task's name (`--task NAME` picks it at eval/predict)."""
    train_file: str
    """Local file, or files on the Hub (hf://datasets/...), as the top-level train_file."""
    eval_file: str | None = None
    """Labelled evaluation data of this task, as the top-level eval_file."""
    max_train_rows: int | None = None
    """A seeded sample of this many training rows; None: the run's max_train_rows (default: all)."""
    task: TaskSpec = field(default_factory=TaskSpec)
    """The task's columns, labels and template (task.* fields)."""

    @classmethod
    def from_entry(cls, entry, position: int) -> TaskConfig:
        where = f"tasks[{position}]"
        if isinstance(entry, cls):
            entry = dataclasses.asdict(entry)
        if not isinstance(entry, dict):
            raise ConfigError(
                f"{where} must be a mapping of {{name, train_file, eval_file, max_train_rows, task}}, got {entry!r}."
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(entry) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown fields {unknown}. Known fields: {sorted(known)}.")
        if not isinstance(entry.get("name"), str) or not entry["name"] or entry.get("train_file") is None:
            raise ConfigError(f"{where} needs a name and a train_file, got {entry!r}.")
        spec = dict(entry.get("task") or {})
        if spec.get("name", entry["name"]) != entry["name"] or spec.get("task_id", position) != position:
            raise ConfigError(
                f"{where}: the task's name and task id come from the list (name {entry['name']!r}, task id {position})."
            )
        spec.update(name=entry["name"], task_id=position)
        return cls(**{**entry, "task": task_spec(spec, f"{where}.task")})


@dataclass
class TrainConfig:
    """A training run. Every field can be set in YAML or overridden on the command line (--field value)."""

    model: str = DEFAULT_MODEL
    """Base model: local folder, hub id, or a built-in offline name (smollm2-135m, all-minilm-l6-v2)."""
    method: str = "prompt_tuning"
    """The prompt method, by name or peft_type (softprompt train --help lists the registered ones)."""
    method_options: dict = field(default_factory=lambda: {"num_virtual_tokens": 20})
    """Fields of the method's config, PEFT names (num_virtual_tokens, prompt_tuning_init, encoder_hidden_size...)."""
    task_type: str = "CAUSAL_LM"
    """CAUSAL_LM: the model writes each class's label words (label scoring); SEQ_CLS: a classification head trained
    with the prompt picks the class (load the model with a head)."""

    train_file: str | None = None
    """Training data: a local CSV/TSV/JSON/JSONL/Parquet file, or files on the Hugging Face Hub by datasets' address
    hf://datasets/OWNER/NAME@REVISION/PATH (globs allowed; RAFT: its Parquet export, see configs/); or dataset +
    train_split. From Python also a datasets.Dataset, a pandas DataFrame or a list of row dicts."""
    eval_file: str | None = None
    """Labelled evaluation data (as train_file), scored and reported every epoch."""
    dataset: str | None = None
    """Hub dataset id of a dataset without a loading script, for users online (load_dataset(dataset,
    dataset_config))."""
    dataset_config: str | None = None
    """The Hub dataset's configuration (e.g. twitter_complaints)."""
    train_split: str = "train"
    """The Hub dataset's training split."""
    eval_split: str | None = None
    """The Hub dataset's evaluation split; None: no evaluation data from the dataset."""
    task: TaskSpec = field(default_factory=TaskSpec)
    """The task's columns, labels, verbalizer, template and length budget (task.* fields)."""
    tasks: list | None = None
    """Several tasks in one run, for a method with a prompt per task (multitask_prompt_tuning): a list of
    {name, train_file, eval_file, max_train_rows, task: {TaskSpec fields}} in place of train_file, eval_file and
    task. The i-th task's rows run with task id i; each task is scored over its own labels; eval/predict then
    pick a task with --task NAME. Override a task's field with --tasks.I.FIELD (e.g. --tasks.0.train_file PATH)."""
    max_train_rows: int | None = None
    """Train on a seeded sample of this many rows (of each task); None: all rows. For quick runs and subsets of
    big sets."""
    validation_fraction: float = 0.0
    """Hold out this share of the training rows (stratified) to pick the best epoch, instead of the eval data."""
    balance_classes: bool = False
    """Each epoch, repeat random rows of the smaller classes until every class has as many rows as the largest,
    so a few-shot prompt does not learn to always answer the majority label."""

    epochs: int = 10
    """Passes over the training rows."""
    lr: float | None = None
    """Peak learning rate; None: the method's default (3e-2 prompt and p-tuning, 1e-2 prefix tuning, 1e-3 CPT, 0.3 ULPT;
    DePT's offsets take method_options.offset_learning_rate)."""
    batch_size: int = 8
    """Rows per step (per process)."""
    gradient_accumulation_steps: int = 1
    """Steps whose gradients add up before each optimizer update."""
    warmup_ratio: float = 0.0
    """Share of the updates over which the learning rate rises linearly from 0; it then falls linearly to 0."""
    weight_decay: float = 0.0
    """AdamW's weight decay."""
    max_grad_norm: float = 1.0
    """Clip the gradient to this norm (0: no clipping)."""
    seed: int = 42
    """Seeds the prompt's initialisation, the row order, sampling and splits: a run is a function of its config."""
    eval_method: str = "scoring"
    """scoring (label log-likelihood, one forward) or generation (greedy text mapped to a label)."""
    eval_batch_size: int = 16
    """Rows per evaluation batch."""
    best_metric: str = "last"
    """last: keep the last epoch's adapter (eval data only reported). accuracy, macro_f1 or loss: keep the best
    epoch's by that metric on the validation_fraction rows (held out of the training rows); without them, on the eval
    data, whose figures then no longer measure an unseen set."""
    early_stopping_patience: int | None = None
    """Stop after this many epochs without a better selection metric."""
    output_dir: str = "runs/demo"
    """Where the run writes run_config.yaml, metrics.jsonl/png, checkpoint/ and adapter/."""
    progress: bool = True
    """Show progress bars."""
    device: str = "auto"
    """auto: a GPU when there is one (Accelerate's choice; pick one with CUDA_VISIBLE_DEVICES), else the CPU; cpu."""
    dtype: str = "auto"
    """The base model's weights: auto (as saved), float32, bfloat16 or float16 (half the memory; on a GPU)."""
    mixed_precision: str = "no"
    """no, bf16 or fp16: the forward and backward passes in 16-bit (Accelerate's autocast); the prompt stays fp32."""
    gradient_checkpointing: bool = False
    """Recompute the frozen layers' activations in the backward pass: far less memory, about a third more compute."""
    calibration: CalibrationConfig | None = None
    """After training, store the class prior on unlabelled texts with the adapter (calibration.* fields); predict,
    eval and serve then divide the class probabilities by it."""

    def __post_init__(self) -> None:
        if isinstance(self.task, dict):
            task = dict(self.task)
            if "task_type" in task:  # where configs before 0.2 set it
                self.task_type = task.pop("task_type")
            self.task = task_spec(task, "task")
        if isinstance(self.calibration, dict):
            unknown = sorted(set(self.calibration) - {f.name for f in dataclasses.fields(CalibrationConfig)})
            if unknown or "texts_file" not in self.calibration:
                raise ConfigError("Invalid training config: calibration takes {texts_file (required), column, limit}.")
            self.calibration = CalibrationConfig(**self.calibration)
        if self.tasks is not None:
            if not isinstance(self.tasks, list) or not self.tasks:
                raise ConfigError(
                    f"Invalid training config: tasks must be a non-empty list of tasks, got {self.tasks!r}."
                )
            self.tasks = [TaskConfig.from_entry(entry, n) for n, entry in enumerate(self.tasks)]
        if self.lr is None:
            self.lr = registry.method(self.method).config_class.default_learning_rate
        problems = self.problems()
        if problems:
            raise ConfigError("Invalid training config: " + "; ".join(problems) + ".")
        self.method_config()  # validates method and options now, not after loading the model

    def problems(self) -> list[str]:
        """What is wrong with the run's settings, each with its fix."""
        problems = []
        behaviour = registry.task_type(self.task_type).require_behaviour("softprompt train")
        if self.tasks:
            names = [t.name for t in self.tasks]
            if len(set(names)) != len(names):
                problems.append(f"task names must differ, got {names}")
            given = [
                name for name in ("train_file", "eval_file", "dataset", "eval_split") if getattr(self, name) is not None
            ]
            if given:
                problems.append(
                    f"tasks replaces {', '.join(given)}: set them per task (tasks[I].train_file, tasks[I].eval_file)"
                )
            if len(self.tasks) > 1 and self.calibration:
                problems.append("calibration stores one class prior: it is for runs of one task, not tasks")
            if not behaviour.mixes_adapters:
                problems.append(
                    f"tasks are trained by label scoring, rows of every task in one batch: task_type must be "
                    f"CAUSAL_LM, got {self.task_type}"
                )
        elif self.train_file is None and self.dataset is None:
            problems.append("give train_file (a local file or hf://datasets/... files), dataset (a hub id), or tasks")
        if self.max_train_rows is not None and not (isinstance(self.max_train_rows, int) and self.max_train_rows >= 1):
            problems.append(f"max_train_rows must be a positive integer or null, got {self.max_train_rows!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.gradient_accumulation_steps < 1:
            problems.append("epochs, batch_size and gradient_accumulation_steps must be >= 1")
        if not self.lr > 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        if self.eval_method not in ("scoring", "generation"):
            problems.append(f"eval_method must be 'scoring' or 'generation', got {self.eval_method!r}")
        elif self.eval_method == "generation" and not behaviour.generates:
            problems.append(
                f"eval_method 'generation' needs a language model: a {self.task_type} head scores the classes"
            )
        if self.best_metric not in ("accuracy", "macro_f1", "loss", "last"):
            problems.append(f"best_metric must be accuracy, macro_f1, loss or last, got {self.best_metric!r}")
        elif self.best_metric == "last" and self.early_stopping_patience is not None:
            problems.append(
                "early_stopping_patience needs a best_metric to watch (accuracy, macro_f1 or loss), not last"
            )
        if not 0 <= self.validation_fraction < 1:
            problems.append(f"validation_fraction must be in [0, 1), got {self.validation_fraction}")
        choices = {"device": ("auto", "cpu"), "dtype": ("auto", *DTYPES), "mixed_precision": ("no", "bf16", "fp16")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                problems.append(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        return problems

    def method_config(self) -> PromptLearningConfig:
        """The method's config for this run (its options, the base model, the task type)."""
        config_class = registry.method(self.method).config_class
        known = {f.name for f in dataclasses.fields(config_class)}
        unknown = sorted(set(self.method_options) - known)
        if unknown:
            raise ConfigError(
                f"method_options {unknown} are not fields of {config_class.__name__}; known: {sorted(known)}."
            )
        options = dict(self.method_options)
        if self.tasks:  # a prompt per task: as many as the run has (a method with num_tasks), else one task only
            if "num_tasks" in known:
                options.setdefault("num_tasks", len(self.tasks))
                if options["num_tasks"] != len(self.tasks):
                    raise ConfigError(
                        f"method_options.num_tasks is {options['num_tasks']} but tasks lists {len(self.tasks)}: "
                        "leave num_tasks out (it follows tasks)."
                    )
            elif len(self.tasks) > 1:
                raise ConfigError(
                    f"{self.method} has one prompt for every row; training {len(self.tasks)} tasks at once needs a "
                    "prompt per task: method multitask_prompt_tuning."
                )
        return config_class(**{"task_type": self.task_type, **options})  # base_model_name_or_path: the loaded model's

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, overrides: dict | None = None) -> TrainConfig:
        """A config file; its relative paths are read from the file's folder (overrides: from the current one)."""
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise ConfigError(f"Could not read config {path}: {error}") from error
        if not isinstance(data, dict):
            raise ConfigError(f"Config {path} must be a YAML mapping of fields, found {type(data).__name__}.")
        return cls.from_dict(paths_from(Path(path).absolute().parent, data), overrides, origin=str(path))

    @classmethod
    def from_dict(cls, data: dict, overrides: dict | None = None, origin: str = "config") -> TrainConfig:
        data = json.loads(json.dumps(data))  # deep copy
        for dotted, value in (overrides or {}).items():
            set_dotted(data, dotted, value, origin)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{origin}: unknown fields {unknown}. Known fields: {sorted(known)}.")
        return cls(**data)

    def to_dict(self) -> dict:
        """The config as plain data (run_config.yaml); in-memory data (a DataFrame, ...) are described, not copied."""
        return plain(self)
