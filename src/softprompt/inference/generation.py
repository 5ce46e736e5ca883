"""Generation from token ids with what an API reports: the text (cut before a stop string), the new token count
and why it ended. `Predictor.complete` and the server's engine run it; rows of any adapters share a batch."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from ..data import pad_left, sorted_batches


@dataclass
class Completion:
    """One generated continuation: its text, how many tokens it took (EOS included), why it ended."""

    text: str
    completion_tokens: int
    finish_reason: str  # "stop" (EOS, a stop string, or cancelled) or "length"
    prompt_tokens: int


class Cancelled(StoppingCriteria):
    """Ends every row when `should_stop()` says so (e.g. the client went away)."""

    def __init__(self, should_stop):
        self.should_stop = should_stop

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), bool(self.should_stop()), device=input_ids.device)


class TokenStreamer(BaseStreamer):
    """Calls `on_token(token_id)` for each new token of a one-prompt generation."""

    def __init__(self, on_token):
        self.on_token = on_token
        self.started = False

    def put(self, value):
        if self.started:  # the first call carries the prompt
            for token in value.reshape(-1).tolist():
                self.on_token(token)
        self.started = True

    def end(self):
        pass


@torch.no_grad()
def complete(
    model,
    tokenizer,
    prompts: list[list[int]],
    names: list[str | None],
    task_ids: list[int] | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 20,
    stop: list[str] | None = None,
    on_token=None,
    should_stop=None,
    skip_special_tokens: bool = True,
    **generate_kwargs,
) -> list[Completion]:
    """Completions of token-id prompts, one adapter (or None: the bare model) and task id per row, batched by
    length. `on_token(token_id)` streams (one prompt only); `should_stop()` returning True ends generation
    early. Other arguments go to transformers' generate (greedy unless do_sample=True)."""
    generate_kwargs.setdefault("do_sample", False)
    generate_kwargs.setdefault("pad_token_id", tokenizer.pad_token_id)
    if not generate_kwargs["do_sample"]:  # greedy: drop sampling settings the model's config may carry
        for name in ("temperature", "top_p", "top_k"):
            generate_kwargs.setdefault(name, None)
    if stop:
        generate_kwargs.update(stop_strings=list(stop), tokenizer=tokenizer)
    if should_stop is not None:
        generate_kwargs["stopping_criteria"] = StoppingCriteriaList([Cancelled(should_stop)])
    if on_token is not None:
        if len(prompts) != 1:
            raise ValueError("Streaming generates one prompt at a time.")
        generate_kwargs["streamer"] = TokenStreamer(on_token)
    count = generate_kwargs.get("num_return_sequences") or 1
    eos = eos_ids(model, generate_kwargs.get("eos_token_id"))
    results: list = [None] * (len(prompts) * count)
    for batch in sorted_batches([len(p) for p in prompts], batch_size):
        input_ids = pad_left([prompts[i] for i in batch], tokenizer.pad_token_id).to(model.device)
        attention_mask = pad_left([[1] * len(prompts[i]) for i in batch], 0).to(model.device)
        tasks = None if task_ids is None else {"task_ids": [task_ids[i] for i in batch]}
        output = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            adapter_names=[names[i] for i in batch],
            max_new_tokens=max_new_tokens,
            **(tasks or {}),
            **generate_kwargs,
        )
        for row, new in enumerate(output[:, input_ids.shape[1] :].tolist()):
            i = batch[row // count]
            results[i * count + row % count] = completion(
                tokenizer, new, eos, stop, max_new_tokens, len(prompts[i]), skip_special_tokens
            )
    return results


def eos_ids(model, given=None) -> set[int]:
    """The token ids that end a generation: `given`, else the base model's (a classifier has no generation config)."""
    if given is None:
        settings = getattr(model.base_model, "generation_config", None) or model.base_model.config
        given = settings.eos_token_id
    return set(given if isinstance(given, (list, tuple)) else [given]) - {None}


def completion(
    tokenizer, new: list[int], eos: set, stop, max_new_tokens: int, prompt_tokens: int, skip_special_tokens: bool
) -> Completion:
    """A row's new token ids -> its Completion (text up to EOS or a stop string)."""
    pad = tokenizer.pad_token_id
    while new and pad not in eos and new[-1] == pad:  # a row stopped early (stop string) is padded
        new = new[:-1]
    ended = next((n for n, token in enumerate(new) if token in eos), None)
    tokens = new if ended is None else new[:ended]
    text = tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)
    cut = min((text.find(s) for s in stop or [] if s and s in text), default=-1)
    if cut >= 0:
        text = text[:cut]
    finished = ended is not None or cut >= 0 or len(tokens) < max_new_tokens
    return Completion(text, len(tokens) + (ended is not None), "stop" if finished else "length", prompt_tokens)
