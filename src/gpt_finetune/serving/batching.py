"""One worker thread owns the model and decodes the waiting requests together, one batch at a time.

Requests are queued as jobs. Whenever the worker is free it takes up to `max_batch_size` waiting jobs
(oldest first, skipping those whose prompt + token limit would push the batch past the context window)
and decodes them in one `generate` call, each row with its own sampling settings. A job that arrives
mid-decode waits for the next batch: rows of one batch share a KV cache laid out for that batch.
Text reaches a streaming job's asyncio queue as it is produced; a job cancelled by its client (or a
shutdown) has its row stopped at the next step.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Literal

import torch

from gpt_finetune.model.generation import generate
from gpt_finetune.serving.loading import UsableModel
from gpt_finetune.serving.streaming import TextStream

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sampling:
    """How one request is decoded."""

    max_new_tokens: int
    temperature: float = 0.0
    top_k: int | None = None
    seed: int | None = None
    stops: tuple[str, ...] = ()


@dataclass(frozen=True)
class Finished:
    """The last event of a generation job: all its text, why it ended, how many tokens it took."""

    text: str
    finish_reason: Literal["stop", "length"]
    completion_tokens: int


class ServerStopping(Exception):
    """The server shut down before the job finished."""


Event = str | Finished | torch.Tensor | BaseException


@dataclass(eq=False)
class Job:
    """A generation request (`prompt`) or a classification request (`texts`), and its event queue.

    The worker thread delivers events to `loop`: text pieces when `stream`, then a `Finished`
    (generation), a (N, classes) probability tensor (classification), or an exception.
    """

    loop: asyncio.AbstractEventLoop
    prompt: list[int] = field(default_factory=list)
    sampling: Sampling = field(default_factory=lambda: Sampling(0))
    texts: list[str] = field(default_factory=list)
    stream: bool = False
    events: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    cancelled: bool = False

    def emit(self, event: Event) -> None:
        """Deliver `event` from the worker thread (dropped when the loop has closed)."""
        with suppress(RuntimeError):  # the event loop is closed: nobody is waiting
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    async def results(self) -> AsyncIterator[Event]:
        """The job's events up to its last; leaving early (a client went away) cancels the job."""
        try:
            while True:
                event = await self.events.get()
                if isinstance(event, BaseException):
                    raise event
                yield event
                if not isinstance(event, str):
                    return
        finally:
            self.cancelled = True  # a no-op once finished; otherwise the worker stops the row


class Batcher:
    """The worker thread that owns `usable` and decodes queued jobs in batches of `max_batch_size`."""

    def __init__(self, usable: UsableModel, max_batch_size: int, gather_s: float = 0.0) -> None:
        self.usable = usable
        self.max_batch_size = max_batch_size
        self.gather_s = gather_s  # an idle worker waits this long for more jobs before a short batch
        self.context = usable.gpt.config.context_length
        self.largest_batch = 0  # the most jobs decoded together so far
        self.batches = 0
        self.finished_jobs = 0
        self.cancelled_rows = 0  # rows stopped because their client went away
        self.running: list[Job] = []  # the batch being decoded
        self._waiting: deque[Job] = deque()
        self._condition = threading.Condition()
        self._paused = False
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="gpt-finetune-batcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the running batch at its next step, fail the waiting jobs, and join the worker."""
        with self._condition:
            self._stopping = True
            left, self._waiting = list(self._waiting), deque()
            self._condition.notify_all()
        for job in left:
            job.emit(ServerStopping("the server is shutting down"))
        if self._thread.is_alive():
            self._thread.join(timeout)

    def submit(self, job: Job) -> None:
        """Queue `job` for the next batch."""
        with self._condition:
            if self._stopping:
                raise ServerStopping("the server is shutting down")
            self._waiting.append(job)
            self._condition.notify()

    def waiting(self) -> int:
        """How many jobs are queued (not yet in a batch)."""
        with self._condition:
            return len(self._waiting)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Start no new batch while inside (jobs queue up); the running batch goes on."""
        with self._condition:
            self._paused = True
        try:
            yield
        finally:
            with self._condition:
                self._paused = False
                self._condition.notify()

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._stopping and (self._paused or not self._waiting):
                    self._condition.wait()
                self._gather()
                if self._stopping:
                    return
                jobs = self._take()
            if not jobs:
                continue
            self.batches += 1
            self.largest_batch = max(self.largest_batch, len(jobs))
            self.running = jobs
            try:
                if jobs[0].texts:
                    self._classify(jobs)
                else:
                    self._decode(jobs)
            except Exception as error:  # the model failed (out of memory...): fail this batch, go on
                log.exception("batch of %d failed", len(jobs))
                for job in jobs:
                    job.emit(error)
            self.running = []
            self.finished_jobs += len(jobs)

    def _gather(self) -> None:
        """Wait up to `gather_s` while fewer than `max_batch_size` jobs wait (a burst of requests whose
        first would otherwise start a batch alone); call with the condition held."""
        deadline = time.monotonic() + self.gather_s
        while not self._stopping and not self._paused and len(self._waiting) < self.max_batch_size:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._condition.wait(left)

    def _take(self) -> list[Job]:
        """Up to `max_batch_size` waiting jobs of one kind, oldest first, that fit the context together."""
        jobs: list[Job] = []
        width = limit = 0
        for job in list(self._waiting):
            if len(jobs) == self.max_batch_size:
                break
            if job.cancelled:
                self._waiting.remove(job)
                continue
            if jobs and bool(job.texts) != bool(jobs[0].texts):
                continue
            wider, longer = max(width, len(job.prompt)), max(limit, job.sampling.max_new_tokens)
            if jobs and not job.texts and wider + longer > self.context:
                continue  # decoded together the batch would outgrow the KV cache: next batch
            width, limit = wider, longer
            jobs.append(job)
            self._waiting.remove(job)
        return jobs

    def _decode(self, jobs: list[Job]) -> None:
        """Generate for every job in one batch; stream text; stop rows that end or lose their client."""
        streams = [TextStream(job.sampling.stops) for job in jobs]

        def on_token(new: dict[int, int]) -> Iterable[int]:
            stop = []
            for i, token in new.items():
                text = streams[i].feed(token)
                if text and jobs[i].stream:
                    jobs[i].emit(text)
                if jobs[i].cancelled and not streams[i].done:
                    self.cancelled_rows += 1
                    stop.append(i)
                elif streams[i].done or self._stopping:
                    stop.append(i)
            return stop

        outputs = generate(
            self.usable.gpt,
            [job.prompt for job in jobs],
            max_new_tokens=[job.sampling.max_new_tokens for job in jobs],
            temperature=[job.sampling.temperature for job in jobs],
            top_k=[job.sampling.top_k for job in jobs],
            seed=[job.sampling.seed for job in jobs],
            on_token=on_token,
        )
        for job, stream, tokens in zip(jobs, streams, outputs, strict=True):
            if self._stopping and not stream.done:
                job.emit(ServerStopping("the server is shutting down"))
                continue
            rest = stream.finish()
            if rest and job.stream:
                job.emit(rest)
            reason: Literal["stop", "length"] = "stop" if stream.stopped_by == "stop" else "length"
            job.emit(Finished(stream.text, reason, len(tokens)))

    def _classify(self, jobs: list[Job]) -> None:
        """Class probabilities for each job's texts (one `predict_proba` call per job)."""
        classifier = self.usable.classifier
        assert classifier is not None  # classification jobs are only accepted for classification models
        for job in jobs:
            with torch.no_grad():
                job.emit(classifier.predict_proba(job.texts))
