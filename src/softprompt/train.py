"""One readable training loop: AdamW + linear warmup schedule, Accelerate, per-epoch metrics and checkpoints.

Output folder:
  run_config.yaml   the resolved config of the run
  metrics.jsonl     one line per epoch; metrics.png plots it
  checkpoint/       the last finished epoch: adapter + full prompt source + optimizer + scheduler + state
  adapter/          the best adapter so far by the selection metric (inference files + task.json)
Every epoch is seeded from (seed, epoch), so a run resumed from a checkpoint ends with the same
adapter as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from . import adapters
from .data import DataError, Encoder, Example, Table, TaskSpec, is_remote, length_grouped_batches, load_table, resolve_label_names
from .evaluate import classification_metrics, classify_by_generation
from .methods import config_class_for
from .model import PeftModel, get_peft_model
from .models import DEFAULT_MODEL, load_base_model, load_tokenizer
from .task import write_task
from .tasks import TASKS, task_kind

STATE_NAME = "trainer_state.json"
OPTIMIZER_NAME = "optimizer.safetensors"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class TaskData:
    """One task of a run over several tasks (`tasks:`): its data and how its rows are shown. The i-th task's rows
    run with task id i (`task_ids` per row), each task scored over its own labels."""

    name: str
    train_file: str
    """Local file, or files on the Hub (hf://datasets/...), as the top-level train_file."""
    eval_file: str | None = None
    max_train_rows: int | None = None
    """A seeded sample of this many training rows; None: the run's max_train_rows (default: all)."""
    task: TaskSpec = field(default_factory=TaskSpec)

    @classmethod
    def from_entry(cls, entry, position: int) -> "TaskData":
        where = f"tasks[{position}]"
        if isinstance(entry, cls):
            entry = dataclasses.asdict(entry)
        if not isinstance(entry, dict):
            raise ValueError(f"{where} must be a mapping of {{name, train_file, eval_file, max_train_rows, task}}, got {entry!r}.")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(entry) - known)
        if unknown:
            raise ValueError(f"{where}: unknown fields {unknown}. Known fields: {sorted(known)}.")
        if not isinstance(entry.get("name"), str) or not entry["name"] or not entry.get("train_file"):
            raise ValueError(f"{where} needs a name and a train_file, got {entry!r}.")
        spec = dict(entry.get("task") or {})
        if spec.get("name", entry["name"]) != entry["name"] or spec.get("task_id", position) != position:
            raise ValueError(f"{where}: the task's name and task id come from the list (name {entry['name']!r}, task id {position}).")
        spec.update(name=entry["name"], task_id=position)
        return cls(**{**entry, "task": TaskSpec(**spec)})


