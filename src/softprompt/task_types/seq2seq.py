"""Prompts for a frozen encoder-decoder model (T5, BART): task_type SEQ_2_SEQ_LM, PEFT's `PeftModelForSeq2SeqLM`.

- Prompt tuning and p-tuning (`EncoderTokens`): the virtual tokens come before the encoder's input, as PEFT places
  them. PEFT's adapter file holds a second block of P rows, for a decoder prompt these methods never read: we
  write zeros there and read the first P rows.
- Multitask prompt tuning: its table has those 2P rows for real, and (as in PEFT's forward) the second block comes
  before the decoder's input; logits and loss cover the decoder's real positions only ([B, T, V]; PEFT returns
  [B, P+T, V]). PEFT's `generate` leaves that decoder prompt out, so it generates from another model than the one
  it trained; ours runs the decoder over it first and generates what `forward` scores.
- Prefix tuning (`DecoderPrefix`): key/value prefixes for the decoder's self-attention, meaning what PEFT 0.21
  means (checked against its forward): PEFT views the table [P, L*2*kv] as 2L slots, repeats them and hands
  decoder layer i the (keys, values) at slots 4i and 4i+1 of the repetition (counted mod 2L). So on an L-layer
  decoder the layers from L/2 on reuse the first layers' prefixes and the odd slot pairs, which PEFT meant for
  cross-attention, are read by nothing: the encoder gets no prefix, and cross-attention sees the encoder alone.
  PEFT's own `generate` then drops the prefix altogether (transformers 5); ours generates what `forward` scores.
- `PrefixTuningConfig(encoder_prefix=True)` (softprompt's own) prefixes every encoder layer's self-attention too,
  as Li & Liang did, through transformers' attention interface (the prefix keys get no position bias), and gives
  each decoder layer its own slots: table [P, (L + L_enc) * 2 * kv], decoder layers first. PEFT cannot read it.
- Rows are grouped by adapter and each group runs as its own batch: an encoder sees prompt and text together
  and BART's decoder places tokens by absolute position, so a mixed batch equals each adapter's rows run alone.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AutoModelForSeq2SeqLM
from transformers.modeling_outputs import Seq2SeqLMOutput

from .. import registry
from ..compat import (
    PrefixCall,
    cache_argument,
    decoder_prefix_cache,
    filled_decoder_cache,
    prefix_attention_context,
    use_prefix_attention,
)
from ..config import PromptLearningConfig
from ..core import AutoPeftModel, PeftModel
from ..core.injection import EmbeddingPrefix, KVPrefix, Prefix, PromptStates, prepend_prompt
from ..methods.base import InjectionKind


class EncoderTokens(EmbeddingPrefix):
    """Virtual token embeddings [P, hidden] placed before the encoder's input; a table of 2P rows (multitask
    prompt tuning) places its second block before the decoder's input."""

    def encoder_inputs(self, wrapper, name, task, input_ids, inputs_embeds, attention_mask):
        """-> (input_ids, inputs_embeds, attention_mask) for the encoder, the prompt's rows before each row's text,
        and the decoder's virtual token embeddings [P, H] (rows P..2P of a 2P-row table) or None."""
        table = wrapper.prompt_table(name, task)  # [P, H] or [2P, H]
        virtual = self.config.num_virtual_tokens
        inputs_embeds = wrapper.offset_input(name, task, input_ids, inputs_embeds, attention_mask)  # DePT's offsets
        embeds, mask, _ = prepend_prompt(
            table[:virtual], wrapper.base_model.get_input_embeddings(), input_ids, inputs_embeds, attention_mask
        )
        return None, embeds, mask, (table[virtual:] if table.shape[0] > virtual else None)  # [B, P+L, H], [B, P+L]

    def decoder_prefix(self, wrapper, name, task, batch) -> Prefix | None:
        return None

    def encoder_context(self, wrapper, name, task, batch):
        return None

    def attach(self, model) -> None:
        """Prepare the base model for this injection (nothing to do)."""

    def file_table(self, table):
        return torch.cat([table, torch.zeros_like(table)])  # [2P, H]: PEFT's unused decoder block

    def table_from_file(self, table, num_virtual_tokens):
        return table[:num_virtual_tokens] if table.shape[0] == 2 * num_virtual_tokens else table


