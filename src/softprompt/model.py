"""The model wrapper: a frozen causal LM plus one prompt source. It knows injections, not methods."""

from __future__ import annotations

import dataclasses
import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from transformers.modeling_outputs import CausalLMOutputWithPast

from . import adapters
from .config import PromptLearningConfig
from .inject import accepts_position_ids, cache_argument, frozen_prefix_cache, positions_from_mask, probe_shape
from .methods import PromptTable, source_class_for


class PeftModel(nn.Module):
    """A frozen base model and a trainable prompt. Use `get_peft_model` or `PeftModel.from_pretrained`."""

    def __init__(
        self,
        model: nn.Module,
        peft_config: PromptLearningConfig,
        adapter_name: str = "default",
        prompt_source: nn.Module | None = None,
    ):
        super().__init__()
        if not isinstance(peft_config, PromptLearningConfig):
            raise TypeError(
                f"peft_config must be a softprompt config (PromptTuningConfig, PromptEncoderConfig or "
                f"PrefixTuningConfig), got {type(peft_config).__name__}."
            )
        self.base_model = model
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        for module in model.modules():
            # Our prompt caches are safe to recompute (they never append), so let checkpointed layers keep
            # them; otherwise transformers drops a cache under gradient checkpointing, and the prompt with it.
            if hasattr(type(module), "_can_checkpoint_with_cache"):
                module._can_checkpoint_with_cache = True
        self.adapter_name = adapter_name
        self.shape = probe_shape(model)
        if peft_config.base_model_name_or_path is None:
            peft_config.base_model_name_or_path = getattr(model, "name_or_path", None) or None
        peft_config.fill_model_fields(self.shape)
        self.config_ = peft_config
        source_class = source_class_for(peft_config)
        if prompt_source is None:
            prompt_source = source_class(peft_config, self.shape, model)
        self.prompt_source = prompt_source.to(model.get_input_embeddings().weight.device)
        self.injection = source_class.injection(self.shape)

    # ---- PEFT-compatible accessors -------------------------------------------------------
    @property
    def peft_config(self) -> dict[str, PromptLearningConfig]:
        return {self.adapter_name: self.config_}

    @property
    def active_peft_config(self) -> PromptLearningConfig:
        return self.config_

    def get_base_model(self) -> nn.Module:
        return self.base_model

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in {"base_model", "prompt_source", "config_"}:
                raise
            return getattr(self.base_model, name)

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.parameters())
        return trainable, total

    def print_trainable_parameters(self) -> None:
        trainable, total = self.get_nb_trainable_parameters()
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}")

    def prompt_table(self) -> torch.Tensor:
        """The prompt as its table [P, D]: what the injection consumes and what the adapter file stores."""
        return self.prompt_source()

    # ---- forward and generate --------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        logits_to_keep: int = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Logits [B, L, V] aligned with `input_ids` (no virtual positions); loss over `labels` != -100.

        `logits_to_keep=K` computes the LM head for the last K positions only (logits [B, K, V]): with
        left padding and labels at the end of each row, K = longest label + 1 is all a loss needs.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        for unsupported in ("past_key_values", "cache"):
            if kwargs.pop(unsupported, None) is not None:
                raise ValueError(f"{unsupported} is not supported in forward(); use generate() for cached decoding.")
        kwargs.pop("use_cache", None)
        if logits_to_keep:
            kwargs["logits_to_keep"] = logits_to_keep
        logits = self.injection.forward(
            self.base_model, self.prompt_table(), input_ids, inputs_embeds, attention_mask, position_ids, **kwargs
        )  # [B, T, V]: the last T positions of [virtual..., input...]
        length = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        num_virtual = max(logits.shape[1] - length, 0)  # leading rows that belong to virtual positions
        if logits_to_keep and labels is not None and (labels[:, : max(length - logits.shape[1] + 1, 0)] != -100).any():
            raise ValueError(
                f"Some labels lie before the last logits_to_keep={logits_to_keep} positions, so no logits predict "
                "them: raise logits_to_keep to the longest label + 1, or leave it at 0 (all positions)."
            )
        loss = None if labels is None else causal_lm_loss(logits, labels, num_virtual)
        return CausalLMOutputWithPast(loss=loss, logits=logits[:, num_virtual:])

    @torch.no_grad()
    def score_continuations(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, continuations: list[list[int]]) -> torch.Tensor:
        """Summed log-probability of each continuation after each left-padded input: [B, K].

        The prompt and the inputs run once; each continuation then runs as a few tokens attending to
        their cache, instead of K full copies of every input.
        """
        base, table = self.base_model, self.prompt_table()
        batch, num_virtual = input_ids.shape[0], table.shape[0]
        cache = self.injection.generation_cache(base, table, batch)  # P prompt positions
        full_mask = torch.cat([attention_mask.new_ones(batch, num_virtual), attention_mask], dim=1)  # [B, P+L]
        kwargs = {cache_argument(base): cache}
        if accepts_position_ids(base):
            kwargs["position_ids"] = positions_from_mask(full_mask)[:, num_virtual:]
        first = base(input_ids=input_ids, attention_mask=full_mask, use_cache=True, logits_to_keep=1, **kwargs).logits
        first = first[:, -1].float().log_softmax(-1)  # [B, V]: predicts each continuation's first token
        layers = [(layer.keys, layer.values) for layer in cache.layers]  # now P+L positions
        next_position = full_mask.sum(-1, keepdim=True) if accepts_position_ids(base) else None  # [B, 1]
        scores = torch.empty(batch, len(continuations), device=first.device)
        for k, tokens in enumerate(continuations):
            ids = torch.tensor(tokens, device=input_ids.device).expand(batch, -1)  # [B, n]
            score = first[:, tokens[0]]
            if len(tokens) > 1:
                kwargs = {cache_argument(base): frozen_prefix_cache(layers)}
                if next_position is not None:
                    kwargs["position_ids"] = next_position + torch.arange(len(tokens) - 1, device=ids.device)
                mask = torch.cat([full_mask, full_mask.new_ones(batch, len(tokens) - 1)], dim=1)
                logits = base(input_ids=ids[:, :-1], attention_mask=mask, use_cache=False, **kwargs).logits  # [B, n-1, V]
                rest = logits.float().log_softmax(-1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)  # [B, n-1]
                score = score + rest.sum(-1)
            scores[:, k] = score
        return scores

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None, **kwargs):
        """`transformers` generation (greedy, sampling, beams...) after the prompt; returns input + new tokens."""
        if input_ids is None:
            raise ValueError("generate() needs input_ids.")
        base = self.base_model
        batch = input_ids.shape[0]
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        settings = kwargs.get("generation_config") or base.generation_config
        expand = max(kwargs.get("num_beams", settings.num_beams) or 1, kwargs.get("num_return_sequences", settings.num_return_sequences) or 1)
        table = self.prompt_table()
        num_virtual = table.shape[0]
        cache = self.injection.generation_cache(base, table, batch * expand)  # P positions, [B*expand, ...]
        # The cache stands for P tokens that have no ids: give generate placeholders it will not embed.
        placeholder = settings.pad_token_id if settings.pad_token_id is not None else 0
        if isinstance(placeholder, (list, tuple)):
            placeholder = placeholder[0]
        full_ids = torch.cat([input_ids.new_full((batch, num_virtual), placeholder), input_ids], dim=1)
        full_mask = torch.cat([attention_mask.new_ones(batch, num_virtual), attention_mask], dim=1)
        if accepts_position_ids(base):
            kwargs["position_ids"] = positions_from_mask(full_mask)  # grows by one per step inside generate
        for length_key in ("max_length", "min_length"):
            if length_key in kwargs and kwargs[length_key] is not None:
                kwargs[length_key] += num_virtual
        if kwargs.get("max_length") is None and kwargs.get("max_new_tokens") is None and settings.max_new_tokens is None:
            kwargs["max_length"] = settings.max_length + num_virtual
        kwargs[cache_argument(base)] = cache
        output = base.generate(input_ids=full_ids, attention_mask=full_mask, **kwargs)
        if isinstance(output, torch.Tensor):
            return output[:, num_virtual:]
        output.sequences = output.sequences[:, num_virtual:]
        return output

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Checkpoint the base model's layers; the prompt's gradients stay the same (tested).

        Always non-reentrant: reentrant checkpoints back-propagate each layer separately and cannot
        reach a prompt that all layers share (a prefix projection, an encoder).
        """
        kwargs = dict(gradient_checkpointing_kwargs or {})
        if kwargs.pop("use_reentrant", False):
            warnings.warn("use_reentrant=True cannot train a shared prompt; using use_reentrant=False (same memory saving).")
        kwargs["use_reentrant"] = False
        base = self.base_model
        enable = getattr(base, "activation_checkpointing_enable", None)  # transformers >= 5.2x name
        if enable is not None:
            enable(activation_checkpointing_kwargs=kwargs)
        else:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    # ---- saving and loading ----------------------------------------------------------------
    def save_pretrained(
        self, save_directory: str | os.PathLike, include_prompt_source: bool = False, is_main_process: bool = True, **_
    ) -> None:
        """Write the adapter folder atomically. `include_prompt_source` adds the full encoder for resuming."""
        if is_main_process:
            adapters.write_folder_atomically(save_directory, lambda folder: self.write_adapter_files(folder, include_prompt_source))

    def write_adapter_files(self, folder, include_prompt_source: bool = False) -> None:
        """The adapter's files, written into an existing folder (callers make that atomic)."""
        with torch.no_grad():  # as at inference: an LSTM's no-grad kernel differs in the last bits
            table = self.prompt_table().float()
        adapters.save_tensors({adapters.TABLE_KEY: table}, Path(folder) / adapters.WEIGHTS_NAME)
        if include_prompt_source:
            adapters.save_tensors(dict(self.prompt_source.state_dict()), Path(folder) / adapters.SOURCE_NAME)
        saved = dataclasses.replace(self.config_, inference_mode=True)  # the file holds the collapsed table
        saved.save_pretrained(folder)

    @classmethod
    def from_pretrained(
        cls, model: nn.Module, model_id: str | os.PathLike, adapter_name: str = "default", is_trainable: bool = False, **hub_kwargs
    ) -> "PeftModel":
        """Attach a saved adapter (ours or PEFT's, local folder or hub repo) to `model`."""
        config = PromptLearningConfig.from_pretrained(model_id, **hub_kwargs)
        config.inference_mode = not is_trainable
        table = adapters.read_adapter_table(model_id, **hub_kwargs).float()
        source_class = source_class_for(config)
        shape = probe_shape(model)
        check_config_fits(config, shape, model_id)
        config.fill_model_fields(shape)
        full_source = source_class(config, shape, None)  # not initialised from the model
        source_state = adapters.read_prompt_source(model_id, **hub_kwargs) if is_trainable else None
        if source_state is not None:  # resume training with the full source, encoder included
            try:
                full_source.load_state_dict(source_state)
            except RuntimeError as error:
                raise adapters.AdapterError(
                    f"{adapters.SOURCE_NAME} in {model_id} does not fit its adapter_config.json: {error}"
                ) from error
            prompt_source = full_source
        else:
            if is_trainable and has_encoder(full_source):
                warnings.warn(
                    f"{model_id} has no {adapters.SOURCE_NAME}: training continues from the collapsed prompt table, "
                    "without the encoder it was trained with. Save with include_prompt_source=True to resume exactly."
                )
            prompt_source = PromptTable(table, source_class.injection)
        wrapped = cls(model, config, adapter_name, prompt_source=prompt_source)
        check_table_fits(table, config, wrapped)
        wrapped.prompt_source.requires_grad_(is_trainable)
        return wrapped

    def push_to_hub(self, repo_id: str, private: bool | None = None, token: str | None = None, commit_message: str = "Upload prompt adapter") -> str:
        """Upload the adapter as one commit (all files or none). Returns the commit URL."""
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(os.path.join(folder, "adapter"))
            return adapters.upload_folder(os.path.join(folder, "adapter"), repo_id, private, token, commit_message)