@dataclass
class TrainConfig:
    """A training run. Every field can be set in YAML or overridden on the command line (--field value)."""

    model: str = DEFAULT_MODEL
    """Base causal LM: local folder, hub id, or the offline default smollm2-135m."""
    method: str = "prompt_tuning"
    """prompt_tuning, p_tuning or prefix_tuning."""
    method_options: dict = field(default_factory=lambda: {"num_virtual_tokens": 20})
    """Fields of the method's config, PEFT names (num_virtual_tokens, prompt_tuning_init, encoder_hidden_size...)."""

    train_file: str | None = None
    """Training data: a local CSV/TSV/JSON/JSONL/Parquet file, or files on the Hugging Face Hub by datasets' address
    hf://datasets/OWNER/NAME@REVISION/PATH (globs allowed; RAFT: its Parquet export, see configs/); or dataset + train_split."""
    eval_file: str | None = None
    """Local labelled evaluation data, reported every epoch."""
    dataset: str | None = None
    """Hub dataset id of a dataset without a loading script, for users online (load_dataset(dataset, dataset_config))."""
    dataset_config: str | None = None
    train_split: str = "train"
    eval_split: str | None = None
    task: TaskSpec = field(default_factory=TaskSpec)
    """text_columns, label_column, label_names, verbalizer, template, max_length."""
    tasks: list | None = None
    """Several tasks in one run, for a method with a prompt per task (multitask_prompt_tuning): a list of
    {name, train_file, eval_file, max_train_rows, task: {TaskSpec fields}} in place of train_file, eval_file and
    task. The i-th task's rows run with task id i; each task is scored over its own labels; eval/predict then
    pick a task with --task NAME. Override a task's field with --tasks.I.FIELD (e.g. --tasks.0.train_file PATH)."""
    max_train_rows: int | None = None
    """Train on a seeded sample of this many rows (of each task); None: all rows. For quick runs and subsets of big sets."""
    validation_fraction: float = 0.0
    """Hold out this share of the training rows (stratified) to pick the best epoch, instead of the eval data."""
    balance_classes: bool = False
    """Each epoch, repeat random rows of the smaller classes until every class has as many rows as the largest,
    so a few-shot prompt does not learn to always answer the majority label."""

    epochs: int = 10
    lr: float | None = None
    """Peak learning rate; None: the method's default (3e-2 for prompt and p-tuning, 1e-2 for prefix tuning)."""
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 42
    eval_method: str = "scoring"
    """scoring (label log-likelihood, one forward) or generation (greedy text mapped to a label)."""
    eval_batch_size: int = 16
    best_metric: str = "macro_f1"
    """accuracy, macro_f1 or loss: which selects the best epoch (on the validation_fraction rows if any, else the
    eval data); last: keep the last epoch's adapter, the eval data only reported."""
    early_stopping_patience: int | None = None
    """Stop after this many epochs without a better selection metric."""
    output_dir: str = "runs/demo"
    progress: bool = True
    calibration: dict | None = None
    """{texts_file, column, limit}: after training, store the class prior on these unlabelled texts with the adapter
    (softprompt.calibration); predict, eval and serve then divide the class probabilities by it."""

    def __post_init__(self) -> None:
        if isinstance(self.task, dict):
            self.task = TaskSpec(**self.task)
        if self.tasks is not None:
            if not isinstance(self.tasks, list) or not self.tasks:
                raise ValueError(f"Invalid training config: tasks must be a non-empty list of tasks, got {self.tasks!r}.")
            self.tasks = [TaskData.from_entry(entry, n) for n, entry in enumerate(self.tasks)]
        problems = []
        if self.tasks:
            names = [t.name for t in self.tasks]
            if len(set(names)) != len(names):
                problems.append(f"task names must differ, got {names}")
            given = [name for name in ("train_file", "eval_file", "dataset", "eval_split") if getattr(self, name)]
            if given:
                problems.append(f"tasks replaces {', '.join(given)}: set them per task (tasks[I].train_file, tasks[I].eval_file)")
            if len(self.tasks) > 1 and getattr(self, "calibration", None):
                problems.append("calibration stores one class prior: it is for runs of one task, not tasks")
            kinds = {t.task.task_type for t in self.tasks} | {self.task.task_type}
            if kinds != {"CAUSAL_LM"}:
                problems.append(f"tasks are trained by label scoring: every task's task_type must be CAUSAL_LM, got {sorted(kinds)}")
        elif self.train_file is None and self.dataset is None:
            problems.append("give train_file (a local file or hf://datasets/... files), dataset (a hub id), or tasks")
        if self.max_train_rows is not None and not (isinstance(self.max_train_rows, int) and self.max_train_rows >= 1):
            problems.append(f"max_train_rows must be a positive integer or null, got {self.max_train_rows!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.gradient_accumulation_steps < 1:
            problems.append("epochs, batch_size and gradient_accumulation_steps must be >= 1")
        if self.lr is None:
            self.lr = config_class_for(self.method).default_learning_rate
        if not self.lr > 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        if self.eval_method not in ("scoring", "generation"):
            problems.append(f"eval_method must be 'scoring' or 'generation', got {self.eval_method!r}")
        if self.task.task_type not in TASKS:
            problems.append(f"task.task_type must be CAUSAL_LM or SEQ_CLS, got {self.task.task_type!r}")
        elif self.eval_method == "generation" and self.task.task_type == "SEQ_CLS":
            problems.append("eval_method 'generation' needs a language model: a SEQ_CLS head scores the classes")
        if self.best_metric not in ("accuracy", "macro_f1", "loss", "last"):
            problems.append(f"best_metric must be accuracy, macro_f1, loss or last, got {self.best_metric!r}")
        elif self.best_metric == "last" and self.early_stopping_patience is not None:
            problems.append("early_stopping_patience needs a best_metric to watch (accuracy, macro_f1 or loss), not last")
        if not 0 <= self.validation_fraction < 1:
            problems.append(f"validation_fraction must be in [0, 1), got {self.validation_fraction}")
        if self.calibration is not None and (not isinstance(self.calibration, dict) or "texts_file" not in self.calibration
                                             or set(self.calibration) - {"texts_file", "column", "limit"}):
            problems.append("calibration takes {texts_file (required), column, limit}")
        if problems:
            raise ValueError("Invalid training config: " + "; ".join(problems) + ".")
        self.method_config()  # validates method and options now, not after loading the model

    def method_config(self):
        config_class = config_class_for(self.method)
        known = {f.name for f in dataclasses.fields(config_class)}
        unknown = sorted(set(self.method_options) - known)
        if unknown:
            raise ValueError(f"method_options {unknown} are not fields of {config_class.__name__}; known: {sorted(known)}.")
        options = dict(self.method_options)
        if self.tasks:  # a prompt per task: as many as the run has (a method with num_tasks), else one task only
            if "num_tasks" in known:
                options.setdefault("num_tasks", len(self.tasks))
                if options["num_tasks"] != len(self.tasks):
                    raise ValueError(f"method_options.num_tasks is {options['num_tasks']} but tasks lists {len(self.tasks)}: "
                                     "leave num_tasks out (it follows tasks).")
            elif len(self.tasks) > 1:
                raise ValueError(f"{self.method} has one prompt for every row; training {len(self.tasks)} tasks at once needs a "
                                 "prompt per task: method multitask_prompt_tuning.")
        return config_class(**{"base_model_name_or_path": self.model, "task_type": self.task.task_type, **options})

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, overrides: dict | None = None) -> "TrainConfig":
        """A config file; its relative paths are read from the file's folder (overrides: from the current one)."""
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise ValueError(f"Could not read config {path}: {error}") from error
        if not isinstance(data, dict):
            raise ValueError(f"Config {path} must be a YAML mapping of fields, found {type(data).__name__}.")
        return cls.from_dict(paths_from(Path(path).absolute().parent, data), overrides, origin=str(path))

    @classmethod
    def from_dict(cls, data: dict, overrides: dict | None = None, origin: str = "config") -> "TrainConfig":
        data = json.loads(json.dumps(data))  # deep copy
        for dotted, value in (overrides or {}).items():
            set_dotted(data, dotted, value, origin)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{origin}: unknown fields {unknown}. Known fields: {sorted(known)}.")
        return cls(**data)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def set_dotted(data: dict, dotted: str, value, origin: str = "config") -> None:
    """data["a"]["b"] = value for "a.b"; a number steps into a list ("tasks.0.train_file")."""
    keys = dotted.split(".")
    target = data
    for position, key in enumerate(keys):
        if isinstance(target, list):
            if not key.isdigit() or int(key) >= len(target):
                raise ValueError(f"{origin}: --{dotted}: {key!r} is not an index of a list of {len(target)} (0..{len(target) - 1}).")
            key = int(key)
        elif not isinstance(target, dict):
            raise ValueError(f"{origin}: --{dotted}: {'.'.join(keys[:position])} is {target!r}, not a mapping.")
        if position == len(keys) - 1:
            target[key] = value
        elif isinstance(target, dict):
            if target.get(key) is None:
                target[key] = {}
            target = target[key]
        else:
            target = target[key]


