"""OpenAI's endpoints: /v1/models, /v1/completions, /v1/chat/completions (streamed as server-sent events on
request). `model` names an adapter, or the base model itself, as vLLM does for LoRA adapters.

A request's prompts (a completion's list of prompts) and choices (`n`) become separate engine jobs, so they batch
with every other request's; choice `prompt_index * n + k` is the k-th choice of that prompt, as OpenAI orders them.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from . import responses
from .schemas import APIError, ChatRequest, CompletionRequest, ContentPart, GenerationRequest, errors
from .service import Choices, Service, usage

router = APIRouter()


@router.get("/v1/models", response_model=responses.ModelList)
async def models(request: Request):
    service: Service = request.app.state.service

    def entry(name, parent):
        return {
            "id": name,
            "object": "model",
            "created": service.created,
            "owned_by": "softprompt",
            "root": service.base_name,
            "parent": parent,
        }

    adapters = service.predictor.adapter_names
    return {
        "object": "list",
        "data": [entry(service.base_name, None)] + [entry(name, service.base_name) for name in adapters],
    }


@router.post(
    "/v1/completions",
    response_model=responses.Completion,
    responses={**responses.streamed(responses.Completion), **errors(400, 404)},
)
async def completions(body: CompletionRequest, request: Request):
    service: Service = request.app.state.service
    adapter = service.adapter_for(body.model)
    texts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    prompts = [service.predictor.tokenizer(text)["input_ids"] for text in texts]
    return await complete(service, body, prompts, adapter, "text", body.max_tokens)


@router.post(
    "/v1/chat/completions",
    response_model=responses.ChatCompletion,
    responses={**responses.streamed(responses.ChatCompletion), **errors(400, 404)},
)
async def chat(body: ChatRequest, request: Request):
    service: Service = request.app.state.service
    adapter = service.adapter_for(body.model)
    tokenizer = service.predictor.tokenizer
    if not getattr(tokenizer, "chat_template", None):
        raise APIError(
            400, f"The base model {service.base_name!r} has no chat template: use /v1/completions.", "messages"
        )
    messages = [
        {"role": m.role, "content": m.content if isinstance(m.content, str) else text_parts(m.content)}
        for m in body.messages
    ]
    try:
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    except Exception as error:  # noqa: BLE001 - a template that refuses these messages (e.g. roles out of order)
        raise APIError(400, f"The chat template refused these messages: {error}", "messages") from error
    max_tokens = body.max_completion_tokens or body.max_tokens
    return await complete(service, body, [list(prompt["input_ids"])], adapter, "chat", max_tokens)


def text_parts(content: list[ContentPart] | None) -> str:
    """OpenAI's list-of-parts message content: the text parts, joined."""
    return "".join(part.text or "" for part in content or [] if part.type == "text")


async def complete(
    service: Service,
    body: GenerationRequest,
    prompts: list[list[int]],
    adapter: str | None,
    kind: str,
    max_tokens: int | None,
):
    choices = service.generation_jobs(body, prompts, adapter, max_tokens or 16)
    ident = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{secrets.token_hex(12)}"
    prompt_tokens = sum(len(prompt) for prompt in prompts)
    if body.stream:
        events = stream(service, choices, ident, body.model, kind, prompt_tokens)
        return StreamingResponse(events, media_type="text/event-stream")
    try:
        results = await asyncio.gather(*(service.run(c.job) for c in choices))
    finally:
        for c in choices:
            c.job.cancelled.set()  # after an error, the others stop early; a finished job ignores it
    answers = sorted((index, result) for c, result in zip(choices, results) for index in c.indices)
    completion_tokens = sum(result.completion_tokens for _, result in answers)
    return {
        "id": ident,
        "object": "chat.completion" if kind == "chat" else "text_completion",
        "created": int(time.time()),
        "model": body.model,
        "choices": [answer(index, result.text, result.finish_reason, kind) for index, result in answers],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def answer(index: int, text: str, finish_reason: str, kind: str) -> dict:
    if kind == "chat":
        return {"index": index, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}
    return {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}


def chunk(ident: str, model: str, kind: str, index: int, text: str, finish=None, role=False, usage=None) -> str:
    """One server-sent event: a piece of one choice, in the shape of the endpoint's objects."""
    if kind == "chat":
        delta = {"role": "assistant", "content": text} if role else ({"content": text} if text else {})
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
    else:
        choice = {"index": index, "text": text, "logprobs": None, "finish_reason": finish}
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
    event = {"id": ident, "object": obj, "created": int(time.time()), "model": model, "choices": [choice]}
    if usage is not None:
        event["usage"] = usage
    return f"data: {json.dumps(event)}\n\n"


class Stream:
    """The text one job has streamed so far (its choices get the same pieces)."""

    def __init__(self, choices: Choices):
        self.choices, self.ids, self.sent, self.stopped = choices, [], "", False

    def piece(self, service: Service, token: int) -> str:
        """The new text after one more token ('' while a character or a stop string is incomplete)."""
        if self.stopped or token in service.eos_ids:
            return ""
        self.ids.append(token)
        text = service.predictor.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""  # half a character: wait for the rest
        stop = self.choices.job.stop
        if stop and any(s in text for s in stop):
            self.stopped = True  # the final chunk carries the text before the stop string
            return ""
        new, self.sent = text[len(self.sent) :], text
        return new


async def stream(service: Service, choices: list[Choices], ident: str, model: str, kind: str, prompt_tokens: int):
    """Server-sent events as the tokens come, each choice's under its index; a client that goes away cancels."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    streams = [Stream(c) for c in choices]
    futures = []
    for number, c in enumerate(choices):
        c.job.on_token = lambda token, number=number: loop.call_soon_threadsafe(events.put_nowait, (number, token))
        future = asyncio.wrap_future(service.engine.submit(c.job))
        future.add_done_callback(lambda _, number=number: events.put_nowait((number, None)))
        futures.append(future)
    try:
        if kind == "chat":
            for index in sorted(i for c in choices for i in c.indices):
                yield chunk(ident, model, kind, index, "", role=True)
        left, completion_tokens = len(choices), 0
        while left:
            number, token = await events.get()
            current = streams[number]
            if token is not None:
                text = current.piece(service, token)
                for index in current.choices.indices if text else ():
                    yield chunk(ident, model, kind, index, text)
                continue
            left -= 1
            try:
                result = futures[number].result()
            except Exception as error:  # noqa: BLE001 - report it in the stream, whatever it was
                yield f"data: {json.dumps({'error': {'message': str(error), 'type': 'server_error'}})}\n\n"
                return
            completion_tokens += result.completion_tokens * len(current.choices.indices)
            rest = result.text[len(current.sent) :] if result.text.startswith(current.sent) else ""
            for index in current.choices.indices:
                total = (
                    usage(prompt_tokens, completion_tokens)
                    if not left and index == current.choices.indices[-1]
                    else None
                )
                yield chunk(ident, model, kind, index, rest, result.finish_reason, usage=total)
        yield "data: [DONE]\n\n"
    finally:
        for c in choices:
            c.job.cancelled.set()  # a finished job ignores it; a client that left frees the worker