class PeftModelForCausalLM(PeftModel):
    """The causal-LM wrapper (PEFT's class name)."""


def has_encoder(source: nn.Module) -> bool:
    """True when a prompt source has parameters besides its table (an MLP, LSTM or projection)."""
    return set(source.state_dict()) != {"embedding.weight"}


def check_config_fits(config: PromptLearningConfig, shape, model_id) -> None:
    """The saved model-shape fields must be the ones this base model gives (layers, widths, KV heads)."""
    expected = dataclasses.replace(config)
    expected.fill_model_fields(shape)
    wrong = [
        f"{name}={getattr(config, name)} (this model: {getattr(expected, name)})"
        for name in ("num_layers", "token_dim", "num_attention_heads")
        if getattr(config, name) is not None and getattr(config, name) != getattr(expected, name)
    ]
    if wrong:
        raise adapters.AdapterError(
            f"The adapter {model_id} does not fit this base model: {', '.join(wrong)}; this base model needs other "
            f"shapes. The adapter was trained for {config.base_model_name_or_path!r}: load that base model."
        )


def check_table_fits(table: torch.Tensor, config: PromptLearningConfig, model: PeftModel) -> None:
    expected = (config.num_virtual_tokens, model.injection.table_width())
    if tuple(table.shape) != expected:
        shape = model.shape
        raise adapters.AdapterError(
            f"The adapter's prompt_embeddings has shape {tuple(table.shape)}, but this base model needs {expected} "
            f"(num_virtual_tokens={config.num_virtual_tokens}; model: hidden={shape.hidden_size}, layers={shape.num_layers}, "
            f"kv_heads={shape.num_kv_heads}, head_dim={shape.head_dim}). The adapter was trained for "
            f"{config.base_model_name_or_path!r}: load that base model."
        )


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, num_virtual: int) -> torch.Tensor:
    """Mean next-token cross-entropy over labels != -100.

    logits [B, T, V] are the last T positions; row t predicts the token at row t+1. With virtual
    rows in front, the last of them predicts the first input token (as in PEFT).
    """
    start = max(num_virtual - 1, 0)
    predictions = logits[:, start:-1]  # [B, N, V]
    targets = labels[:, labels.shape[1] - predictions.shape[1] :]  # [B, N], end-aligned
    return F.cross_entropy(predictions.float().reshape(-1, predictions.shape[-1]), targets.reshape(-1), ignore_index=-100)


def get_peft_model(model: nn.Module, peft_config: PromptLearningConfig, adapter_name: str = "default", **_) -> PeftModel:
    """Freeze `model` and attach a new prompt described by `peft_config`."""
    return PeftModelForCausalLM(model, peft_config, adapter_name)


class AutoPeftModelForCausalLM:
    """Load an adapter and its base model from the adapter folder (or hub repo) alone."""

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, is_trainable: bool = False, base_model=None, **model_kwargs
    ) -> PeftModel:
        from .models import load_base_model

        config = PromptLearningConfig.from_pretrained(pretrained_model_name_or_path)
        if base_model is None:
            if not config.base_model_name_or_path:
                raise adapters.AdapterError(
                    f"{pretrained_model_name_or_path} does not name its base model (base_model_name_or_path is empty). "
                    "Load the base model yourself and use PeftModel.from_pretrained(model, adapter_dir)."
                )
            base_model = load_base_model(config.base_model_name_or_path, **model_kwargs)
        return PeftModelForCausalLM.from_pretrained(base_model, pretrained_model_name_or_path, is_trainable=is_trainable)
