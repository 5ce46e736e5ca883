"""Which prompt each row of a batch gets: its adapter (or none: the bare base model) and task, and from them the
batch's `Prefix` (per-layer keys/values of the virtual positions) and input offsets (DePT's). A mixin of PeftModel:
it uses PeftModel's prompt_encoder, active_adapter, adapters_disabled, check_known and prompt_states."""

from __future__ import annotations

import torch

from .injection import Prefix, add_offsets, offsets_on_input, run_with_prefix, stack_offsets

BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in adapter_names


class BatchPromptsMixin:
    """Per-row adapters and tasks, the batch prefix and the batch's input offsets."""

    def row_adapters(self, adapter_names, batch: int) -> list[str | None]:
        if len(adapter_names) != batch:
            raise ValueError(
                f"adapter_names has {len(adapter_names)} entries but the batch has {batch} rows: give one per row."
            )
        rows = [None if name in (None, BASE_ADAPTER) else name for name in adapter_names]
        for name in set(rows) - {None}:
            self.check_known(name)
        return rows

    def row_tasks(self, task_ids, rows: list[str | None]) -> list[int]:
        """One task id per row (default 0); an adapter with several tasks needs them given."""
        if task_ids is None:
            for name in set(rows) - {None}:
                if self.prompt_encoder[name].num_tasks > 1:
                    raise ValueError(f"Adapter {name!r} has several tasks: pass task_ids, one task id per row.")
            return [0] * len(rows)
        tasks = [int(t) for t in (task_ids.tolist() if isinstance(task_ids, torch.Tensor) else task_ids)]
        if len(tasks) != len(rows):
            raise ValueError(f"task_ids has {len(tasks)} entries but the batch has {len(rows)} rows: give one per row.")
        return tasks

    def batch_rows(self, batch: int, adapter_names=None, task_ids=None) -> tuple[list[str | None], list[int]]:
        """-> (adapter name per row, None for the bare model; task id per row)."""
        if self.adapters_disabled or (adapter_names is None and self.active_adapter is None):
            return [None] * batch, [0] * batch
        rows = [self.active_adapter] * batch if adapter_names is None else self.row_adapters(adapter_names, batch)
        return rows, self.row_tasks(task_ids, rows)

    def batch_prefix(self, batch: int, adapter_names=None, with_logits: bool | str = False, task_ids=None):
        """-> (Prefix for `batch` rows or None for the bare model, virtual positions' logits [1, n, V] or None)."""
        rows, tasks = self.batch_rows(batch, adapter_names, task_ids)
        if adapter_names is None and rows[0] is not None and len(set(tasks)) == 1:  # every row the same prompt
            states = self.prompt_states(self.active_adapter, with_logits, tasks[0])
            return Prefix.shared(states, batch), states.logits
        if not any(rows):
            return None, None
        keys = list(zip(rows, tasks))
        states = {(name, task): self.prompt_states(name, task=task) for name, task in set(keys) if name is not None}
        template = next(iter(states.values())).layers
        return Prefix.per_row([states.get(key) for key in keys], template), None

    def batch_offsets(self, batch: int, adapter_names=None, task_ids=None) -> torch.Tensor | None:
        """The rows' input offsets [B, s, H] (DePT; zeros for rows whose adapter has none), or None if none has any."""
        keys = list(zip(*self.batch_rows(batch, adapter_names, task_ids)))
        tables = {(name, task): self.prompt_encoder[name].input_offsets(task) for name, task in set(keys) if name}
        return stack_offsets([tables.get(key) for key in keys])

    def offset_input(self, name: str, task: int, input_ids, inputs_embeds, attention_mask):
        """The input's embeddings [B, L, H] with adapter `name`'s offsets (DePT); `inputs_embeds` as given if none."""
        offsets = self.prompt_encoder[name].input_offsets(task)
        if offsets is None:
            return inputs_embeds
        if inputs_embeds is None:
            inputs_embeds = self.base_model.get_input_embeddings()(input_ids)
        return add_offsets(inputs_embeds, offsets.expand(inputs_embeds.shape[0], -1, -1), attention_mask)

    def run_decoder(self, prefix, adapter_names, task_ids, input_ids, inputs_embeds, mask, position_ids, **kwargs):
        """The base model (a decoder) on the batch after its `prefix` (from batch_prefix, or None), the rows' input
        offsets (DePT) added to their first tokens. Returns the model's output for the L input positions."""
        batch = (input_ids if input_ids is not None else inputs_embeds).shape[0]
        offsets = self.batch_offsets(batch, adapter_names, task_ids)  # [B, s, H] or None
        with offsets_on_input(self.base_model, offsets, 0 if prefix is None else prefix.length):
            return run_with_prefix(self.base_model, prefix, input_ids, inputs_embeds, mask, position_ids, **kwargs)
