"""Adapter files, both ways: a model's adapters written in PEFT's layout (AdapterFilesMixin, which PeftModel
inherits), and a saved adapter (ours or PEFT's; a folder or a Hub repo) read into a config and a prompt source,
checked against the base model's shape before anything is attached."""

from __future__ import annotations

import dataclasses
import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from .. import adapter_io, registry
from ..compat import current_state
from ..config import PromptLearningConfig
from ..errors import AdapterError
from ..methods.base import ModelShape, PromptTable, has_encoder
from . import model_card
from .injection import Injection


def read_adapter(
    shape: ModelShape, model_id, is_trainable: bool, injection_for, **hub_kwargs
) -> tuple[PromptLearningConfig, nn.Module, dict]:
    """A saved adapter's config, prompt source and file tensors, checked against the base model's shape.
    `injection_for(source_class, config)` gives the Injection the wrapper will use (its table layout).

    Inference gets the collapsed table; training (`is_trainable`) gets the full source when the folder has
    it (prompt_source.safetensors), so encoders resume exactly.
    """
    config = PromptLearningConfig.from_pretrained(model_id, **hub_kwargs)
    config.inference_mode = not is_trainable
    tensors = adapter_io.read_adapter_tensors(model_id, **hub_kwargs)
    source_class = registry.method(config.peft_type).source_class
    injection: Injection = injection_for(source_class, config)
    table = injection.table_from_file(tensors[adapter_io.TABLE_KEY].float(), config.num_virtual_tokens)
    check_config_fits(config, shape, model_id)
    config.fill_model_fields(shape)
    check_table_fits(table, config, shape, injection.table_width())
    if not source_class.collapses:  # the adapter file holds the whole source
        try:
            source = source_class.from_adapter_tensors(config, shape, {k: t.float() for k, t in tensors.items()})
        except (KeyError, RuntimeError) as error:
            raise AdapterError(f"The adapter {model_id} does not fit its adapter_config.json: {error}") from error
    else:
        source = collapsed_or_full_source(source_class, config, shape, table, model_id, is_trainable, **hub_kwargs)
    if not is_trainable:  # for training, each source keeps its own choice (CPT's example embeddings stay frozen)
        source.requires_grad_(False)
    return config, source, tensors


def collapsed_or_full_source(
    source_class, config, shape, table, model_id, is_trainable: bool, **hub_kwargs
) -> nn.Module:
    """The collapsed table for inference; for training, the full source (encoder included) when the folder has
    prompt_source.safetensors, else the table with a warning if an encoder is lost."""
    full_source = source_class(config, shape, None)  # not initialised from the model
    source_state = adapter_io.read_prompt_source(model_id, **hub_kwargs) if is_trainable else None
    if source_state is not None:  # resume training with the full source, encoder included
        try:
            full_source.load_state_dict(source_state)
        except RuntimeError as error:
            raise AdapterError(
                f"{adapter_io.SOURCE_NAME} in {model_id} does not fit its adapter_config.json: {error}"
            ) from error
        return full_source
    if is_trainable and has_encoder(full_source):
        warnings.warn(
            f"{model_id} has no {adapter_io.SOURCE_NAME}: training continues from the collapsed prompt table, "
            "without the encoder it was trained with. Save with include_prompt_source=True to resume exactly.",
            stacklevel=2,
        )
    return PromptTable(table, source_class.injection)


def check_config_fits(config: PromptLearningConfig, shape: ModelShape, model_id) -> None:
    """The saved model-shape fields must be the ones this base model gives (layers, widths, KV heads)."""
    expected = dataclasses.replace(config)
    expected.fill_model_fields(shape)
    wrong = [
        f"{name}={getattr(config, name)} (this model: {getattr(expected, name)})"
        for name in ("num_layers", "token_dim", "num_attention_heads")
        if getattr(config, name) is not None and getattr(config, name) != getattr(expected, name)
    ]
    if wrong:
        raise AdapterError(
            f"The adapter {model_id} does not fit this base model: {', '.join(wrong)}; this base model needs other "
            f"shapes. The adapter was trained for {config.base_model_name_or_path!r}: load that base model."
        )


