"""Causal language models (task_type CAUSAL_LM): the wrapper's forward, label scoring and generation, and how
`softprompt train`, evaluation and the Predictor classify with it: each class's label words are scored after the
templated row (rank classification), or generated and matched.

Rows are `{template}{label}<eos>`, left-padded, with the loss on the label. The prompt's states run once per
batch (see core.injection); with one adapter, as in PEFT, the last virtual position predicts a label on the
first input token.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM
from transformers.modeling_outputs import CausalLMOutputWithPast

from .. import registry
from ..compat import accepts_position_ids, cache_argument, filled_cache, frozen_prefix_cache, layer_states
from ..core import AutoPeftModel, PeftModel
from ..core.injection import offsets_on_input, positions_from_mask
from ..data import Example, RowTokenizer, collate_training, pad_left, row_task_ids, sorted_batches
from .base import TaskBehaviour


class PeftModelForCausalLM(PeftModel):
    """A frozen causal LM and one or more prompts: logits aligned with the input, label scoring, generation."""

    generates = True

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        logits_to_keep: int = 0,
        adapter_names: list[str | None] | None = None,
        task_ids=None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Logits [B, L, V] aligned with `input_ids` (no virtual positions); loss over `labels` != -100.

        `logits_to_keep=K` computes the LM head for the last K positions only (logits [B, K, V]): with
        left padding and labels at the end of each row, K = longest label + 1 is all a loss needs.
        `adapter_names`: one adapter name per row (None or "__base__": the bare model); default: the active
        adapter for every row. With one adapter, as in PEFT, the last virtual position predicts a label on
        the first input token; in a mixed batch the first input token is not predicted (as for a bare model).
        `task_ids`: one task id per row, for adapters with several tasks (multitask prompt tuning).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        for unsupported in ("past_key_values", "cache"):
            if kwargs.pop(unsupported, None) is not None:
                raise ValueError(f"{unsupported} is not supported in forward(); use generate() for cached decoding.")
        kwargs.pop("use_cache", None)
        if logits_to_keep:
            kwargs["logits_to_keep"] = logits_to_keep
        batch, length = (input_ids if input_ids is not None else inputs_embeds).shape[:2]
        # a method with a loss of its own (CPT) gets it when its adapter serves the whole batch
        source = (
            None
            if adapter_names is not None or self.adapters_disabled or self.active_adapter is None
            else self.prompt_source
        )
        own_loss = source is not None and source.has_own_loss and labels is not None
        loss_inputs = {name: kwargs.pop(name) for name in registry.loss_inputs() if kwargs.get(name) is not None}
        for name in set(loss_inputs) - set(source.loss_inputs if own_loss else ()):
            readers = "/".join(m.peft_type for m in registry.methods() if name in m.source_class.loss_inputs)
            raise ValueError(f"{name} is for {readers} adapters (with labels); this adapter does not use it.")
        wanted = source.prompt_logits if own_loss else labels is not None
        prefix, prompt_logits = self.batch_prefix(batch, adapter_names, wanted, task_ids)
        last_virtual_logits = None if prompt_logits is None else prompt_logits[:, -1:]  # [1, 1, V]
        logits = self.run_decoder(
            prefix, adapter_names, task_ids, input_ids, inputs_embeds, attention_mask, position_ids, **kwargs
        ).logits  # [B, T, V]: the last T input positions
        if own_loss:
            return CausalLMOutputWithPast(loss=source.loss(prompt_logits, logits, labels, **loss_inputs), logits=logits)
        num_virtual = 0
        if last_virtual_logits is not None and logits.shape[1] == length:  # it predicts the first input token
            logits = torch.cat([last_virtual_logits.expand(batch, -1, -1), logits], dim=1)  # [B, 1+L, V]
            num_virtual = 1
        if logits_to_keep and labels is not None and (labels[:, : max(length - logits.shape[1] + 1, 0)] != -100).any():
            raise ValueError(
                f"Some labels lie before the last logits_to_keep={logits_to_keep} positions, so no logits predict "
                "them: raise logits_to_keep to the longest label + 1, or leave it at 0 (all positions)."
            )
        loss = None if labels is None else causal_lm_loss(logits, labels, num_virtual)
        return CausalLMOutputWithPast(loss=loss, logits=logits[:, num_virtual:])

    @torch.no_grad()
    def score_continuations(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, continuations, adapter_names=None, task_ids=None
    ) -> torch.Tensor:
        """Summed log-probability of each continuation after each left-padded input: [B, K].

        `continuations`: token-id lists shared by every row, or one such list per row (rows may then have
        different counts K_i; scores are [B, max K_i], -inf past a row's own). The prompts and the inputs
        run once; each continuation then runs as a few tokens attending to their cache.
        """
        base, batch = self.base_model, input_ids.shape[0]
        per_row = continuations if isinstance(continuations[0][0], (list, tuple)) else [continuations] * batch
        if len(per_row) != batch:
            raise ValueError(f"continuations has {len(per_row)} per-row lists but the batch has {batch} rows.")
        prefix, _ = self.batch_prefix(batch, adapter_names, task_ids=task_ids)
        num_prefix = 0 if prefix is None else prefix.length
        with offsets_on_input(base, self.batch_offsets(batch, adapter_names, task_ids), num_prefix):
            return self.score_after_prefix(input_ids, attention_mask, per_row, prefix)

    def score_after_prefix(self, input_ids, attention_mask, per_row, prefix) -> torch.Tensor:
        """score_continuations' work once the batch's prefix is known: [B, max K_i]."""
        base, batch = self.base_model, input_ids.shape[0]
        num_prefix = 0 if prefix is None else prefix.length
        full_mask = (
            attention_mask if prefix is None else torch.cat([prefix.mask.to(attention_mask.dtype), attention_mask], 1)
        )
        cache = filled_cache(base, [] if prefix is None else prefix.layers)  # P prompt positions, then the inputs
        kwargs = {cache_argument(base): cache}
        if accepts_position_ids(base):
            kwargs["position_ids"] = positions_from_mask(full_mask)[:, num_prefix:]
        first = base(input_ids=input_ids, attention_mask=full_mask, use_cache=True, logits_to_keep=1, **kwargs).logits
        first = first[:, -1].float().log_softmax(-1)  # [B, V]: predicts each continuation's first token
        layers = layer_states(cache)  # now P+L positions
        next_position = full_mask.sum(-1, keepdim=True) if accepts_position_ids(base) else None  # [B, 1]
        scores = torch.full((batch, max(len(c) for c in per_row)), float("-inf"), device=first.device)
        for k in range(scores.shape[1]):
            tokens = [list(c[k]) if k < len(c) else None for c in per_row]
            present = torch.tensor([t is not None for t in tokens], device=first.device)
            width = max(len(t) for t in tokens if t is not None)
            ids = torch.tensor(
                [(t or [0]) + [(t or [0])[-1]] * (width - len(t or [0])) for t in tokens], device=input_ids.device
            )
            score = first.gather(1, ids[:, :1]).squeeze(1)  # [B]
            if width > 1:  # the rest of each continuation, right-padded: padding comes after, so it changes nothing
                kwargs = {cache_argument(base): frozen_prefix_cache(layers)}
                if next_position is not None:
                    kwargs["position_ids"] = next_position + torch.arange(width - 1, device=ids.device)
                mask = torch.cat([full_mask, full_mask.new_ones(batch, width - 1)], dim=1)
                logits = base(
                    input_ids=ids[:, :-1], attention_mask=mask, use_cache=False, **kwargs
                ).logits  # [B, n-1, V]
                rest = logits.float().log_softmax(-1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)  # [B, n-1]
                real = torch.tensor([len(t or [0]) - 1 for t in tokens], device=ids.device)  # tokens after the first
                score = score + (rest * (torch.arange(width - 1, device=ids.device) < real[:, None])).sum(-1)
            scores[:, k] = torch.where(present, score, scores[:, k])
        return scores

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        adapter_names=None,
        task_ids=None,
        **kwargs,
    ):
        """`transformers` generation (greedy, sampling, beams...) after the prompt; returns input + new tokens.

        `adapter_names`, `task_ids`: one per row, as in `forward`.
        """
        if input_ids is None:
            raise ValueError("generate() needs input_ids.")
        base = self.base_model
        batch = input_ids.shape[0]
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        settings = kwargs.get("generation_config") or base.generation_config
        expand = max(
            kwargs.get("num_beams", settings.num_beams) or 1,
            kwargs.get("num_return_sequences", settings.num_return_sequences) or 1,
        )
        if adapter_names is not None:
            adapter_names = [name for name in self.row_adapters(adapter_names, batch) for _ in range(expand)]
        if task_ids is not None:
            task_ids = [task for task in self.row_tasks(task_ids, [None] * batch) for _ in range(expand)]
        prefix, _ = self.batch_prefix(batch * expand, adapter_names, task_ids=task_ids)  # rows as generate expands them
        if prefix is None:
            return base.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        with offsets_on_input(base, self.batch_offsets(batch * expand, adapter_names, task_ids), prefix.length):
            return self.generate_after_prefix(input_ids, attention_mask, prefix, expand, settings, kwargs)

    def generate_after_prefix(self, input_ids, attention_mask, prefix, expand: int, settings, kwargs: dict):
        """generate()'s work once the batch's prefix (rows as generate expands them) is known."""
        base, batch = self.base_model, input_ids.shape[0]
        num_virtual = prefix.length
        # The cache stands for P positions that have no ids: give generate placeholders it will not embed.
        placeholder = settings.pad_token_id if settings.pad_token_id is not None else 0
        if isinstance(placeholder, (list, tuple)):
            placeholder = placeholder[0]
        full_ids = torch.cat([input_ids.new_full((batch, num_virtual), placeholder), input_ids], dim=1)
        full_mask = torch.cat([prefix.mask[::expand].to(attention_mask.dtype), attention_mask], dim=1)  # [B, P+L]
        if accepts_position_ids(base):
            kwargs["position_ids"] = positions_from_mask(full_mask)  # grows by one per step inside generate
        for length_key in ("max_length", "min_length"):
            if length_key in kwargs and kwargs[length_key] is not None:
                kwargs[length_key] += num_virtual
        if (
            kwargs.get("max_length") is None
            and kwargs.get("max_new_tokens") is None
            and settings.max_new_tokens is None
        ):
            kwargs["max_length"] = settings.max_length + num_virtual
        kwargs[cache_argument(base)] = filled_cache(base, prefix.layers)  # [B*expand, ...]
        output = base.generate(input_ids=full_ids, attention_mask=full_mask, **kwargs)
        if isinstance(output, torch.Tensor):
            return output[:, num_virtual:]
        output.sequences = output.sequences[:, num_virtual:]
        return output


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, num_virtual: int) -> torch.Tensor:
    """Mean next-token cross-entropy over labels != -100.

    logits [B, T, V] are the last T positions; row t predicts the token at row t+1. With virtual
    rows in front, the last of them predicts the first input token (as in PEFT).
    """
    start = max(num_virtual - 1, 0)
    predictions = logits[:, start:-1]  # [B, N, V]
    targets = labels[:, labels.shape[1] - predictions.shape[1] :]  # [B, N], end-aligned
    return F.cross_entropy(
        predictions.float().reshape(-1, predictions.shape[-1]), targets.reshape(-1), ignore_index=-100
    )


class AutoPeftModelForCausalLM(AutoPeftModel):
    """Load a CAUSAL_LM adapter and its base model from the adapter folder (or hub repo) alone."""

    task_type = "CAUSAL_LM"


# ---- classifying rows: label scoring --------------------------------------------------------
@torch.no_grad()
def score_rows(
    model,
    prompts: list[list[int]],
    continuations: list[list[list[int]]],
    pad_id: int,
    adapter_names: list[str | None] | None = None,
    batch_size: int = 16,
    progress: bool = True,
    task_ids: list[int] | None = None,
) -> torch.Tensor:
    """Summed log-likelihood of each row's continuations after its prompt: [N, max K] (-inf past a row's own K).

    Rows may each have their own adapter and their own continuations (e.g. several tasks in one stream);
    batches group rows of similar length, whatever their adapters. Each prompt runs once and its
    continuations run from its cache (see PeftModelForCausalLM.score_continuations). `task_ids`: one per row,
    for adapters with several task prompts (multitask prompt tuning).
    """
    scores = torch.full((len(prompts), max(len(c) for c in continuations)), float("-inf"))
    model.eval()
    for batch in tqdm(
        sorted_batches([len(p) for p in prompts], batch_size), desc="scoring labels", disable=not progress, leave=False
    ):
        input_ids = pad_left([prompts[i] for i in batch], pad_id).to(model.device)
        attention_mask = pad_left([[1] * len(prompts[i]) for i in batch], 0).to(model.device)
        names = None if adapter_names is None else [adapter_names[i] for i in batch]
        tasks = {} if task_ids is None else {"task_ids": [task_ids[i] for i in batch]}
        batch_scores = model.score_continuations(
            input_ids, attention_mask, [continuations[i] for i in batch], names, **tasks
        )
        scores[batch, : batch_scores.shape[1]] = batch_scores.cpu()
    return scores


def score_labels(
    model,
    rows: RowTokenizer,
    examples: list[Example],
    batch_size: int = 16,
    progress: bool = True,
    adapter_name: str | None = None,
) -> torch.Tensor:
    """Log-likelihood of each class's verbalized label (and EOS) after each prompt: [N, K]."""
    targets = [rows.target_ids(k) for k in range(len(rows.class_names))]
    names = None if adapter_name is None else [adapter_name] * len(examples)
    prompts = [e.prompt_ids for e in examples]
    return score_rows(
        model,
        prompts,
        [targets] * len(examples),
        rows.tokenizer.pad_token_id,
        names,
        batch_size,
        progress,
        row_task_ids(examples),
    )


