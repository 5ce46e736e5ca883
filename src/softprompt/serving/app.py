"""`softprompt serve`: many soft prompts on one frozen model over HTTP, OpenAI-compatible.

    softprompt serve --adapter complaints=runs/complaints/adapter --adapter hate=me/hate-prompt [--api-key KEY]

The app is a few routers over one `Service` (service.py):
  openai.py    POST /v1/completions, /v1/chat/completions; GET /v1/models
  classify.py  POST /v1/classify     {"model", "input": [texts or rows]} -> label + probabilities
  admin.py     POST /v1/load_adapter, /v1/unload_adapter (vLLM's names; need --api-key); GET /health
  metrics.py   GET /metrics          Prometheus text
Requests that arrive together are computed together, whatever adapters they name (inference/engine.py). Bad
requests get a 4xx in OpenAI's error format naming the field; they never disturb the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError

from ..inference import Predictor, name_adapters
from . import admin, classify, metrics, openai
from .schemas import APIError, error_response
from .service import Service


def create_app(
    predictor: Predictor,
    api_key: str | None = None,
    max_batch_size: int = 32,
    max_wait_ms: float = 5.0,
    mix_adapters: bool = True,
    base_name: str | None = None,
) -> FastAPI:
    """The ASGI app. Its engine thread starts and stops with the app's lifespan."""
    service = Service(predictor, api_key, max_batch_size, max_wait_ms, mix_adapters, base_name)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        service.engine.start()
        yield
        await asyncio.to_thread(service.engine.stop)  # in-flight jobs finish first

    app = FastAPI(title="softprompt", lifespan=lifespan)
    app.state.service = service
    for module in (openai, classify, admin, metrics):
        app.include_router(module.router)
    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.middleware("http")(authenticate_and_count)
    return app


async def api_error(request: Request, error: APIError):
    return error_response(error.status, error.message, error.param, error.kind)


async def invalid_request(request: Request, error: RequestValidationError):
    """A body that does not parse or does not fit the schema: 400 naming the first field at fault."""
    first = error.errors()[0]
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    if first.get("type") == "json_invalid":
        return error_response(400, f"The request body is not valid JSON: {first.get('msg')}.", None)
    field = ".".join(location) or None
    return error_response(400, f"Invalid field {field!r}: {first.get('msg')}." if field else first.get("msg"), field)


async def authenticate_and_count(request: Request, call_next):
    """With an API key, every endpoint but /health needs 'Authorization: Bearer KEY'; every answer is counted."""
    service: Service = request.app.state.service
    endpoint = request.url.path
    started = time.perf_counter()
    if service.api_key is not None and endpoint != "/health":
        given = request.headers.get("authorization", "")
        if not secrets.compare_digest(given.encode(), f"Bearer {service.api_key}".encode()):
            service.metrics.count(endpoint, 401)
            return error_response(
                401, "Missing or wrong API key: send 'Authorization: Bearer KEY'.", None, "authentication_error"
            )
    response = await call_next(request)
    service.metrics.count(endpoint, response.status_code, time.perf_counter() - started)
    return response


def load_adapter_arguments(pairs: list[str]) -> dict[str, str]:
    """['name=path', 'path'] -> {name: path}; a bare path is named after its folder."""
    named: dict[str, str] = {}
    for pair in pairs:
        if "=" in pair:
            name, path = pair.split("=", 1)
            named[name] = path
        else:
            named.update(name_adapters([pair]))
    return named


def serve(
    adapters: list[str],
    model: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    max_batch_size: int = 32,
    max_wait_ms: float = 5.0,
    device=None,
    dtype=None,
    cache_bytes: int | None = None,
    mix_adapters: bool = True,
) -> None:
    import uvicorn

    if not adapters:
        raise ValueError("Give at least one --adapter NAME=PATH (a folder written by softprompt train, or a Hub id).")
    predictor = Predictor.from_pretrained(
        load_adapter_arguments(adapters), base_model=model, device=device, dtype=dtype
    )
    predictor.model.states_cache_limit = cache_bytes
    for name in predictor.adapter_names:
        predictor.model.prompt_states(name)  # every adapter's keys/values, once, before the first request
    app = create_app(predictor, api_key, max_batch_size, max_wait_ms, mix_adapters, base_name=model)
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=30)