def check_table_fits(table: torch.Tensor, config: PromptLearningConfig, shape: ModelShape, width: int) -> None:
    expected = (config.num_virtual_tokens, width)
    if tuple(table.shape) != expected:
        raise AdapterError(
            f"The adapter's prompt_embeddings has shape {tuple(table.shape)}, but this base model needs {expected} "
            f"(num_virtual_tokens={config.num_virtual_tokens}; model: hidden={shape.hidden_size}, "
            f"layers={shape.num_layers}, "
            f"kv_heads={shape.num_kv_heads}, head_dim={shape.head_dim}). The adapter was trained for "
            f"{config.base_model_name_or_path!r}: load that base model."
        )


class AdapterFilesMixin:
    """save_pretrained, push_to_hub and the files of one adapter, in PEFT's layout. Uses PeftModel's peft_config,
    prompt_encoder, injections and its hooks prompt_table, extra_adapter_tensors, check_known, active_name."""

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        include_prompt_source: bool = False,
        is_main_process: bool = True,
        selected_adapters: list[str] | None = None,
        **_,
    ) -> None:
        """Write adapter folders atomically, in PEFT's layout: "default" in `save_directory`, any other
        adapter in `save_directory/<name>`. `include_prompt_source` adds the full encoder for resuming."""
        if not is_main_process:
            return
        names = list(self.peft_config) if selected_adapters is None else list(selected_adapters)
        for name in names:
            self.check_known(name)
        for name in sorted(names, key=lambda n: n != "default"):  # the root folder first, sub-folders into it
            folder = Path(save_directory) if name == "default" else Path(save_directory) / name
            own_card = model_card.keeps_own_card(folder)

            def write(staging, name=name, own_card=own_card):
                self.write_adapter_files(staging, include_prompt_source, name)
                if not own_card:
                    self.write_model_card(staging, name)

            adapter_io.write_folder_atomically(folder, write)

    def write_adapter_files(self, folder, include_prompt_source: bool = False, adapter_name: str | None = None) -> None:
        """An adapter's files (default: the active one), written into an existing folder (callers make that atomic)."""
        name = adapter_name or self.active_name()
        source = self.prompt_encoder[name]
        with torch.no_grad():  # as at inference: an LSTM's no-grad kernel differs in the last bits
            if source.collapses:
                tensors = {adapter_io.TABLE_KEY: self.injections[name].file_table(self.prompt_table(name).float())}
            else:  # a source whose file holds more than one table
                tensors = {key: t.float() for key, t in source.adapter_tensors().items()}
        tensors.update(self.extra_adapter_tensors(name))
        adapter_io.save_tensors(tensors, Path(folder) / adapter_io.WEIGHTS_NAME)
        if include_prompt_source:
            adapter_io.save_tensors(current_state(source), Path(folder) / adapter_io.SOURCE_NAME)
        config = self.peft_config[name] if include_prompt_source else self.peft_config[name].exported()
        saved = dataclasses.replace(config, inference_mode=True)  # the file holds the collapsed table
        saved.save_pretrained(folder)

    def write_model_card(self, folder, adapter_name: str | None = None, task=None, metrics: dict | None = None,
                         location: str = model_card.PLACEHOLDER) -> None:  # fmt: skip
        """The adapter's README.md (model card), beside its files in `folder`: `task` (a TaskSpec) and `metrics` (a
        training line) add their sections; `location` is how the card's code names the adapter (a Hub repo id)."""
        name = adapter_name or self.active_name()
        parameters = sum(t.numel() for t in adapter_io.read_tensors(Path(folder) / adapter_io.WEIGHTS_NAME).values())
        config = self.peft_config[name]
        text = model_card.render(config.exported(), parameters, task, metrics, location, trained_as=config.peft_type)
        adapter_io.atomic_write_bytes(Path(folder) / model_card.CARD_NAME, text.encode())

    def push_to_hub(
        self,
        repo_id: str,
        private: bool | None = None,
        token: str | None = None,
        commit_message: str = "Upload prompt adapter",
    ) -> str:
        """Upload the active adapter as one commit (all files or none). Returns the commit URL."""
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(os.path.join(folder, "adapter"), selected_adapters=[self.active_name()])
            self.write_model_card(os.path.join(folder, "adapter"), location=repo_id)
            return adapter_io.upload_folder(os.path.join(folder, "adapter"), repo_id, private, token, commit_message)
