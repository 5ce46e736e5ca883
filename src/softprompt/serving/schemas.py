"""Request bodies of the server's endpoints, and its errors in OpenAI's format.

Unknown fields in a request are accepted and ignored (clients send extras), except the ones in UNSUPPORTED: OpenAI
fields that would change the answer. They are declared with the only values that leave the answer unchanged (null
or their default), so the OpenAPI schema says which values pass; any other value is refused with a 400 naming
the field, rather than silently dropped.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

MAX_CHOICES = 128  # n per prompt, OpenAI's limit
StopText = Annotated[str, Field(min_length=1)]


class APIError(Exception):
    """An answer with an error status, in OpenAI's format; `param` names the request field at fault."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind


def error_response(
    status: int, message: str, param: str | None = None, kind: str = "invalid_request_error", headers=None
):
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": param, "code": status}},
        status_code=status,
        headers=headers,
    )


class ErrorDetail(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, NotFoundError, authentication_error, permission_error")
    param: str | None = Field(description="The request field at fault, when one is.")
    code: int = Field(description="The HTTP status.")


class ErrorResponse(BaseModel):
    """Every error answer, as OpenAI writes them."""

    error: ErrorDetail


ERROR_MEANINGS = {
    400: "A field is invalid or unsupported (`param` names it), or the body is not JSON.",
    401: "Missing or wrong API key (servers started with --api-key).",
    403: "Loading/unloading adapters needs a server started with --api-key.",
    404: "The model (adapter) named is not loaded, or no adapter is found at the path to load.",
}


def errors(*statuses: int) -> dict:
    """The `responses=` of a route: the error statuses it answers (app.py gives each the ErrorResponse body)."""
    return {status: {"description": ERROR_MEANINGS[status]} for status in statuses}


def off(meaning: str):
    """A refused field, accepted only at null or the values that mean 'off'."""
    return Field(default=None, description=f"Not supported: refused unless null or {meaning}.")


class ResponseFormatText(BaseModel):
    type: Literal["text"]


class RefusedFields(BaseModel):
    """OpenAI's fields that softprompt serve does not implement: accepted only at a value that changes nothing."""

    logprobs: Literal[False, 0] | None = off("false/0")
    top_logprobs: Literal[0] | None = off("0")
    echo: Literal[False] | None = off("false")
    best_of: Literal[1] | None = off("1")
    suffix: Literal[""] | None = off('""')
    tools: Annotated[list, Field(max_length=0)] | None = off("[]")
    functions: Annotated[list, Field(max_length=0)] | None = off("[]")
    response_format: ResponseFormatText | None = off('{"type": "text"}')
    logit_bias: Annotated[dict, Field(max_length=0)] | None = off("{}")
    presence_penalty: Literal[0] | None = off("0")
    frequency_penalty: Literal[0] | None = off("0")


UNSUPPORTED = tuple(RefusedFields.model_fields)


class ModelRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = Field(description="An adapter's name, or the base model's (GET /v1/models lists them).")


class GenerationRequest(ModelRequest, RefusedFields):
    max_tokens: int | None = Field(default=16, ge=1, description="Tokens to generate at most (default 16).")
    temperature: float | None = Field(default=1.0, ge=0.0, le=2.0, description="0: greedy.")
    top_p: float | None = Field(default=1.0, gt=0.0, le=1.0)
    n: int | None = Field(default=1, ge=1, le=MAX_CHOICES, description="Choices per prompt.")
    stop: StopText | Annotated[list[StopText], Field(max_length=4)] | None = Field(
        default=None, description="Up to 4 strings; the text ends before the first one."
    )
    seed: int | None = Field(default=None, description="Makes sampling repeatable.")
    stream: bool | None = Field(default=False, description="Server-sent events as the tokens come.")
    stream_options: dict | None = Field(default=None, description="Accepted and ignored: usage is always sent.")
    user: str | None = Field(default=None, description="Accepted and ignored.")

    @property
    def choices(self) -> int:
        return self.n or 1


PromptText = Annotated[str, Field(min_length=1)]


class CompletionRequest(GenerationRequest):
    prompt: PromptText | Annotated[list[PromptText], Field(min_length=1)] = Field(
        description="A text, or a list of texts (one choice or `n` choices each). Token-id prompts are refused."
    )


class ContentPart(BaseModel):
    """A part of a message's content: its `text` is read when `type` is "text"; other parts are ignored."""

    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[ContentPart] | None = Field(default=None, description="Text, or parts (text parts are read).")


class ChatRequest(GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, description="OpenAI's newer name for max_tokens.")


class ClassifyRequest(ModelRequest):
    input: str | dict[str, str] | Annotated[list[str | dict[str, str]], Field(min_length=1)] = Field(
        description="A text, a row (column -> text), or a list of them."
    )


IGNORED = ("user", "stream_options", "lora_int_id")

DESCRIPTION = f"""Many soft prompts (adapters) on one frozen model, OpenAI-compatible. `model` names an adapter, or the
base model itself, as vLLM does for LoRA adapters (GET /v1/models lists them).

**Supported request fields** of /v1/completions and /v1/chat/completions: `model`, `prompt` (a text or a list of
texts) or `messages`, `max_tokens` (chat: also `max_completion_tokens`), `temperature` (0: greedy), `top_p`, `n`
(up to {MAX_CHOICES} choices per prompt; choice `prompt_index * n + k`), `stop` (up to 4 strings), `seed` (choice
k samples as n=1 would with `seed + k`), `stream` (server-sent events, any number of prompts and choices).

**Accepted and ignored**: {", ".join(f"`{name}`" for name in IGNORED)}, and any field not named here (vLLM's extra
sampling parameters such as `top_k`, `min_p` or `repetition_penalty` included: they are not applied).

**Refused** with a 400 naming the field, unless null or their neutral value:
{", ".join(f"`{name}`" for name in UNSUPPORTED)}. Token-id prompts (lists of integers) are refused too.

**Errors** are OpenAI's: `{{"error": {{"message", "type", "param", "code"}}}}`, with `param` naming the field at fault.
"""


class LoadLoRAAdapterRequest(BaseModel):
    """vLLM's body for /v1/load_lora_adapter."""

    model_config = ConfigDict(extra="allow")
    lora_name: str = Field(min_length=1, description="The name requests will give as `model`.")
    lora_path: str = Field(min_length=1, description="A folder written by softprompt train, or a Hub id.")


class UnloadLoRAAdapterRequest(BaseModel):
    """vLLM's body for /v1/unload_lora_adapter (`lora_int_id` is accepted and ignored)."""

    model_config = ConfigDict(extra="allow")
    lora_name: str = Field(min_length=1)
    lora_int_id: int | None = None


def either(*pairs: tuple[str, str]) -> dict:
    """JSON Schema: each pair needs one of its two fields."""
    return {"allOf": [{"anyOf": [{"required": [a]}, {"required": [b]}]} for a, b in pairs]}


Name = Annotated[str, Field(min_length=1)]  # optional, but not null: the schema's anyOf needs one of each pair


class LoadAdapterRequest(BaseModel):
    """The body of the deprecated /v1/load_adapter: lora_* or adapter_* names."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra=either(("lora_name", "adapter_name"), ("lora_path", "adapter_path"))
    )
    lora_name: Name = None
    lora_path: Name = None
    adapter_name: Name = None
    adapter_path: Name = None


class UnloadAdapterRequest(BaseModel):
    """The body of the deprecated /v1/unload_adapter."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=either(("lora_name", "adapter_name")))
    lora_name: Name = None
    adapter_name: Name = None