PATH_FIELDS = ("train_file", "eval_file", "output_dir")  # local paths (or, for data, hf://datasets/... addresses)
MAYBE_PATH_FIELDS = ("model",)  # a local folder, or a name (hub id, smollm2-135m)
METHOD_PATH_OPTIONS = ("prompt_tuning_init_state_dict_path",)  # method_options that name a file (a source adapter)
TASK_PATH_FIELDS = ("train_file", "eval_file")  # in each of tasks


def local_path(folder: Path, value):
    """A relative local path made absolute from `folder`; absolute paths, URLs (hf://...) and non-strings as given."""
    if not isinstance(value, str) or not value or is_remote(value) or Path(value).expanduser().is_absolute():
        return value
    return str((folder / value).resolve())


def paths_from(folder: Path, data: dict) -> dict:
    """The config's relative paths made absolute from `folder` (where the config file lies)."""
    data = dict(data)
    if isinstance(data.get("method_options"), dict):
        data["method_options"] = {key: local_path(folder, value) if key in METHOD_PATH_OPTIONS else value
                                  for key, value in data["method_options"].items()}
    if isinstance(data.get("tasks"), list):
        data["tasks"] = [{key: local_path(folder, value) if key in TASK_PATH_FIELDS else value for key, value in entry.items()}
                         if isinstance(entry, dict) else entry for entry in data["tasks"]]
    if isinstance(data.get("calibration"), dict) and data["calibration"].get("texts_file"):
        data["calibration"] = {**data["calibration"], "texts_file": local_path(folder, data["calibration"]["texts_file"])}
    for name in PATH_FIELDS + MAYBE_PATH_FIELDS:
        value = data.get(name)
        if not isinstance(value, str) or not value or is_remote(value) or Path(value).expanduser().is_absolute():
            continue
        candidate = folder / value
        if name in PATH_FIELDS or value.startswith(".") or candidate.exists():
            data[name] = str(candidate.resolve())
    return data