def match_label(text: str, label_texts: list[str]) -> int:
    """Index of the label a generated text names (exact, else the longest label it starts with); -1 if none."""
    cleaned = text.strip().lower()
    candidates = [t.strip().lower() for t in label_texts]
    if cleaned in candidates:
        return candidates.index(cleaned)
    starts = [(len(c), k) for k, c in enumerate(candidates) if c and cleaned.startswith(c)]
    return max(starts)[1] if starts else -1


@torch.no_grad()
def classify_by_generation(
    model,
    rows: RowTokenizer,
    examples: list[Example],
    batch_size: int = 16,
    progress: bool = True,
    adapter_name: str | None = None,
) -> tuple[list[int], list[str]]:
    """Greedy generation after each prompt, mapped back to a class (-1: matched no label)."""
    tokenizer = rows.tokenizer
    label_texts = [rows.spec.label_text(name) for name in rows.class_names]
    max_new = max(len(rows.target_ids(k)) for k in range(len(label_texts))) + 1
    predictions, texts = [0] * len(examples), [""] * len(examples)
    model.eval()
    batches = sorted_batches([len(e.prompt_ids) for e in examples], batch_size)
    for batch in tqdm(batches, desc="generating", disable=not progress, leave=False):
        prompts = [examples[i].prompt_ids for i in batch]
        input_ids = pad_left(prompts, tokenizer.pad_token_id).to(model.device)
        attention_mask = pad_left([[1] * len(p) for p in prompts], 0).to(model.device)
        tasks = row_task_ids([examples[i] for i in batch])
        output = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            adapter_names=None if adapter_name is None else [adapter_name] * len(batch),
            **({} if tasks is None else {"task_ids": tasks}),
            max_new_tokens=max_new,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        for row, i in enumerate(batch):
            texts[i] = tokenizer.decode(output[row, input_ids.shape[1] :], skip_special_tokens=True)
            predictions[i] = match_label(texts[i], label_texts)
    return predictions, texts


