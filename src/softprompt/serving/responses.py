"""The bodies of the server's successful answers, as pydantic models: the OpenAPI schema describes them and FastAPI
checks every answer against them. The OpenAI objects carry OpenAI's field names."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Usage(BaseModel):
    prompt_tokens: int = Field(description="Every prompt's tokens, counted once per prompt.")
    completion_tokens: int = Field(description="Every choice's generated tokens.")
    total_tokens: int


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    root: str
    parent: str | None = Field(description="The base model, for an adapter; null for the base model.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


FinishReason = Literal["stop", "length"]


class CompletionChoice(BaseModel):
    index: int = Field(description="prompt_index * n + k: the k-th choice of the prompt at prompt_index.")
    text: str
    logprobs: None = None
    finish_reason: FinishReason


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: None = None
    finish_reason: FinishReason


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


STREAM_DESCRIPTION = (
    "With `stream: true`: server-sent events, each `data: {chunk}` (a completion or chat.completion.chunk object "
    "whose choices carry their `index`), the last one with `usage`, then `data: [DONE]`."
)


def streamed(model: type[BaseModel]) -> dict:
    """The `responses=` entry of an endpoint that answers JSON, or server-sent events on request."""
    return {
        200: {
            "model": model,
            "description": "The answer; " + STREAM_DESCRIPTION,
            "content": {"text/event-stream": {}},  # no schema: OpenAPI 3.1 cannot describe each event
        }
    }


class ClassifyItem(BaseModel):
    index: int
    label: str
    probabilities: dict[str, float] = Field(description="Class name -> probability.")


class ClassifyUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class ClassifyResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    data: list[ClassifyItem]
    usage: ClassifyUsage


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    adapters: int = Field(description="Adapters loaded.")


class AdapterLoaded(BaseModel):
    status: Literal["ok"] = "ok"
    loaded: str


class AdapterUnloaded(BaseModel):
    status: Literal["ok"] = "ok"
    unloaded: str
