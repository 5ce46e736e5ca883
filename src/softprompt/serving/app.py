"""`softprompt serve`: many soft prompts on one frozen model over HTTP, OpenAI-compatible.

    softprompt serve --adapter complaints=runs/complaints/adapter --adapter hate=me/hate-prompt [--api-key KEY]

The app is a few routers over one `Service` (service.py):
  openai.py     POST /v1/completions, /v1/chat/completions (prompt lists, n choices, streaming); GET /v1/models
  classify.py   POST /v1/classify     {"model", "input": [texts or rows]} -> label + probabilities
  admin.py      POST /v1/load_lora_adapter, /v1/unload_lora_adapter (vLLM's; need --api-key); GET /health
  metrics.py    GET /metrics          Prometheus text
  schemas.py    request bodies, the fields refused (UNSUPPORTED), errors; responses.py: the answers' bodies
Requests that arrive together are computed together, whatever adapters they name (inference/engine.py). Bad
requests get a 4xx in OpenAI's error format naming the field; they never disturb the others. The OpenAPI schema
(/openapi.json) declares every status and body; tests/test_serve_schema.py checks it with schemathesis.
Users' guide: docs/serving.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..inference import Predictor, name_adapters
from ..version import __version__
from . import admin, classify, metrics, openai
from .schemas import DESCRIPTION, UNSUPPORTED, APIError, ErrorResponse, error_response, errors
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

    app = FastAPI(title="softprompt", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.service = service
    for module in (openai, classify, admin, metrics):
        app.include_router(module.router)
    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.middleware("http")(authenticate_and_count)
    app.openapi = lambda: openapi_schema(app, api_key is not None)
    return app


def openapi_schema(app: FastAPI, with_key: bool) -> dict:
    """FastAPI's schema, made true to the answers: invalid requests are 400 (FastAPI documents 422, which this
    server never answers), every error has OpenAI's error body, and with an API key every endpoint but /health
    may answer 401."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        error_body = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(error_body.pop("$defs"), ErrorResponse=error_body)
        json_error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
        for path, operations in schema["paths"].items():
            for operation in operations.values():
                answers = operation["responses"]
                answers.pop("422", None)
                if with_key and path != "/health":
                    operation["security"] = [{"apiKey": []}]
                    answers["401"] = errors(401)[401]
                for status, answer in answers.items():
                    if status.startswith("4"):
                        answer["content"] = json_error
        context = app.state.service.context_length
        if context:
            bound_tokens(components, context)
        if with_key:
            schema["components"]["securitySchemes"] = {"apiKey": {"type": "http", "scheme": "bearer"}}
        app.openapi_schema = schema
    return app.openapi_schema


def bound_tokens(components: dict, context: int) -> None:
    """max_tokens cannot exceed the model's context (with the prompt's tokens it is a 400 all the same)."""
    for request in ("CompletionRequest", "ChatRequest"):
        for field in ("max_tokens", "max_completion_tokens"):
            prop = components[request]["properties"].get(field, {})
            for branch in prop.get("anyOf", []):
                if branch.get("type") == "integer":
                    branch["maximum"] = context
            if prop:
                prop["description"] += f" With the prompt's tokens, at most the model's context: {context} tokens."


async def api_error(request: Request, error: APIError):
    return error_response(error.status, error.message, error.param, error.kind)


async def http_error(request: Request, error: StarletteHTTPException):
    """Starlette's own answers (an unknown path, a method not allowed), in OpenAI's error format."""
    kind = "NotFoundError" if error.status_code == 404 else "invalid_request_error"
    return error_response(error.status_code, str(error.detail), None, kind, headers=getattr(error, "headers", None))


async def invalid_request(request: Request, error: RequestValidationError):
    """A body that does not parse or does not fit the schema: 400 naming the field at fault."""
    problems = error.errors()
    first = problems[0]
    if first.get("type") == "json_invalid":
        return error_response(400, f"The request body is not valid JSON: {first.get('msg')}.", None)
    location = [part for part in first.get("loc", ()) if part != "body"]
    if not location or not isinstance(location[0], str):
        return error_response(400, f"Invalid request body (a JSON object with the fields): {first.get('msg')}.")
    field = location[0]
    if field in UNSUPPORTED:
        return error_response(400, f"{field!r} is not supported by softprompt serve; leave it out.", field)
    # of the problems with this field, the one deepest inside it says most (e.g. prompt[1], not the whole list)
    same = [p for p in problems if [x for x in p.get("loc", ()) if x != "body"][:1] == [field]]
    deepest = max(same, key=lambda p: len(p.get("loc", ())))
    where = field + "".join(f"[{part}]" for part in deepest["loc"] if isinstance(part, int))
    return error_response(400, f"Invalid field {where!r}: {deepest.get('msg')}.", field)


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