# ---- data ----------------------------------------------------------------------------------
@dataclass
class TaskRows:
    """One task's encoder and encoded rows: training, held-out selection rows (validation_fraction), evaluation."""

    name: str | None
    encoder: Encoder
    train: list[Example]
    selection: list[Example] | None
    evaluation: list[Example] | None


def load_task_data(config: TrainConfig, tokenizer):
    """-> (encoder, train examples, selection examples or None, eval examples or None) of a one-task config."""
    parts = load_tasks_data(config, tokenizer)
    if len(parts) > 1:
        raise ValueError(f"The config has {len(parts)} tasks: use load_tasks_data, one TaskRows per task.")
    return parts[0].encoder, parts[0].train, parts[0].selection, parts[0].evaluation


def load_tasks_data(config: TrainConfig, tokenizer) -> list[TaskRows]:
    """Each task's encoder and rows: the config's one task, or each of `tasks` (rows tagged with its task id)."""
    if not config.tasks:
        train_table = load_table(config.train_file or config.dataset, config.dataset_config, config.train_split, "train_file")
        eval_table = None
        if config.eval_file or config.eval_split:
            eval_table = load_table(config.eval_file or config.dataset, config.dataset_config, config.eval_split or "validation",
                                    "eval_file")
        return [encode_task(None, config.task, train_table, eval_table, config.max_train_rows, config, tokenizer)]
    parts = []
    for n, entry in enumerate(config.tasks):
        train_table = load_table(entry.train_file, field=f"tasks.{n}.train_file")
        eval_table = load_table(entry.eval_file, field=f"tasks.{n}.eval_file") if entry.eval_file else None
        limit = entry.max_train_rows if entry.max_train_rows is not None else config.max_train_rows
        parts.append(encode_task(entry.name, entry.task, train_table, eval_table, limit, config, tokenizer))
    return parts


def encode_task(name, spec: TaskSpec, train_table: Table, eval_table: Table | None, limit: int | None, config: TrainConfig,
                tokenizer) -> TaskRows:
    names = resolve_label_names(spec, train_table)  # from every row, before any sampling
    encoder = Encoder(tokenizer, spec, names)
    train = encoder.encode_table(sample_rows(train_table, limit, config.seed))
    evaluation = None if eval_table is None else encoder.encode_table(eval_table)
    selection = None
    if config.validation_fraction > 0:
        train, selection = stratified_split(train, config.validation_fraction, config.seed)
    return TaskRows(name, encoder, train, selection, evaluation)


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


