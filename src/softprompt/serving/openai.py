"""OpenAI's endpoints: /v1/models, /v1/completions, /v1/chat/completions (streamed as server-sent events on
request). `model` names an adapter, or the base model itself, as vLLM does for LoRA adapters."""

from __future__ import annotations

import asyncio
import json
import secrets
import time

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from ..inference.engine import GenerateJob
from .schemas import APIError, ChatRequest, CompletionRequest, GenerationRequest
from .service import Service, usage

router = APIRouter()


@router.get("/v1/models")
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


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request):
    service: Service = request.app.state.service
    adapter = service.adapter_for(body.model)
    if isinstance(body.prompt, list):
        if len(body.prompt) != 1:
            raise APIError(400, "Send one prompt per request (a string, or a list of one).", "prompt")
        body.prompt = body.prompt[0]
    prompt = service.predictor.tokenizer(body.prompt)["input_ids"]
    return await complete(service, body, prompt, adapter, "text", request)


@router.post("/v1/chat/completions")
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
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)[
        "input_ids"
    ]
    return await complete(service, body, list(prompt), adapter, "chat", request)


def text_parts(content: list[dict]) -> str:
    """OpenAI's list-of-parts message content: the text parts, joined."""
    return "".join(part.get("text", "") for part in content if part.get("type") == "text")


async def complete(
    service: Service, body: GenerationRequest, prompt: list[int], adapter: str | None, kind: str, request: Request
):
    job = service.generation_job(body, prompt, adapter)
    ident = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{secrets.token_hex(12)}"
    if body.stream:
        return StreamingResponse(stream(service, job, ident, body.model, kind), media_type="text/event-stream")
    result = await service.run(job)
    choice = {"index": 0, "finish_reason": result.finish_reason}
    if kind == "chat":
        choice["message"] = {"role": "assistant", "content": result.text}
    else:
        choice.update(text=result.text, logprobs=None)
    return {
        "id": ident,
        "object": "chat.completion" if kind == "chat" else "text_completion",
        "created": int(time.time()),
        "model": body.model,
        "choices": [choice],
        "usage": usage(result.prompt_tokens, result.completion_tokens),
    }


def chunk(ident: str, model: str, kind: str, text: str, finish=None, role: bool = False) -> dict:
    """One streamed piece, in the shape of the endpoint's objects."""
    if kind == "chat":
        delta = {"role": "assistant", "content": text} if role else ({"content": text} if text else {})
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "choices": [choice],
        }
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    return {"id": ident, "object": "text_completion", "created": int(time.time()), "model": model, "choices": [choice]}


async def stream(service: Service, job: GenerateJob, ident: str, model: str, kind: str):
    """Server-sent events as the tokens come; a client that goes away cancels the job."""
    loop = asyncio.get_running_loop()
    tokens: asyncio.Queue = asyncio.Queue()
    job.on_token = lambda token: loop.call_soon_threadsafe(tokens.put_nowait, token)
    future = asyncio.wrap_future(service.engine.submit(job))
    future.add_done_callback(lambda _: tokens.put_nowait(None))
    ids, sent = [], ""
    try:
        if kind == "chat":
            yield f"data: {json.dumps(chunk(ident, model, kind, '', role=True))}\n\n"
        while True:
            token = await tokens.get()
            if token is None:
                break
            if token in service.eos_ids:
                continue
            ids.append(token)
            text = service.predictor.tokenizer.decode(ids, skip_special_tokens=True)
            if text.endswith("\ufffd"):
                continue  # half a character: wait for the rest
            if job.stop and any(s in text for s in job.stop):
                break  # the final chunk below carries the text before the stop string
            if text[len(sent) :]:
                yield f"data: {json.dumps(chunk(ident, model, kind, text[len(sent) :]))}\n\n"
                sent = text
        try:
            result = await future
        except Exception as error:  # noqa: BLE001 - report it in the stream, whatever it was
            yield f"data: {json.dumps({'error': {'message': str(error), 'type': 'server_error'}})}\n\n"
            return
        rest = result.text[len(sent) :] if result.text.startswith(sent) else ""
        final = chunk(ident, model, kind, rest, result.finish_reason)
        final["usage"] = usage(result.prompt_tokens, result.completion_tokens)
        yield f"data: {json.dumps(final)}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        job.cancelled.set()  # a finished job ignores it; a client that left frees the worker
