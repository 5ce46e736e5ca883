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

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from tqdm.auto import tqdm

from .. import adapter_io, base_models, registry
from ..compat import accelerator_for
from ..core import PeftModel, get_peft_model
from ..data import length_grouped_batches
from ..errors import TrainingDiverged
from ..inference import calibrate_adapter_folder
from ..inference.calibration import read_texts
from ..task_types.base import TaskBehaviour
from .checkpoints import read_state, restore_optimizer, restore_prompt, save_checkpoint, write_adapter
from .config import TrainConfig
from .evaluation import evaluate_parts, safe_exp, selection_score
from .examples import TaskExamples, epoch_examples, load_tasks_data, report_truncation
from .metrics_log import append_metrics, format_line


@dataclass
class Run:
    """Everything a training run holds between epochs."""

    config: TrainConfig
    accelerator: object  # accelerate.Accelerator
    parts: list[TaskExamples]  # each task's rows
    behaviour: TaskBehaviour
    model: PeftModel  # as accelerate prepared it (wrapped under DDP)
    plain: PeftModel  # the same model, unwrapped
    optimizer: torch.optim.Optimizer
    scheduler: object
    pad_id: int
    history: list[dict]
    best: dict | None
    start_epoch: int
    calibration_texts: list[str] | None = None  # read before training, so a bad calibration setting fails first

    @property
    def out(self) -> Path:
        return Path(self.config.output_dir)

    @property
    def train_examples(self) -> list:
        return [example for part in self.parts for example in part.train]


def train(config: TrainConfig, resume: bool = False) -> dict:
    """Train, evaluate each epoch, checkpoint, keep the best adapter. Returns the final metrics line."""
    accelerator = accelerator_for(
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        cpu=config.device == "cpu",
    )
    run = prepare(config, accelerator, resume)
    main = accelerator.is_main_process
    for epoch in range(run.start_epoch, config.epochs):
        started = time.time()
        train_loss = run_epoch(run, epoch)
        if main:
            finish_epoch(run, epoch, train_loss, started)
        accelerator.wait_for_everyone()
        patience = config.early_stopping_patience
        if patience is not None and run.best is not None and epoch + 1 - run.best["epoch"] >= patience:
            if main:
                print(
                    f"Early stopping: no better {config.best_metric} for {patience} epochs (best: epoch "
                    f"{run.best['epoch']})."
                )
            break
    accelerator.wait_for_everyone()
    adapter_dir = run.out / "adapter"
    if main and run.calibration_texts is not None and adapter_dir.is_dir():
        source = config.calibration.texts_file
        calibrate_adapter_folder(adapter_dir, source, device=accelerator.device, texts=run.calibration_texts)
    accelerator.end_training()
    return run.history[-1] if run.history else {}


def prepare(config: TrainConfig, accelerator, resume: bool) -> Run:
    """Rows, model, optimizer and schedule of a run (restored from its checkpoint with `resume`)."""
    from transformers import get_linear_schedule_with_warmup

    main = accelerator.is_main_process
    checkpoint_dir = Path(config.output_dir) / "checkpoint"
    state = read_state(checkpoint_dir) if resume else None
    if resume and state is None and main:
        print(f"No checkpoint in {checkpoint_dir}: starting from the beginning.")
    torch.manual_seed(config.seed)
    tokenizer = base_models.load_tokenizer(config.model)
    parts = load_tasks_data(config, tokenizer)
    calibration_texts = None
    if config.calibration and main:
        settings = config.calibration
        column = settings.column or parts[0].rows.spec.text_columns[0]
        calibration_texts = read_texts(settings.texts_file, column, settings.limit, field="calibration.texts_file")
    if main:
        report_truncation(parts)
    train_examples = [example for part in parts for example in part.train]
    entry = registry.task_type(config.task_type)
    behaviour = entry.require_behaviour("softprompt train")(train_examples)
    options = behaviour.model_options(parts[0].rows)
    if config.dtype != "auto":
        options["dtype"] = base_models.parse_dtype(config.dtype)
    base = base_models.load_base_model(config.model, auto_class=entry.auto_model, **options)
    model = get_peft_model(base, config.method_config())
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if state is not None:
        restore_prompt(checkpoint_dir, model)
    if main:
        model.print_trainable_parameters()
    optimizer = torch.optim.AdamW(model.parameter_groups(config.lr), lr=config.lr, weight_decay=config.weight_decay)
    rows_per_epoch = len(epoch_examples(train_examples, config, 0))
    batches_per_epoch = math.ceil(rows_per_epoch / config.batch_size / accelerator.num_processes)
    total_steps = math.ceil(batches_per_epoch / config.gradient_accumulation_steps) * config.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, round(config.warmup_ratio * total_steps), total_steps)
    if state is not None:
        restore_optimizer(checkpoint_dir, state, optimizer, scheduler)
    prepared, optimizer = accelerator.prepare(model, optimizer)
    if main:
        Path(config.output_dir).mkdir(parents=True, exist_ok=True)
        text = yaml.safe_dump(config.to_dict(), sort_keys=False)
        adapter_io.atomic_write_bytes(Path(config.output_dir) / "run_config.yaml", text.encode())
    return Run(
        config,
        accelerator,
        parts,
        behaviour,
        prepared,
        accelerator.unwrap_model(prepared),
        optimizer,
        scheduler,
        tokenizer.pad_token_id,
        state["history"] if state else [],
        state["best"] if state else None,
        state["epoch"] if state else 0,
        calibration_texts,
    )


