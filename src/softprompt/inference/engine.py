"""Dynamic batching over a Predictor: requests that arrive together are computed together, whatever adapters
they name. One worker thread owns the model; callers submit jobs and wait on futures.

A batch forms when the first job arrives and closes after `max_wait_ms` or at `max_batch_size` rows.
Label-scoring rows of every job in it run as mixed-adapter batches; generation jobs with the same
settings run as one batch; a streamed or seeded generation runs alone (its tokens, or its random
stream, are its own). If a batch fails, its jobs are retried one by one, so one bad request never fails
the others. Loading and unloading adapters run on the same thread, between batches.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from .predictor import Predictor


@dataclass
class ScoreJob:
    """Class scores for N encoded rows, one adapter each: a list of [K_i] log-scores comes back."""

    examples: list  # data.Example
    adapters: list[str]
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)

    @property
    def rows(self) -> int:
        return len(self.examples)

    def adapter_set(self) -> tuple:
        return tuple(sorted(set(map(str, self.adapters))))


@dataclass
class GenerateJob:
    """One prompt to continue; `on_token` streams its tokens; `cancelled` ends it early."""

    prompt: list[int]
    adapter: str | None
    max_new_tokens: int
    settings: dict  # do_sample, temperature, top_p
    stop: list[str] | None = None
    seed: int | None = None
    on_token: object = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)
    rows = 1

    def adapter_set(self) -> tuple:
        return (str(self.adapter),)

    def batch_key(self):
        """Jobs with equal keys can share a generate call; streamed or seeded ones never share."""
        if self.on_token is not None or self.seed is not None:
            return id(self)
        return (self.max_new_tokens, tuple(sorted(self.settings.items())), tuple(self.stop or ()))


@dataclass
class CallJob:
    """Any function to run on the model's thread between batches (loading, unloading adapters)."""

    function: object
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)
    rows = 1


_STOP = object()


class Engine:
    def __init__(
        self,
        predictor: Predictor,
        max_batch_size: int = 32,
        max_wait_ms: float = 5.0,
        mix_adapters: bool = True,
        observe=None,
    ):
        self.predictor = predictor
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000
        self.mix_adapters = mix_adapters  # False: one adapter per forward (a baseline for benchmarks)
        self.observe = observe or (lambda **_: None)  # metrics hook: observe(batch_rows=..., queue_seconds=...)
        predictor.batch_size = max_batch_size
        self.queue: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self.run, name="softprompt-engine", daemon=True)

    def start(self) -> Engine:
        """Start the worker; an engine that was stopped starts again (an app whose lifespan runs twice)."""
        if self.thread.ident is not None:
            self.thread = threading.Thread(target=self.run, name="softprompt-engine", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        """Finish every job already submitted, then end the worker."""
        self.queue.put(_STOP)
        self.thread.join()

    def submit(self, job):
        self.queue.put(job)
        return job.future

    # ---- the worker ------------------------------------------------------------------------
    def run(self) -> None:
        while True:
            job = self.queue.get()
            if job is _STOP:
                return
            jobs, rows = [job], job.rows
            deadline = time.monotonic() + self.max_wait
            stopping = False
            while rows < self.max_batch_size:
                try:
                    job = self.queue.get(timeout=max(deadline - time.monotonic(), 0))
                except queue.Empty:
                    break
                if job is _STOP:
                    stopping = True
                    break
                jobs.append(job)
                rows += job.rows
            self.execute(jobs)
            if stopping:
                return

    def execute(self, jobs: list) -> None:
        now = time.monotonic()
        for job in jobs:
            self.observe(queue_seconds=now - job.enqueued)
        for job in jobs:
            if isinstance(job, CallJob):
                self.settle([job], lambda job=job: [job.function()])
        scoring = [job for job in jobs if isinstance(job, ScoreJob)]
        for group in self.groups(scoring, lambda job: ()):
            self.run_group(group, self.score)
        generating = [job for job in jobs if isinstance(job, GenerateJob)]
        for group in self.groups(generating, GenerateJob.batch_key):
            self.run_group(group, self.generate)

    def groups(self, jobs: list, key) -> list[list]:
        """Jobs that can run as one batch; without mix_adapters, also only jobs of the same adapters."""
        groups: dict = {}
        for job in jobs:
            group = key(job) if self.mix_adapters else (key(job), job.adapter_set())
            groups.setdefault(group, []).append(job)
        return list(groups.values())

    def run_group(self, jobs: list, compute) -> None:
        """Compute a group together; if that fails, each job alone, so only a failing job fails."""
        self.observe(batch_rows=sum(job.rows for job in jobs))
        if len(jobs) == 1:
            self.settle(jobs, lambda: compute(jobs))
            return
        try:
            results = compute(jobs)
        except Exception:
            for job in jobs:
                self.settle([job], lambda job=job: compute([job]))
            return
        for job, result in zip(jobs, results):
            job.future.set_result(result)

    @staticmethod
    def settle(jobs: list, compute) -> None:
        try:
            results = compute()
        except Exception as error:  # the caller's future carries it; the worker goes on
            for job in jobs:
                job.future.set_exception(error)
            return
        for job, result in zip(jobs, results):
            job.future.set_result(result)

    def score(self, jobs: list[ScoreJob]) -> list[list[torch.Tensor]]:
        examples = [e for job in jobs for e in job.examples]
        adapters = [a for job in jobs for a in job.adapters]
        scores = self.predictor.score_examples(examples, adapters)  # one [K_i] per row
        results, start = [], 0
        for job in jobs:
            results.append(scores[start : start + job.rows])
            start += job.rows
        return results

    def generate(self, jobs: list[GenerateJob]):
        first = jobs[0]
        if first.seed is not None:
            torch.manual_seed(first.seed)
        results = self.predictor.complete(
            [job.prompt for job in jobs],
            [job.adapter for job in jobs],
            max_new_tokens=first.max_new_tokens,
            stop=first.stop,
            on_token=first.on_token,
            should_stop=lambda: all(job.cancelled.is_set() for job in jobs),
            **first.settings,
        )
        self.observe(generated_tokens=sum(r.completion_tokens for r in results))
        return results
