"""Hugging Face's Trainer with checkpoints that hold the adapters only, in PEFT's files.

`transformers.Trainer` trains a softprompt model as it is: only the prompt (and a classifier's head copy)
has requires_grad, so only they reach the optimizer. Its checkpoints are the problem. Trainer 5.x knows
adapters only as instances of `peft.PeftModel` (`_is_peft_model` is an isinstance check, made only when
peft is installed) and calls `save_pretrained` only for those and for `PreTrainedModel`s; any other model
is saved as its whole `state_dict()` in model.safetensors, the frozen base included (tied embeddings make
safetensors refuse it), and reloaded with `load_state_dict`. Nothing on the model changes that path short
of changing `state_dict()` for every caller, so `softprompt.Trainer` overrides its three checkpoint points:

- `_save`: every loaded adapter in PEFT's layout ("default" in the folder, others in sub-folders), each
  with prompt_source.safetensors (the full source, encoders included) so that training resumes exactly;
- `_load_from_checkpoint` (resume_from_checkpoint) and `_load_best_model` (load_best_model_at_end): the
  checkpoint's adapters are copied into the model's adapters of the same names, in place, so the
  optimizer keeps holding the same parameters.

Under FSDP (`accelerate launch` with an FSDP2 config) accelerate shards the wrapper as its root unit. The
adapters' parameters are then DTensor shards outside a forward: `save_model` gathers just the units that
hold them (every rank takes part, the main one writes the same adapter files), the checkpoint holds the
optimizer's sharded state but not the base model (transformers would save the whole model there too), and
restoring cuts the saved tensors back into each rank's shards.
"""

from __future__ import annotations

import inspect
import logging
import os
from pathlib import Path

import torch
import transformers

from .. import adapter_io, registry
from ..adapter_io import CONFIG_NAME
from ..compat import fsdp_gathered, load_whole_state
from ..core import PeftModel
from ..errors import AdapterError
from ..task_types import PeftModelForCausalLM

logger = logging.getLogger(__name__)
TRAINING_ARGS_NAME = "training_args.bin"  # as transformers names it


def adapter_folder(folder, adapter_name: str) -> Path:
    """Where an adapter lies in a saved folder (PEFT's layout): "default" at the top, others in sub-folders."""
    return Path(folder) if adapter_name == "default" else Path(folder) / adapter_name


def save_adapters(model: PeftModel, folder) -> None:
    """Every adapter's files with its full prompt source, written straight into `folder` (a checkpoint)."""
    for name in model.peft_config:
        target = adapter_folder(folder, name)
        target.mkdir(parents=True, exist_ok=True)
        model.write_adapter_files(target, include_prompt_source=True, adapter_name=name)


def restore_adapters(model: PeftModel, folder) -> list[str]:
    """Copy the adapters saved in `folder` into the model's adapters of the same names, in place.

    The active adapter must be there; others the folder lacks are left as they are. Returns the names restored.
    """
    restored = []
    for name in model.peft_config:
        path = adapter_folder(folder, name)
        if not (path / CONFIG_NAME).is_file():
            if name == model.active_adapter:
                raise AdapterError(
                    f"The checkpoint {folder} holds no adapter {name!r} (the active one): no {path / CONFIG_NAME}."
                )
            continue
        state = adapter_io.read_prompt_source(path)
        if state is None:
            raise AdapterError(
                f"{path} has no {adapter_io.SOURCE_NAME}, the full prompt source training resumes from: write "
                "checkpoints with softprompt.Trainer (or save_pretrained(..., include_prompt_source=True))."
            )
        source = model.prompt_encoder[name]
        try:
            load_whole_state(source, state)  # copies into the same parameters (or their FSDP shards)
        except RuntimeError as error:
            raise AdapterError(f"The adapter {name!r} in {path} does not fit the loaded one: {error}") from error
        trainable = any(p.requires_grad for p in source.parameters())
        model.take_adapter_tensors(name, adapter_io.read_adapter_tensors(path), trainable)  # a classifier's head
        restored.append(name)
    return restored