def run_epoch(run: Run, epoch: int) -> float:
    """One pass over the epoch's rows; returns the mean training loss (over label tokens, or rows)."""
    config, accelerator, model = run.config, run.accelerator, run.model
    torch.manual_seed(config.seed + epoch)  # dropout and anything random: a function of (seed, epoch)
    rows = epoch_examples(run.train_examples, config, epoch)
    order = length_grouped_batches(
        [len(e.prompt_ids) + len(e.target_ids) for e in rows], config.batch_size, config.seed + epoch
    )
    loader = torch.utils.data.DataLoader(
        rows, batch_sampler=order, collate_fn=lambda batch: run.behaviour.collate(batch, run.pad_id)
    )
    try:
        return fit_epoch(
            model, loader, run.behaviour.loss, run.behaviour.weight, run.optimizer, run.scheduler, accelerator,
            config.max_grad_norm, f"epoch {epoch + 1}/{config.epochs}", config.progress,
        )  # fmt: skip
    except NonFiniteLoss as error:
        last = run.start_epoch if not run.history else run.history[-1]["epoch"]
        raise TrainingDiverged(
            f"The loss became {error.value} in epoch {epoch + 1}, batch {error.step}. The last good checkpoint "
            f"({run.out / 'checkpoint'}, epoch {last}) is intact. Lower lr (or raise warmup_ratio), then "
            "rerun with --resume."
        ) from None


class NonFiniteLoss(ArithmeticError):
    def __init__(self, step: int, value: float):
        super().__init__(f"the loss became {value} at batch {step}")
        self.step, self.value = step, value


def fit_epoch(
    model, batches, loss_fn, weight_fn, optimizer, scheduler, accelerator, max_grad_norm: float = 1.0,
    description: str = "", progress: bool = True,
) -> float:  # fmt: skip
    """One pass of optimizer steps over `batches` (dicts of tensors), with gradient accumulation and clipping as
    `accelerator` is set up: `loss_fn(model, batch)` gives the batch's mean loss, `weight_fn(batch)` what it
    averages over (label tokens, rows). Returns the epoch's weighted mean loss; a NaN/inf loss raises
    NonFiniteLoss before any step is taken with it. Any model trains here (the benchmarks run PEFT's in it)."""
    batches = accelerator.prepare_data_loader(batches)
    model.train()
    loss_sum = torch.zeros((), device=accelerator.device)
    weight_sum = torch.zeros((), device=accelerator.device)
    shown = tqdm(batches, desc=description, disable=not (progress and accelerator.is_main_process), leave=False)
    for step, batch in enumerate(shown):
        with accelerator.accumulate(model):
            loss = loss_fn(model, batch)
            if not torch.isfinite(loss):
                raise NonFiniteLoss(step + 1, loss.item())
            accelerator.backward(loss)
            if accelerator.sync_gradients and max_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()  # a no-op while accumulating
            if accelerator.sync_gradients:
                scheduler.step()
            optimizer.zero_grad()
        weight = weight_fn(batch)
        loss_sum += loss.detach() * weight
        weight_sum += weight
        if progress:  # .item() waits for the device: only when someone reads it
            shown.set_postfix(loss=f"{loss.item():.3f}")
    loss_sum, weight_sum = accelerator.reduce(loss_sum), accelerator.reduce(weight_sum)
    return (loss_sum / weight_sum).item()


def finish_epoch(run: Run, epoch: int, train_loss: float, started: float) -> None:
    """Evaluate, keep the adapter if it is the best so far, log, checkpoint (main process)."""
    config, plain = run.config, run.plain
    line = {"epoch": epoch + 1, "train_loss": train_loss, "train_ppl": safe_exp(train_loss)}
    line.update(evaluate_parts(plain, run.parts, "evaluation", config, "eval_"))
    line.update(evaluate_parts(plain, run.parts, "selection", config, "val_"))
    line["lr"] = run.scheduler.get_last_lr()[0]
    line["seconds"] = round(time.time() - started, 2)
    chosen = selection_score(line, config)
    task_rows = [part.rows for part in run.parts]
    if run.best is None or chosen is None or chosen > run.best["score"]:
        run.best = {"epoch": epoch + 1, "score": chosen}
        write_adapter(plain, task_rows, run.out / "adapter", line)
    run.history.append(line)
    append_metrics(run.out, line, run.history)
    state = {"epoch": epoch + 1, "history": run.history, "best": run.best}
    save_checkpoint(run.out / "checkpoint", plain, task_rows, run.optimizer, run.scheduler, state)
    print(format_line(line))