def stratified_split(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    rng = random.Random(seed)
    keep, held = [], []
    for group in groups_by_label(examples):
        rng.shuffle(group)
        n = max(1, round(len(group) * fraction))
        held += group[:n]
        keep += group[n:]
    return keep, held


def groups_by_task(examples: list[Example]) -> list[list[Example]]:
    """The examples of each task id, in task order (one group when the rows carry none)."""
    groups: dict[int, list[Example]] = {}
    for example in examples:
        groups.setdefault(-1 if example.task is None else example.task, []).append(example)
    return [groups[task] for task in sorted(groups)]


def epoch_examples(examples: list[Example], config: TrainConfig, epoch: int) -> list[Example]:
    """The rows of one epoch: all of them, plus (balance_classes) seeded repeats of the smaller classes of each task."""
    if not config.balance_classes:
        return examples
    rng = random.Random(config.seed * 100_003 + epoch)
    rows = []
    for task_rows in groups_by_task(examples):
        groups = groups_by_label(task_rows)
        largest = max(len(group) for group in groups)
        for group in groups:
            rows += group + [rng.choice(group) for _ in range(largest - len(group))]
    return rows


# ---- checkpoints ---------------------------------------------------------------------------
def optimizer_to_files(optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """AdamW state as safetensors tensors plus JSON (no pickle)."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_files(tensors: dict[str, torch.Tensor], info: dict) -> dict:
    state: dict = {}
    for key, value in list(tensors.items()) + list(info["scalars"].items()):
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": info["param_groups"]}


def save_checkpoint(folder: Path, model: PeftModel, encoder: Encoder | list[Encoder], optimizer, scheduler, state: dict) -> None:
    tensors, optimizer_info = optimizer_to_files(optimizer)

    def write(staging: Path) -> None:
        model.write_adapter_files(staging, include_prompt_source=True)
        write_task(staging, encoder)
        adapters.save_tensors(tensors, staging / OPTIMIZER_NAME)
        payload = {**state, "optimizer": optimizer_info, "scheduler": scheduler.state_dict()}
        adapters.atomic_write_bytes(staging / STATE_NAME, json.dumps(payload, indent=1).encode())

    adapters.write_folder_atomically(folder, write)


# ---- the loop ------------------------------------------------------------------------------
def train(config: TrainConfig, resume: bool = False) -> dict:
    """Train, evaluate each epoch, checkpoint, keep the best adapter. Returns the final metrics line."""
    from accelerate import Accelerator
    from transformers import get_linear_schedule_with_warmup

    accelerator = Accelerator(gradient_accumulation_steps=config.gradient_accumulation_steps)
    main = accelerator.is_main_process
    out = Path(config.output_dir)
    checkpoint_dir, adapter_dir = out / "checkpoint", out / "adapter"
    state = read_state(checkpoint_dir) if resume else None
    if resume and state is None and main:
        print(f"No checkpoint in {checkpoint_dir}: starting from the beginning.")

    torch.manual_seed(config.seed)
    tokenizer = load_tokenizer(config.model)
    parts = load_tasks_data(config, tokenizer)
    encoders = [part.encoder for part in parts]
    train_examples = [example for part in parts for example in part.train]
    report_truncation(parts, main)
    task = task_kind(config.task.task_type)(train_examples)
    base = load_base_model(config.model, auto_class=task.auto_class(), **task.model_kwargs(encoders[0]))
    model = get_peft_model(base, config.method_config())
    if state is not None:
        model.prompt_source.load_state_dict(load_file(str(checkpoint_dir / adapters.SOURCE_NAME)))
        model.take_adapter_tensors(model.active_adapter, load_file(str(checkpoint_dir / adapters.WEIGHTS_NAME)), True)
    if main:
        model.print_trainable_parameters()

    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=config.lr, weight_decay=config.weight_decay
    )
    rows_per_epoch = len(epoch_examples(train_examples, config, 0))
    batches_per_epoch = math.ceil(rows_per_epoch / config.batch_size / accelerator.num_processes)
    total_steps = math.ceil(batches_per_epoch / config.gradient_accumulation_steps) * config.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, round(config.warmup_ratio * total_steps), total_steps)
    if state is not None:
        optimizer.load_state_dict(
            optimizer_from_files(load_file(str(checkpoint_dir / OPTIMIZER_NAME)), state["optimizer"])
        )
        scheduler.load_state_dict(state["scheduler"])
    model, optimizer = accelerator.prepare(model, optimizer)
    plain = accelerator.unwrap_model(model)

    history = state["history"] if state else []
    best = state["best"] if state else None
    start_epoch = state["epoch"] if state else 0
    if main:
        out.mkdir(parents=True, exist_ok=True)
        adapters.atomic_write_bytes(out / "run_config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False).encode())
    pad_id = tokenizer.pad_token_id
    for epoch in range(start_epoch, config.epochs):
        started = time.time()
        torch.manual_seed(config.seed + epoch)  # dropout and anything random: a function of (seed, epoch)
        epoch_rows = epoch_examples(train_examples, config, epoch)
        order = length_grouped_batches(
            [len(e.prompt_ids) + len(e.target_ids) for e in epoch_rows], config.batch_size, config.seed + epoch
        )
        loader = torch.utils.data.DataLoader(
            epoch_rows, batch_sampler=order, collate_fn=lambda rows: task.collate(rows, pad_id)
        )
        loader = accelerator.prepare_data_loader(loader)
        model.train()
        loss_sum = torch.zeros((), device=accelerator.device)
        token_count = torch.zeros((), device=accelerator.device)
        progress = tqdm_or_none(loader, f"epoch {epoch + 1}/{config.epochs}", config.progress and main)
        for step, batch in enumerate(progress):
            with accelerator.accumulate(model):
                loss = task.loss(model, batch)
                if not torch.isfinite(loss):
                    raise TrainingDiverged(
                        f"The loss became {loss.item()} in epoch {epoch + 1}, batch {step + 1}. "
                        f"The last good checkpoint ({checkpoint_dir}, epoch {start_epoch if not history else history[-1]['epoch']}) "
                        "is intact. Lower lr (or raise warmup_ratio), then rerun with --resume."
                    )
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()  # a no-op while accumulating
                if accelerator.sync_gradients:
                    scheduler.step()
                optimizer.zero_grad()
            tokens = task.weight(batch)
            loss_sum += loss.detach() * tokens
            token_count += tokens
            if hasattr(progress, "set_postfix"):
                progress.set_postfix(loss=f"{loss.item():.3f}")
        loss_sum, token_count = accelerator.reduce(loss_sum), accelerator.reduce(token_count)
        train_loss = (loss_sum / token_count).item()
        line = {"epoch": epoch + 1, "train_loss": train_loss, "train_ppl": safe_exp(train_loss)}
        if main:
            line.update(evaluate_parts(plain, parts, "evaluation", config, "eval_"))
            line.update(evaluate_parts(plain, parts, "selection", config, "val_"))
            line["lr"] = scheduler.get_last_lr()[0]
            line["seconds"] = round(time.time() - started, 2)
            chosen = selection_score(line, config)
            improved = best is None or chosen is None or chosen > best["score"]
            if improved:
                best = {"epoch": epoch + 1, "score": chosen}
                write_adapter(plain, encoders, adapter_dir)
            history.append(line)
            append_metrics(out, line, history)
            save_checkpoint(
                checkpoint_dir, plain, encoders, optimizer, scheduler, {"epoch": epoch + 1, "history": history, "best": best}
            )
            print(format_line(line))
            crash_for_tests(epoch + 1)
        accelerator.wait_for_everyone()
        patience = config.early_stopping_patience
        if patience is not None and best is not None and epoch + 1 - best["epoch"] >= patience:
            if main:
                print(f"Early stopping: no better {config.best_metric} for {patience} epochs (best: epoch {best['epoch']}).")
            break
    accelerator.wait_for_everyone()
    if main and config.calibration and adapter_dir.is_dir():
        from .calibration import calibrate_trained

        calibrate_trained(adapter_dir, config.calibration, device=accelerator.device)
    accelerator.end_training()
    return history[-1] if history else {}


def evaluate_parts(model, parts: list[TaskRows], attribute: str, config: TrainConfig, prefix: str) -> dict:
    """Metrics of each task's `attribute` rows (evaluation or selection): prefix+metric for one task; for several,
    their means as prefix+metric (what best_metric reads) and each task's as prefix+name_+metric."""
    scored = [(part, getattr(part, attribute)) for part in parts if getattr(part, attribute)]
    if not scored:
        return {}
    if len(parts) == 1:
        return prefixed(prefix, evaluate_examples(model, scored[0][0].encoder, scored[0][1], config))
    per_task = {part.name: evaluate_examples(model, part.encoder, rows, config) for part, rows in scored}
    mean = {key: sum(metrics[key] for metrics in per_task.values()) / len(per_task) for key in ("loss", "accuracy", "macro_f1")}
    line = prefixed(prefix, {"loss": mean["loss"], "ppl": safe_exp(mean["loss"]), "accuracy": mean["accuracy"],
                             "macro_f1": mean["macro_f1"]})
    for name, metrics in per_task.items():
        line.update(prefixed(f"{prefix}{name}_", metrics))
    return line


def evaluate_examples(model, encoder, examples, config) -> dict:
    """Loss/perplexity and classification metrics, from one pass of class scores (the task's: label
    likelihoods, whose gold one is exactly the teacher-forced loss, or a head's log-probabilities)."""
    task = task_kind(config.task.task_type)
    scores = task.class_log_scores(model, encoder, examples, config.eval_batch_size, config.progress)  # [N, K]
    gold = [e.label for e in examples]
    loss = task.eval_loss(scores, gold, encoder)
    if config.eval_method == "generation":
        predicted, _ = classify_by_generation(model, encoder, examples, config.eval_batch_size, config.progress)
    else:
        predicted = scores.argmax(-1).tolist()
    metrics = classification_metrics(gold, predicted, encoder.class_names)
    return {"loss": loss, "ppl": safe_exp(loss), "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]}


def write_adapter(model: PeftModel, encoder: Encoder | list[Encoder], folder: Path) -> None:
    adapters.write_folder_atomically(folder, lambda staging: (model.write_adapter_files(staging), write_task(staging, encoder)))


def selection_score(line: dict, config: TrainConfig) -> float | None:
    if config.best_metric == "last":
        return None  # every epoch replaces the adapter: the last one is kept
    prefix = "val_" if f"val_{config.best_metric}" in line else "eval_"
    value = line.get(prefix + config.best_metric)
    if value is None:
        return None  # nothing to select on: the latest epoch is kept
    return -value if config.best_metric == "loss" else value


def read_state(folder: Path) -> dict | None:
    path = folder / STATE_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise adapters.AdapterError(f"{path} is damaged ({error}); delete {folder} to start over.") from error


def append_metrics(out: Path, line: dict, history: list[dict]) -> None:
    text = "".join(json.dumps(h) + "\n" for h in history)
    adapters.atomic_write_bytes(out / "metrics.jsonl", text.encode())
    plot_metrics(history, out / "metrics.png")


def plot_metrics(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("train_loss", "eval_loss", "val_loss"):
        if key in history[0]:
            left.plot(epochs, [h[key] for h in history], marker="o", label=key)
    left.set_xlabel("epoch")
    left.set_title("loss")
    left.legend()
    for key in ("eval_accuracy", "eval_macro_f1", "val_accuracy", "val_macro_f1"):
        if key in history[0]:
            right.plot(epochs, [h[key] for h in history], marker="o", label=key)
    right.set_xlabel("epoch")
    right.set_ylim(0, 1)
    right.set_title("classification")
    if right.lines:
        right.legend()
    figure.tight_layout()
    temp = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(temp, dpi=80)
    plt.close(figure)
    os.replace(temp, path)


def report_truncation(parts: list[TaskRows], main: bool) -> None:
    if not main:
        return
    for part in parts:
        for name, examples in (("train", part.train), ("validation", part.selection), ("eval", part.evaluation)):
            if examples:
                cut = sum(e.truncated for e in examples)
                if cut:
                    where = f"{part.name} {name}" if part.name else name
                    print(f"{where}: {cut} of {len(examples)} examples had their text truncated to fit max_length.")


def tqdm_or_none(iterable, description: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=description, disable=not enabled, leave=False)


def prefixed(prefix: str, metrics: dict) -> dict:
    return {prefix + key: value for key, value in metrics.items()}


def safe_exp(value: float) -> float:
    return math.exp(min(value, 50.0))


def format_line(line: dict) -> str:
    shown = [f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in line.items()]
    return "  ".join(shown)


def crash_for_tests(epoch: int) -> None:
    """Tests of --resume set SOFTPROMPT_KILL_AFTER_EPOCH to die by SIGKILL right after a checkpoint."""
    if os.environ.get("SOFTPROMPT_KILL_AFTER_EPOCH") == str(epoch):
        os.kill(os.getpid(), signal.SIGKILL)


__all__ = ["DataError", "TrainConfig", "TrainingDiverged", "train"]
