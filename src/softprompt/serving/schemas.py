"""Request bodies of the server's endpoints, and its errors in OpenAI's format.

Unknown fields in a request are accepted and ignored (clients send extras), except the ones listed in
UNSUPPORTED, which are refused by name rather than silently dropped.
"""

from __future__ import annotations

from typing import Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

UNSUPPORTED = ("logprobs", "top_logprobs", "echo", "best_of", "suffix", "tools", "functions", "response_format")


class APIError(Exception):
    """An answer with an error status, in OpenAI's format; `param` names the request field at fault."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind


def error_response(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": param, "code": status}}, status_code=status
    )


class ModelRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str


class GenerationRequest(ModelRequest):
    max_tokens: int | None = Field(default=16, ge=1)
    temperature: float | None = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float | None = Field(default=1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    n: int = Field(default=1, ge=1, le=1)


class CompletionRequest(GenerationRequest):
    prompt: str | list[str]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict] | None = None


class ChatRequest(GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)


class ClassifyRequest(ModelRequest):
    input: str | dict[str, str] | list[str | dict[str, str]]


class LoadAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lora_name: str | None = None
    lora_path: str | None = None
    adapter_name: str | None = None
    adapter_path: str | None = None