class DecoderPrefix(KVPrefix):
    """Key/value prefixes for the decoder's self-attention, table [P, L*2*kv] read as PEFT reads it; with
    `encoder_prefix`, table [P, (L + L_enc)*2*kv]: decoder layer i at slots 2i, 2i+1, then the encoder's layers."""

    @property
    def encoder_prefix(self) -> bool:
        return bool(getattr(self.config, "encoder_prefix", False))

    def table_width(self) -> int:
        encoder_layers = self.shape.encoder_layers if self.encoder_prefix else 0
        return (self.shape.num_layers + encoder_layers) * 2 * self.shape.kv_width

    def prompt_states(self, model, table, with_logits=False) -> PromptStates:
        """Per-layer keys/values [1, kv_heads, P, head_dim]: the decoder's layers, then (encoder_prefix) the
        encoder's."""
        shape, num_virtual = self.shape, table.shape[0]
        slots = table.shape[1] // shape.kv_width
        dtype = model.get_input_embeddings().weight.dtype
        kv = table.to(dtype).view(num_virtual, slots, shape.num_kv_heads, shape.head_dim)
        kv = kv.permute(1, 2, 0, 3).unsqueeze(1)  # [slots, 1, kv_heads, P, head_dim]
        if self.encoder_prefix:
            return PromptStates([(kv[2 * i], kv[2 * i + 1]) for i in range(slots // 2)])
        return PromptStates([(kv[(4 * i) % slots], kv[(4 * i + 1) % slots]) for i in range(shape.num_layers)])

    def encoder_inputs(self, wrapper, name, task, input_ids, inputs_embeds, attention_mask):
        return input_ids, inputs_embeds, attention_mask, None

    def decoder_prefix(self, wrapper, name, task, batch) -> Prefix:
        prefix = Prefix.shared(wrapper.prompt_states(name, task=task), batch)
        return Prefix(prefix.layers[: self.shape.num_layers], prefix.mask)

    def attach(self, model) -> None:
        """With encoder_prefix, route the model's attention through ours (once; it equals the model's own otherwise)."""
        if self.encoder_prefix and not use_prefix_attention(model):
            raise ValueError(
                f"{type(model).__name__}'s encoder attention cannot take a prefix: use encoder_prefix=False."
            )

    def encoder_context(self, wrapper, name, task, batch):
        """A context in which the encoder's attention takes the encoder's prefixes (None without encoder_prefix)."""
        if not self.encoder_prefix:
            return None
        prefix = Prefix.shared(wrapper.prompt_states(name, task=task), batch)
        return prefix_attention_context(PrefixCall(prefix.layers[self.shape.num_layers :], prefix.mask))


class PeftModelForSeq2SeqLM(PeftModel):
    """A frozen encoder-decoder and one or more prompts. Logits are the decoder's [B, T, V]."""

    encoder_decoder = True
    generates = True
    injection_map = {InjectionKind.EMBEDDINGS: EncoderTokens, InjectionKind.KV_PREFIX: DecoderPrefix}

    def add_adapter(
        self, adapter_name: str, peft_config: PromptLearningConfig, prompt_source: nn.Module | None = None
    ) -> None:
        super().add_adapter(adapter_name, peft_config, prompt_source)
        self.injections[adapter_name].attach(self.base_model)

    def row_groups(self, adapter_names, task_ids, batch: int) -> dict[tuple, list[int]]:
        """{(adapter or None, task): the rows that use it}, in first-seen order."""
        if self.adapters_disabled:
            rows = [None] * batch
        elif adapter_names is None:
            rows = [self.active_adapter] * batch
        else:
            rows = self.row_adapters(adapter_names, batch)
        tasks = self.row_tasks(task_ids, rows) if any(rows) else [0] * batch
        groups: dict[tuple, list[int]] = {}
        for row, key in enumerate(zip(rows, tasks)):
            groups.setdefault(key, []).append(row)
        return groups

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        adapter_names: list[str | None] | None = None,
        task_ids=None,
        **kwargs,
    ) -> Seq2SeqLMOutput:
        """Decoder logits [B, T, V]; loss over `labels` != -100 (the decoder input is `labels` shifted right when
        no decoder_input_ids are given, as the base model does)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        batch = (input_ids if input_ids is not None else inputs_embeds).shape[0]
        inputs = dict(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            decoder_inputs_embeds=decoder_inputs_embeds,
            labels=labels,
        )
        groups = self.row_groups(adapter_names, task_ids, batch)
        if len(groups) == 1:
            (name, task), _ = next(iter(groups.items()))
            output = self.group_forward(name, task, inputs, kwargs)
            return Seq2SeqLMOutput(loss=output.loss, logits=output.logits)
        logits = None
        for (name, task), rows in groups.items():
            index = torch.tensor(rows, device=(input_ids if input_ids is not None else inputs_embeds).device)
            part = {key: None if value is None else value.index_select(0, index) for key, value in inputs.items()}
            part_logits = self.group_forward(
                name, task, {**part, "labels": None} if labels is None else part, kwargs
            ).logits
            if logits is None:
                logits = part_logits.new_empty(batch, *part_logits.shape[1:])  # [B, T, V]
            logits[index] = part_logits
        loss = None
        if labels is not None:  # the base models' loss: mean cross-entropy over labels != -100
            loss = F.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]), labels.to(logits.device).reshape(-1), ignore_index=-100
            )
        return Seq2SeqLMOutput(loss=loss, logits=logits)

    def group_forward(self, name, task, inputs: dict, kwargs: dict):
        """One adapter's rows (or the bare model's, name None) through the base model."""
        base = self.base_model
        if name is None:
            return base(**inputs, **kwargs)
        injection = self.injections[name]
        input_ids, inputs_embeds, attention_mask, tokens = injection.encoder_inputs(
            self, name, task, inputs["input_ids"], inputs["inputs_embeds"], inputs["attention_mask"]
        )
        inputs = {**inputs, "input_ids": input_ids, "inputs_embeds": inputs_embeds, "attention_mask": attention_mask}
        batch = (input_ids if input_ids is not None else inputs_embeds).shape[0]
        inputs.update(self.encoded(injection, name, task, batch, inputs))
        if tokens is not None:  # [P, H] before the decoder's input; its P positions are dropped from the logits
            output = base(**self.decoder_prompted(tokens, inputs), use_cache=False, **kwargs)
            return Seq2SeqLMOutput(loss=output.loss, logits=output.logits[:, tokens.shape[0] :])
        prefix = injection.decoder_prefix(self, name, task, batch)
        extra = {}
        if prefix is not None:
            extra[cache_argument(base)] = decoder_prefix_cache(prefix.layers)
            if inputs["decoder_attention_mask"] is not None:
                inputs["decoder_attention_mask"] = torch.cat(
                    [prefix.mask.to(inputs["decoder_attention_mask"].dtype), inputs["decoder_attention_mask"]], dim=1
                )  # [B, P+T]
        return base(**inputs, use_cache=False, **extra, **kwargs)

    def decoder_prompted(self, tokens: torch.Tensor, inputs: dict) -> dict:
        """The base model's inputs with `tokens` [P, H] before the decoder's input embeddings (the input is `labels`
        shifted right when not given, as the base model does); P more mask ones, P more -100 labels."""
        ids, embeds, labels, mask = (
            inputs[key] for key in ("decoder_input_ids", "decoder_inputs_embeds", "labels", "decoder_attention_mask")
        )
        if ids is None and embeds is None:
            if labels is None:
                raise ValueError("Pass decoder_input_ids, decoder_inputs_embeds or labels.")
            ids = self.base_model.prepare_decoder_input_ids_from_labels(labels=labels)
        if embeds is None:
            embeds = self.base_model.get_input_embeddings()(ids)  # [B, T, H]
        batch, virtual = embeds.shape[0], tokens.shape[0]
        embeds = torch.cat([tokens.to(embeds.dtype).expand(batch, -1, -1), embeds], dim=1)  # [B, P+T, H]
        if mask is not None:
            mask = torch.cat([mask.new_ones(batch, virtual), mask], dim=1)
        if labels is not None:
            labels = torch.cat([labels.new_full((batch, virtual), -100), labels], dim=1)
        return {
            **inputs,
            "decoder_input_ids": None,
            "decoder_inputs_embeds": embeds,
            "decoder_attention_mask": mask,
            "labels": labels,
        }

    def encoded(self, injection, name, task, batch, inputs: dict) -> dict:
        """With an encoder prefix, the encoder runs here under it: -> the base model's encoder_outputs in place of
        input_ids. Else {}."""
        context = injection.encoder_context(self, name, task, batch)
        if context is None:
            return {}
        with context:
            outputs = self.base_model.get_encoder()(
                input_ids=inputs["input_ids"],
                inputs_embeds=inputs["inputs_embeds"],
                attention_mask=inputs["attention_mask"],
            )
        return {"input_ids": None, "inputs_embeds": None, "encoder_outputs": outputs}

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        adapter_names=None,
        task_ids=None,
        **kwargs,
    ):
        """`transformers` generation (greedy, sampling, beams...); returns the decoder's tokens as the base model does.
        `adapter_names`, `task_ids`: one per row; a mixed batch generates each adapter's rows as a group."""
        if input_ids is None:
            raise ValueError("generate() needs input_ids.")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        groups = self.row_groups(adapter_names, task_ids, input_ids.shape[0])
        if len(groups) == 1:
            (name, task), _ = next(iter(groups.items()))
            return self.group_generate(name, task, input_ids, attention_mask, kwargs)
        if kwargs.get("return_dict_in_generate"):
            raise ValueError(
                "return_dict_in_generate with several adapters in one batch: call generate once per adapter."
            )
        settings = kwargs.get("generation_config") or self.base_model.generation_config
        copies = kwargs.get("num_return_sequences", settings.num_return_sequences) or 1  # output rows per input row
        pad = settings.pad_token_id if settings.pad_token_id is not None else 0
        results, order = [], []
        for (name, task), rows in groups.items():
            index = torch.tensor(rows, device=input_ids.device)
            results.append(self.group_generate(name, task, input_ids[index], attention_mask[index], dict(kwargs)))
            order += [row * copies + k for row in rows for k in range(copies)]
        width = max(result.shape[1] for result in results)
        stacked = torch.cat([F.pad(result, (0, width - result.shape[1]), value=pad) for result in results])
        output = torch.empty_like(stacked)
        output[torch.tensor(order, device=stacked.device)] = stacked
        return output

    def group_generate(self, name, task, input_ids, attention_mask, kwargs: dict):
        base = self.base_model
        if name is None:
            return base.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        injection = self.injections[name]
        input_ids, inputs_embeds, attention_mask, tokens = injection.encoder_inputs(
            self, name, task, input_ids, None, attention_mask
        )
        batch = attention_mask.shape[0]
        settings = kwargs.get("generation_config") or base.generation_config
        expand = max(
            kwargs.get("num_beams", settings.num_beams) or 1,
            kwargs.get("num_return_sequences", settings.num_return_sequences) or 1,
        )
        prefix = injection.decoder_prefix(self, name, task, batch * expand)  # rows as generate expands them
        if prefix is None and tokens is None:  # the prompt is in the encoder's input
            return base.generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)
        encoder = self.encoded(
            injection,
            name,
            task,
            batch,
            {"input_ids": input_ids, "inputs_embeds": inputs_embeds, "attention_mask": attention_mask},
        )
        if not encoder:
            encoder["encoder_outputs"] = base.get_encoder()(
                input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask
            )
        if tokens is not None:  # the decoder runs over its virtual tokens first (they attend to the encoder)
            first = base(
                encoder_outputs=encoder["encoder_outputs"],
                attention_mask=attention_mask,
                use_cache=True,
                decoder_inputs_embeds=tokens.to(base.dtype).expand(batch, -1, -1),
            )
            cache, virtual_mask = first.past_key_values, attention_mask.new_ones(batch, tokens.shape[0])
            if expand > 1:
                cache.batch_repeat_interleave(expand)
        else:
            cache, virtual_mask = filled_decoder_cache(base, prefix.layers), prefix.mask[::expand]
        # The cache stands for P decoder positions that have no ids: placeholders generate will not embed.
        num_virtual = virtual_mask.shape[1]
        start = kwargs.pop("decoder_input_ids", None)
        if start is None:
            first = settings.decoder_start_token_id
            first = base.config.decoder_start_token_id if first is None else first
            start = torch.full((batch, 1), first, dtype=torch.long, device=attention_mask.device)
        placeholder = int(start[0, 0])  # generate puts a start token before ids that do not begin with one
        kwargs["decoder_input_ids"] = torch.cat([start.new_full((batch, num_virtual), placeholder), start], dim=1)
        kwargs["decoder_attention_mask"] = torch.cat(
            [virtual_mask.to(start.dtype), torch.ones_like(start)], dim=1
        )  # [B, P+T]
        for length_key in ("max_length", "min_length"):
            if kwargs.get(length_key) is not None:
                kwargs[length_key] += num_virtual
        if (
            kwargs.get("max_length") is None
            and kwargs.get("max_new_tokens") is None
            and settings.max_new_tokens is None
        ):
            kwargs["max_length"] = settings.max_length + num_virtual
        kwargs[cache_argument(base)] = cache
        output = base.generate(encoder_outputs=encoder["encoder_outputs"], attention_mask=attention_mask, **kwargs)
        if isinstance(output, torch.Tensor):
            return output[:, num_virtual:]
        output.sequences = output.sequences[:, num_virtual:]
        return output


class AutoPeftModelForSeq2SeqLM(AutoPeftModel):
    """Load a SEQ_2_SEQ_LM adapter and its encoder-decoder base model from the adapter folder (or hub repo) alone."""

    task_type = "SEQ_2_SEQ_LM"


registry.register_task_type("SEQ_2_SEQ_LM", PeftModelForSeq2SeqLM, AutoModelForSeq2SeqLM)
