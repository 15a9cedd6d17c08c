"""What a request asks of the batching worker (a job), and what the worker sends back (its events).

A generation job holds one or more prompts, each answered `n` times: one row per answer, numbered
`prompt * n + choice` (the `index` of its OpenAI choice). The worker delivers events to the job's asyncio
queue from its own thread: `Piece`s of text while streaming, one `Finished` per row, or an exception that
fails the whole job.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Literal

import torch


@dataclass(frozen=True)
class Sampling:
    """How each row of a job is decoded (a request's settings, checked and with the server's defaults)."""

    max_new_tokens: int
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stops: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    logprobs: int | None = None  # None: no log-probs; k: the chosen token's and the k most likely
    prompt_logprobs: bool = False  # also the prompt's (echo): each token's given the tokens before it

    @property
    def penalized(self) -> bool:
        return self.presence_penalty != 0 or self.frequency_penalty != 0


@dataclass(frozen=True)
class TokenLogprob:
    """A token's log-probability under the model (raw logits: before temperature, penalties or bias)
    and the `top` most likely tokens at its position; `logprob` is None for a prompt's first token."""

    token: int
    logprob: float | None
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class Piece:
    """Text of row `index` that became final (streaming), with the log-probs of its tokens if asked."""

    index: int
    text: str
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class Finished:
    """The end of row `index`: all its text, why it ended, its tokens, and log-probs if asked."""

    index: int
    text: str
    finish_reason: Literal["stop", "length"]
    completion_tokens: int
    logprobs: tuple[TokenLogprob, ...] | None = None
    prompt_logprobs: tuple[TokenLogprob, ...] | None = None


class ServerStopping(Exception):
    """The server shut down before the job finished."""


class Overloaded(Exception):
    """`max_waiting` requests are already queued (answered 429 with Retry-After)."""


class QueueTimeout(Exception):
    """The job waited longer than `queue_timeout_s` for a place in the batch (answered 503)."""


class WorkerDead(Exception):
    """The batching worker is not running (answered 503; /health says so too)."""


Event = Piece | Finished | torch.Tensor | BaseException


@dataclass(eq=False)
class Job:
    """A generation request (`prompts`, each answered `n` times) or a classification one (`texts`).

    `decoded` counts the tokens the worker has decoded for the job; `cancelled` (its client went away)
    makes the worker drop its rows at the next step.
    """

    loop: asyncio.AbstractEventLoop
    prompts: list[list[int]] = field(default_factory=list)
    sampling: Sampling = field(default_factory=lambda: Sampling(0))
    n: int = 1
    texts: list[str] = field(default_factory=list)
    stream: bool = False
    events: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    failed: bool = False
    started: bool = False  # a row of it has been admitted
    decoded: int = 0
    submitted: float = field(default_factory=time.monotonic)

    @property
    def rows(self) -> int:
        """How many rows (answers) the job has; a classification job counts as one."""
        return len(self.prompts) * self.n if self.prompts else 1

    def emit(self, event: Event) -> None:
        """Deliver `event` from the worker thread (dropped when the loop has closed)."""
        with suppress(RuntimeError):  # the event loop is closed: nobody is waiting
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    def fail(self, error: BaseException) -> None:
        """Fail the whole job with `error` (once); the worker drops its other rows."""
        if not self.failed:
            self.failed = True
            self.emit(error)

    async def results(self) -> AsyncGenerator[Event, None]:
        """The job's events up to its last; leaving early (a client went away) cancels the job."""
        left = self.rows
        try:
            while left:
                event = await self.events.get()
                if isinstance(event, BaseException):
                    raise event
                yield event
                if not isinstance(event, Piece):
                    left -= 1
        finally:
            self.cancelled = True  # a no-op once finished; otherwise the worker drops the rows
