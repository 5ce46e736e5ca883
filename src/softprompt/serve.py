"""`softprompt serve`: many soft prompts on one frozen model over HTTP, OpenAI-compatible.

    softprompt serve --adapter complaints=runs/complaints/adapter --adapter hate=me/hate-prompt [--api-key KEY]

Endpoints (`model` names an adapter, or the base model itself, as vLLM does for LoRA adapters):
  POST /v1/completions, /v1/chat/completions   OpenAI's; max_tokens, temperature, top_p, stop, seed, stream
  POST /v1/classify                            {"model", "input": [texts or rows]} -> label + probabilities
  GET  /v1/models                              the base model and every adapter
  POST /v1/load_adapter, /v1/unload_adapter    vLLM's names (lora_name, lora_path); need --api-key
  GET  /health, /metrics                       liveness; Prometheus text
Requests that arrive together are computed together, whatever adapters they name (engine.py). Bad
requests get a 4xx in OpenAI's error format naming the field; they never disturb the others.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from typing import Literal, Union

from .engine import CallJob, Engine, GenerateJob, ScoreJob
from .model import UnknownAdapterError
from .predictor import Predictor

try:
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
    from pydantic import BaseModel, ConfigDict, Field
except ImportError as error:  # pragma: no cover - the message is the point
    raise ImportError("softprompt serve needs FastAPI and uvicorn: pip install 'softprompt[serve]'") from error


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind


def error_response(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": status}}, status_code=status)


# ---- request bodies (unknown fields are accepted and ignored, as clients send extras) ----------
class ModelRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str


class GenerationRequest(ModelRequest):
    max_tokens: int | None = Field(default=16, ge=1)
    temperature: float | None = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float | None = Field(default=1.0, gt=0.0, le=1.0)
    stop: Union[str, list[str], None] = None
    seed: int | None = None
    stream: bool = False
    n: int = Field(default=1, ge=1, le=1)


class CompletionRequest(GenerationRequest):
    prompt: Union[str, list[str]]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: Union[str, list[dict], None] = None


class ChatRequest(GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)


class ClassifyRequest(ModelRequest):
    input: Union[str, dict[str, str], list[Union[str, dict[str, str]]]]


class LoadAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lora_name: str | None = None
    lora_path: str | None = None
    adapter_name: str | None = None
    adapter_path: str | None = None


# ---- metrics --------------------------------------------------------------------------------
class Metrics:
    def __init__(self, engine_adapters):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("softprompt_requests", "HTTP requests", ["endpoint", "status"], registry=self.registry)
        self.errors = Counter("softprompt_errors", "HTTP requests answered with an error", ["endpoint"], registry=self.registry)
        self.latency = Histogram("softprompt_request_seconds", "Request latency", ["endpoint"], registry=self.registry)
        self.queue = Histogram("softprompt_queue_seconds", "Time a job waits before its batch runs", registry=self.registry,
                               buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.batch = Histogram("softprompt_batch_rows", "Rows per executed batch", registry=self.registry,
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.tokens = Counter("softprompt_generated_tokens", "Tokens generated", registry=self.registry)
        self.adapters = Gauge("softprompt_adapters_loaded", "Adapters loaded", registry=self.registry)
        self.adapters.set_function(engine_adapters)

    def observe(self, batch_rows=None, queue_seconds=None, generated_tokens=None):
        if generated_tokens is not None:
            self.tokens.inc(generated_tokens)
        if batch_rows is not None:
            self.batch.observe(batch_rows)
        if queue_seconds is not None:
            self.queue.observe(queue_seconds)

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


# ---- the app --------------------------------------------------------------------------------
def create_app(predictor: Predictor, api_key: str | None = None, max_batch_size: int = 32, max_wait_ms: float = 5.0,
               mix_adapters: bool = True, base_name: str | None = None) -> FastAPI:
    """The ASGI app. Its engine thread starts and stops with the app's lifespan."""
    import contextlib

    metrics = Metrics(lambda: len(predictor.adapter_names))
    engine = Engine(predictor, max_batch_size, max_wait_ms, mix_adapters, observe=metrics.observe)
    base_name = base_name or predictor.model.base_model.name_or_path
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app):
        engine.start()
        yield
        await asyncio.to_thread(engine.stop)  # in-flight jobs finish first

    app = FastAPI(title="softprompt", lifespan=lifespan)
    app.state.engine = engine
    app.state.metrics = metrics

    @app.exception_handler(APIError)
    async def api_error(request, error: APIError):
        return error_response(error.status, error.message, error.param, error.kind)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, error: RequestValidationError):
        first = error.errors()[0]
        location = [str(part) for part in first.get("loc", ()) if part != "body"]
        if first.get("type") == "json_invalid":
            return error_response(400, f"The request body is not valid JSON: {first.get('msg')}.", None)
        field = ".".join(location) or None
        return error_response(400, f"Invalid field {field!r}: {first.get('msg')}." if field else first.get("msg"), field)

    @app.middleware("http")
    async def authenticate_and_count(request: Request, call_next):
        endpoint = request.url.path
        started = time.perf_counter()
        if api_key is not None and endpoint != "/health":
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                response = error_response(401, "Missing or wrong API key: send 'Authorization: Bearer KEY'.", None, "authentication_error")
                metrics.requests.labels(endpoint, "401").inc()
                metrics.errors.labels(endpoint).inc()
                return response
        response = await call_next(request)
        metrics.requests.labels(endpoint, str(response.status_code)).inc()
        if response.status_code >= 400:
            metrics.errors.labels(endpoint).inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
        return response

    # ---- helpers --------------------------------------------------------------------------
    def adapter_for(model: str) -> str | None:
        """The adapter a request's `model` names; None for the base model. 404 for anything else."""
        if model in predictor.adapter_names:
            return model
        if model == base_name:
            return None
        raise APIError(404, f"The model {model!r} does not exist. Loaded: {[base_name, *predictor.adapter_names]}.", "model", "NotFoundError")

    async def run(job):
        try:
            return await asyncio.wrap_future(engine.submit(job))
        except UnknownAdapterError as error:  # unloaded while the request waited
            raise APIError(404, str(error), "model", "NotFoundError") from error
        except (ValueError, TypeError) as error:
            raise APIError(400, str(error)) from error

    eos_ids = predictor.eos_ids()
    context = predictor.model.base_model.config.get_text_config()
    context_length = getattr(context, "max_position_embeddings", None) or getattr(context, "n_positions", None)

    def check_length(prompt: list[int], adapter: str | None, max_tokens: int) -> None:
        virtual = 0 if adapter is None else predictor.model.peft_config[adapter].num_virtual_tokens
        if context_length and len(prompt) + virtual + max_tokens > context_length:
            raise APIError(
                400,
                f"This request needs {len(prompt)} prompt tokens + {virtual} virtual tokens + max_tokens {max_tokens}, "
                f"more than the model's context of {context_length} tokens. Shorten the prompt or lower max_tokens.",
                "max_tokens" if len(prompt) + virtual < context_length else "prompt",
            )

    def generation_job(body: GenerationRequest, prompt: list[int], adapter: str | None) -> GenerateJob:
        for name in UNSUPPORTED:
            if (body.model_extra or {}).get(name):
                raise APIError(400, f"{name!r} is not supported by softprompt serve; leave it out.", name)
        max_tokens = body.max_tokens or 16
        check_length(prompt, adapter, max_tokens)
        temperature = 1.0 if body.temperature is None else body.temperature
        settings = {"do_sample": temperature > 0}
        if temperature > 0:
            settings.update(temperature=temperature, top_p=1.0 if body.top_p is None else body.top_p, top_k=None)
        stop = [body.stop] if isinstance(body.stop, str) else body.stop
        return GenerateJob(prompt, adapter, max_tokens, settings, stop or None, body.seed)

    async def complete(body: GenerationRequest, prompt: list[int], adapter: str | None, kind: str, request: Request):
        job = generation_job(body, prompt, adapter)
        ident = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{secrets.token_hex(12)}"
        if body.stream:
            return StreamingResponse(stream(job, ident, body.model, kind, request), media_type="text/event-stream")
        result = await run(job)
        choice = {"index": 0, "finish_reason": result.finish_reason}
        if kind == "chat":
            choice["message"] = {"role": "assistant", "content": result.text}
        else:
            choice.update(text=result.text, logprobs=None)
        return {
            "id": ident, "object": "chat.completion" if kind == "chat" else "text_completion", "created": int(time.time()),
            "model": body.model, "choices": [choice], "usage": usage(result.prompt_tokens, result.completion_tokens),
        }

    async def stream(job: GenerateJob, ident: str, model: str, kind: str, request: Request):
        """Server-sent events as the tokens come; a client that goes away cancels the job."""
        loop = asyncio.get_running_loop()
        tokens: asyncio.Queue = asyncio.Queue()
        job.on_token = lambda token: loop.call_soon_threadsafe(tokens.put_nowait, token)
        future = asyncio.wrap_future(engine.submit(job))
        future.add_done_callback(lambda _: tokens.put_nowait(None))
        ids, sent = [], ""

        def chunk(text, finish=None, role=False):
            if kind == "chat":
                delta = {"role": "assistant", "content": text} if role else ({"content": text} if text else {})
                choice = {"index": 0, "delta": delta, "finish_reason": finish}
                return {"id": ident, "object": "chat.completion.chunk", "created": int(time.time()), "model": model, "choices": [choice]}
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
            return {"id": ident, "object": "text_completion", "created": int(time.time()), "model": model, "choices": [choice]}

        try:
            if kind == "chat":
                yield f"data: {json.dumps(chunk('', role=True))}\n\n"
            while True:
                token = await tokens.get()
                if token is None:
                    break
                if token in eos_ids:
                    continue
                ids.append(token)
                text = predictor.tokenizer.decode(ids, skip_special_tokens=True)
                if text.endswith("\ufffd"):
                    continue  # half a character: wait for the rest
                if job.stop and any(s in text for s in job.stop):
                    break  # the final chunk below carries the text before the stop string
                if text[len(sent):]:
                    yield f"data: {json.dumps(chunk(text[len(sent):]))}\n\n"
                    sent = text
            try:
                result = await future
            except Exception as error:  # noqa: BLE001 - report it in the stream, whatever it was
                yield f"data: {json.dumps({'error': {'message': str(error), 'type': 'server_error'}})}\n\n"
                return
            rest = result.text[len(sent):] if result.text.startswith(sent) else ""
            final = chunk(rest, result.finish_reason)
            final["usage"] = usage(result.prompt_tokens, result.completion_tokens)
            yield f"data: {json.dumps(final)}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            job.cancelled.set()  # a finished job ignores it; a client that left frees the worker

    def usage(prompt_tokens: int, completion_tokens: int) -> dict:
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}

    # ---- endpoints --------------------------------------------------------------------------
    @app.get("/health")
    async def health():
        return {"status": "ok", "adapters": len(predictor.adapter_names)}

    @app.get("/metrics")
    async def metrics_text():
        return PlainTextResponse(metrics.text(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        entry = lambda name, parent: {"id": name, "object": "model", "created": created, "owned_by": "softprompt",
                                      "root": base_name, "parent": parent}
        return {"object": "list", "data": [entry(base_name, None)] + [entry(name, base_name) for name in predictor.adapter_names]}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        adapter = adapter_for(body.model)
        if isinstance(body.prompt, list):
            if len(body.prompt) != 1:
                raise APIError(400, "Send one prompt per request (a string, or a list of one).", "prompt")
            body.prompt = body.prompt[0]
        prompt = predictor.tokenizer(body.prompt)["input_ids"]
        return await complete(body, prompt, adapter, "text", request)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        adapter = adapter_for(body.model)
        if not getattr(predictor.tokenizer, "chat_template", None):
            raise APIError(400, f"The base model {base_name!r} has no chat template: use /v1/completions.", "messages")
        messages = [{"role": m.role, "content": m.content if isinstance(m.content, str) else text_parts(m.content)} for m in body.messages]
        prompt = predictor.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        return await complete(body, list(prompt), adapter, "chat", request)

    @app.post("/v1/classify")
    async def classify(body: ClassifyRequest):
        adapter = adapter_for(body.model)
        if adapter is None:
            raise APIError(400, "Classification needs an adapter with a task: name one in 'model'.", "model")
        inputs = [body.input] if isinstance(body.input, (str, dict)) else body.input
        if not inputs:
            raise APIError(400, "'input' is empty: send one or more texts.", "input")
        try:
            task = predictor.task(adapter)
            examples = predictor.examples(inputs, [adapter] * len(inputs))
        except ValueError as error:
            raise APIError(400, str(error), "input") from error
        scores = await run(ScoreJob(examples, [adapter] * len(examples)))
        data = []
        for index, row in enumerate(scores):
            probabilities = predictor.class_probabilities(adapter, row)
            data.append({"index": index, "label": task.class_names[int(probabilities.argmax())],
                         "probabilities": {c: float(p) for c, p in zip(task.class_names, probabilities)}})
        tokens = sum(len(e.prompt_ids) for e in examples)
        return {"object": "list", "model": body.model, "data": data, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    def require_admin():
        if api_key is None:
            raise APIError(403, "Loading and unloading adapters at run time needs a server started with --api-key.", None, "permission_error")

    @app.post("/v1/load_adapter")
    async def load_adapter(body: LoadAdapterRequest):
        require_admin()
        name, path = body.lora_name or body.adapter_name, body.lora_path or body.adapter_path
        if not name or not path:
            raise APIError(400, "Give lora_name and lora_path (or adapter_name and adapter_path).", "lora_name" if not name else "lora_path")
        if name == base_name or name in predictor.adapter_names:
            raise APIError(400, f"An adapter named {name!r} is already loaded: unload it first, or pick another name.", "lora_name")
        try:
            await run(CallJob(lambda: predictor.load_adapter(path, name)))
        except APIError as error:
            raise APIError(400, f"Could not load adapter {name!r} from {path!r}: {error.message}", "lora_path") from error
        return {"status": "ok", "loaded": name}

    @app.post("/v1/unload_adapter")
    async def unload_adapter(body: LoadAdapterRequest):
        require_admin()
        name = body.lora_name or body.adapter_name
        if not name:
            raise APIError(400, "Give lora_name (or adapter_name).", "lora_name")
        adapter_for(name)  # 404 if unknown
        await run(CallJob(lambda: predictor.unload_adapter(name)))
        return {"status": "ok", "unloaded": name}

    return app


UNSUPPORTED = ("logprobs", "top_logprobs", "echo", "best_of", "suffix", "tools", "functions", "response_format")


def text_parts(content: list[dict]) -> str:
    """OpenAI's list-of-parts message content: the text parts, joined."""
    return "".join(part.get("text", "") for part in content if part.get("type") == "text")


def load_adapter_arguments(pairs: list[str]) -> dict[str, str]:
    """['name=path', 'path'] -> {name: path}; a bare path is named after its folder."""
    from .predictor import name_adapters

    named: dict[str, str] = {}
    for pair in pairs:
        if "=" in pair:
            name, path = pair.split("=", 1)
            named[name] = path
        else:
            named.update(name_adapters([pair]))
    return named


def serve(adapters: list[str], model: str | None = None, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          max_batch_size: int = 32, max_wait_ms: float = 5.0, device=None, dtype=None, cache_bytes: int | None = None,
          mix_adapters: bool = True) -> None:
    import uvicorn

    if not adapters:
        raise ValueError("Give at least one --adapter NAME=PATH (a folder written by softprompt train, or a Hub id).")
    predictor = Predictor.from_pretrained(load_adapter_arguments(adapters), base_model=model, device=device, dtype=dtype)
    predictor.model.states_cache_limit = cache_bytes
    for name in predictor.adapter_names:
        predictor.model.prompt_states(name)  # every adapter's keys/values, once, before the first request
    app = create_app(predictor, api_key, max_batch_size, max_wait_ms, mix_adapters, base_name=model)
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=30)


__all__ = ["create_app", "serve"]
