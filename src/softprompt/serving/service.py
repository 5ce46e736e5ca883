"""What every endpoint shares: the Predictor, the engine that batches its jobs, the metrics, and the rules that
turn a request into a job (which adapter `model` names, how long a generation may be)."""

from __future__ import annotations

import asyncio
import time

from ..errors import UnknownAdapterError
from ..inference import Predictor
from ..inference.engine import Engine, GenerateJob
from .metrics import Metrics
from .schemas import UNSUPPORTED, APIError, GenerationRequest


class Service:
    def __init__(
        self,
        predictor: Predictor,
        api_key: str | None = None,
        max_batch_size: int = 32,
        max_wait_ms: float = 5.0,
        mix_adapters: bool = True,
        base_name: str | None = None,
    ):
        self.predictor = predictor
        self.api_key = api_key
        self.metrics = Metrics(lambda: len(predictor.adapter_names))
        self.engine = Engine(predictor, max_batch_size, max_wait_ms, mix_adapters, observe=self.metrics.observe)
        self.base_name = base_name or predictor.model.base_model.name_or_path
        self.created = int(time.time())
        self.eos_ids = predictor.eos_ids()
        context = predictor.model.base_model.config.get_text_config()
        self.context_length = getattr(context, "max_position_embeddings", None) or getattr(context, "n_positions", None)

    def adapter_for(self, model: str) -> str | None:
        """The adapter a request's `model` names; None for the base model. 404 for anything else."""
        if model in self.predictor.adapter_names:
            return model
        if model == self.base_name:
            return None
        loaded = [self.base_name, *self.predictor.adapter_names]
        raise APIError(404, f"The model {model!r} does not exist. Loaded: {loaded}.", "model", "NotFoundError")

    async def run(self, job):
        """Submit a job to the engine and wait for its result; a job's own error becomes a 4xx."""
        try:
            return await asyncio.wrap_future(self.engine.submit(job))
        except UnknownAdapterError as error:  # unloaded while the request waited
            raise APIError(404, str(error), "model", "NotFoundError") from error
        except (ValueError, TypeError) as error:
            raise APIError(400, str(error)) from error

    def check_length(self, prompt: list[int], adapter: str | None, max_tokens: int) -> None:
        """A 400 when prompt + virtual tokens + max_tokens exceed the model's context."""
        virtual = 0 if adapter is None else self.predictor.model.peft_config[adapter].num_virtual_tokens
        if self.context_length and len(prompt) + virtual + max_tokens > self.context_length:
            raise APIError(
                400,
                f"This request needs {len(prompt)} prompt tokens + {virtual} virtual tokens + max_tokens {max_tokens}, "
                f"more than the model's context of {self.context_length} tokens. Shorten the prompt or lower "
                "max_tokens.",
                "max_tokens" if len(prompt) + virtual < self.context_length else "prompt",
            )

    def generation_job(self, body: GenerationRequest, prompt: list[int], adapter: str | None) -> GenerateJob:
        """The engine job of a completion or chat request."""
        for name in UNSUPPORTED:
            if (body.model_extra or {}).get(name):
                raise APIError(400, f"{name!r} is not supported by softprompt serve; leave it out.", name)
        max_tokens = body.max_tokens or 16
        self.check_length(prompt, adapter, max_tokens)
        temperature = 1.0 if body.temperature is None else body.temperature
        settings = {"do_sample": temperature > 0}
        if temperature > 0:
            settings.update(temperature=temperature, top_p=1.0 if body.top_p is None else body.top_p, top_k=None)
        stop = [body.stop] if isinstance(body.stop, str) else body.stop
        return GenerateJob(prompt, adapter, max_tokens, settings, stop or None, body.seed)

    def require_admin(self) -> None:
        if self.api_key is None:
            raise APIError(
                403,
                "Loading and unloading adapters at run time needs a server started with --api-key.",
                None,
                "permission_error",
            )


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