class LabelScoring(TaskBehaviour):
    """A language model writes each class's label words; classes are ranked by their likelihood."""

    label_words = True
    mixes_adapters = True
    generates = True

    def __init__(self, examples: list[Example] | None = None):
        super().__init__(examples)
        self.keep = max((len(e.target_ids) for e in self.examples), default=1) + 1  # labels end every left-padded row

    def collate(self, examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
        return collate_training(examples, pad_id)

    def loss(self, model, batch: dict) -> torch.Tensor:
        return model(**batch, logits_to_keep=self.keep).loss  # the LM head only where labels are

    @staticmethod
    def weight(batch: dict) -> torch.Tensor:
        """Label tokens."""
        return (batch["labels"][:, 1:] != -100).sum()

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
        """[N, K]: each class's summed label log-likelihood."""
        return score_labels(model, rows, examples, batch_size, progress, adapter_name)

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
        """Class log-scores of rows that each have their own adapter and task (`rows_of[i]`, `names[i]`), batched
        together: a list of [K_i]."""
        targets = [[one.target_ids(k) for k in range(len(one.class_names))] for one in rows_of]
        scores = score_rows(
            model,
            [e.prompt_ids for e in examples],
            targets,
            pad_id,
            names,
            batch_size,
            progress,
            row_task_ids(examples),
        )  # [N, max K]
        return [row[: len(target)] for row, target in zip(scores, targets)]

    @staticmethod
    def eval_loss(scores: torch.Tensor, gold: list[int], rows: RowTokenizer) -> float:
        """The teacher-forced loss over the gold labels' tokens, from the scores (no second pass)."""
        label_tokens = sum(len(rows.target_ids(g)) for g in gold)
        return -scores[torch.arange(len(gold)), torch.tensor(gold)].sum().item() / label_tokens

    classify_by_generation = staticmethod(classify_by_generation)


registry.register_task_type("CAUSAL_LM", PeftModelForCausalLM, AutoModelForCausalLM, LabelScoring)