class AdapterCheckpointsMixin:
    """The checkpoint points of `transformers.Trainer`, for a softprompt model (see the module docstring)."""

    def peft_model(self) -> PeftModel:
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        if not isinstance(model, PeftModel):
            raise TypeError(
                f"softprompt.Trainer trains softprompt models (get_peft_model(...)), got {type(model).__name__}."
            )
        return model

    def create_optimizer(self, model=None):
        """transformers' optimizer; where a method's parameters take their own learning rate (DePT's offsets), its
        optimizer class over the model's parameter groups."""
        groups = self.peft_model().parameter_groups(self.args.learning_rate)
        if self.optimizer is not None or len({group["lr"] for group in groups}) == 1:
            return super().create_optimizer(model)
        optimizer_class, options = self.optimizer_cls_and_kwargs or self.get_optimizer_cls_and_kwargs(
            self.args, self.model
        )
        self.optimizer = optimizer_class([{"weight_decay": self.args.weight_decay, **g} for g in groups], **options)
        return self.optimizer

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """The adapters (not the frozen base), the tokenizer if any, and the training arguments."""
        if not self.args.should_save:
            return
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        logger.info(f"Saving the adapters to {output_dir}")
        save_adapters(self.peft_model(), output_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        if not self.is_fsdp_enabled:
            return super().save_model(output_dir, _internal_call)
        model = self.peft_model()
        modules = [module for name in model.peft_config for module in model.adapter_modules(name)]
        with fsdp_gathered(model, modules):  # every rank gathers; the main process writes
            self._save(output_dir)
        if self.args.push_to_hub and not _internal_call:
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if not self.is_fsdp_enabled:
            return super()._save_optimizer_and_scheduler(output_dir)
        from accelerate.utils import save_fsdp_optimizer

        # transformers' FSDP branch also saves the whole model's shards: the adapters are already there
        save_fsdp_optimizer(
            self.accelerator.state.fsdp_plugin, self.accelerator, self.optimizer, self.model, output_dir
        )
        if self.args.should_save:
            torch.save(self.lr_scheduler.state_dict(), os.path.join(output_dir, transformers.trainer.SCHEDULER_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        model = self.peft_model()
        if not any(
            (adapter_folder(resume_from_checkpoint, name) / CONFIG_NAME).is_file() for name in model.peft_config
        ):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)  # a whole-model checkpoint
        restore_adapters(model, resume_from_checkpoint)

    def _load_best_model(self) -> None:
        logger.info(
            f"Loading the best adapters from {self.state.best_model_checkpoint} (score: {self.state.best_metric})."
        )
        restore_adapters(self.peft_model(), self.state.best_model_checkpoint)

    def _set_signature_columns_if_needed(self) -> None:
        """Keep the dataset columns the base model takes (token_type_ids...) and those a method's own loss reads (CPT's
        input_type_mask): the wrapper's forward passes them on, but its signature does not name them."""
        if self._signature_columns is None:
            super()._set_signature_columns_if_needed()
            base = self.peft_model().get_base_model()
            self._signature_columns += [*inspect.signature(base.forward).parameters, *sorted(registry.loss_inputs())]

    def check_label_smoothing(self) -> None:
        if self.label_smoother is not None and isinstance(self.peft_model(), PeftModelForCausalLM):
            raise ValueError(
                "label_smoothing_factor is not supported for CAUSAL_LM softprompt models: the Trainer would pop the "
                "labels and score unshifted logits. Set label_smoothing_factor=0."
            )


class Trainer(AdapterCheckpointsMixin, transformers.Trainer):
    """`transformers.Trainer` whose checkpoints hold the adapters only (PEFT's files plus the prompt source)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.check_label_smoothing()


class Seq2SeqTrainer(AdapterCheckpointsMixin, transformers.Seq2SeqTrainer):
    """`transformers.Seq2SeqTrainer` whose checkpoints hold the adapters only."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.check_label_smoothing()
