"""What every endpoint shares: the Predictor, the engine that batches its jobs, the metrics, and the rules that
turn a request into a job (which adapter `model` names, how long a generation may be)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ..config import PromptLearningConfig
from ..errors import UnknownAdapterError
from ..inference import Predictor
from ..inference.engine import CallJob, Engine, GenerateJob
from .metrics import Metrics
from .schemas import APIError, GenerationRequest

GREEDY_BELOW = 1e-5  # a temperature under this samples greedily, as in vLLM (dividing by it would overflow)


@dataclass
class Choices:
    """An engine job and the choice indices its answer fills (several: greedy choices of one prompt)."""

    job: GenerateJob
    indices: Sequence[int]


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

    def adapter_for(self, model: str, param: str = "model") -> str | None:
        """The adapter a request's `model` names; None for the base model. 404 for anything else."""
        if model in self.predictor.adapter_names:
            return model
        if model == self.base_name:
            return None
        loaded = [self.base_name, *self.predictor.adapter_names]
        raise APIError(404, f"The model {model!r} does not exist. Loaded: {loaded}.", param, "NotFoundError")

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

    def generation_jobs(
        self, body: GenerationRequest, prompts: list[list[int]], adapter: str | None, max_tokens: int
    ) -> list[Choices]:
        """The engine jobs of a completion or chat request: one job per prompt and choice, so they batch with other
        requests'. Greedy choices of one prompt are equal: one job computes them all."""
        for p, prompt in enumerate(prompts):
            if not prompt:
                raise APIError(400, f"Prompt {p} is empty once tokenized: send some text.", "prompt")
            self.check_length(prompt, adapter, max_tokens)
        temperature = 1.0 if body.temperature is None else body.temperature
        if temperature < GREEDY_BELOW:
            temperature = 0.0
        settings = {"do_sample": temperature > 0}
        if temperature > 0:
            settings.update(temperature=temperature, top_p=1.0 if body.top_p is None else body.top_p, top_k=None)
        stop = [body.stop] if isinstance(body.stop, str) else body.stop
        n, jobs = body.choices, []
        for p, prompt in enumerate(prompts):
            copies = [range(p * n, p * n + n)] if temperature == 0 else [[p * n + k] for k in range(n)]
            for k, indices in enumerate(copies):
                seed = None if body.seed is None else (body.seed + k) % 2**63  # choice k: what n=1 gives with seed+k
                jobs.append(Choices(GenerateJob(prompt, adapter, max_tokens, settings, stop or None, seed), indices))
        return jobs

    async def load_adapter(self, name: str, path: str) -> None:
        """Load an adapter at run time (between batches, on the engine's thread). 400 with the reason if it fails."""
        self.require_admin()
        if name == self.base_name or name in self.predictor.adapter_names:
            raise APIError(
                400, f"An adapter named {name!r} is already loaded: unload it first, or pick another name.", "lora_name"
            )
        failed = f"Could not load adapter {name!r} from {path!r}"
        try:  # the files first, off the engine's thread: a bad path does not hold up the other requests
            await asyncio.to_thread(PromptLearningConfig.from_pretrained, path)
        except Exception as error:  # noqa: BLE001 - whatever the path held, the request named it
            if os.path.isfile(os.path.join(path, "adapter_config.json")):  # there, but damaged
                raise APIError(400, f"{failed}: {error}", "lora_path") from error
            raise APIError(404, f"{failed}: {error}", "lora_path", "NotFoundError") from error  # no adapter: as vLLM
        try:
            await self.run(CallJob(lambda: self.predictor.load_adapter(path, name)))
        except APIError as error:
            raise APIError(400, f"{failed}: {error.message}", "lora_path") from error
        except Exception as error:  # noqa: BLE001 - damaged files, a model they do not fit
            raise APIError(400, f"{failed}: {error}", "lora_path") from error

    async def unload_adapter(self, name: str) -> None:
        self.require_admin()
        self.adapter_for(name, "lora_name")  # 404 if unknown
        if name == self.base_name:
            raise APIError(400, "The base model cannot be unloaded.", "lora_name")
        try:
            await self.run(CallJob(lambda: self.predictor.unload_adapter(name)))
        except APIError as error:
            raise APIError(error.status, error.message, "lora_name", error.kind) from error

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
