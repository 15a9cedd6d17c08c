"""One worker thread owns the model and decodes every running answer together, one token per step.

Continuous batching. Each request becomes a job of one or more rows (answers). At every step the worker
drops the rows that finished, failed or lost their client, admits waiting rows into the free places (up
to `max_batch_size` rows), encodes the newcomers' prompts together in one forward pass (their first
token comes from it), then runs one decoding step for all running rows: old and new, of any length.

KV-cache layout (`model.kv_cache.SlotCache`): one slot per place in the batch, (layers, slots, heads,
positions, head size), each slot with its own length. Row i of a step is slot i; rows are kept packed
in slots `[0, B)` (a row that leaves is replaced by the last one, its cached keys copied). A step feeds
each row its newest token at its own position, writes the key/value at that row's length, and attends
over the longest row's span with each row masked to its own tokens, so a row decodes as it would alone:
its greedy text does not depend on who else is in the batch or when it joined. A newcomer's prompt is
encoded with a `KVCache` of its own (right-padded, causal) and copied into its slot.

Isolation: picking a row's token (penalties, bias, sampling, log-probs, text) runs per row, so a row that
raises fails only its own request; a failed forward pass fails the rows in it and the worker goes on.
`continuous=False` keeps the older policy (a batch runs until all its rows end before others join),
which the serving benchmark compares against.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from gpt_finetune.model.kv_cache import KVCache, SlotCache
from gpt_finetune.serving.jobs import Job, Overloaded, QueueTimeout, ServerStopping, WorkerDead
from gpt_finetune.serving.loading import UsableModel
from gpt_finetune.serving.rows import Row, choose, prompt_logprobs
from gpt_finetune.tokenizer import END_OF_TEXT

log = logging.getLogger(__name__)


class Batcher:
    """The worker thread that owns `usable` and decodes up to `max_batch_size` rows at every step."""

    def __init__(
        self,
        usable: UsableModel,
        max_batch_size: int,
        gather_s: float = 0.0,
        *,
        max_waiting: int | None = None,
        queue_timeout_s: float | None = None,
        continuous: bool = True,
    ) -> None:
        self.usable, self.gpt = usable, usable.gpt
        self.max_batch_size = max_batch_size
        self.gather_s = gather_s  # an idle worker waits this long for more rows before it starts
        self.max_waiting = max_waiting  # queued requests past this are refused (429)
        self.queue_timeout_s = queue_timeout_s  # a request not started by then fails (503)
        self.continuous = continuous
        config = usable.gpt.config
        self.vocab_size, self.context = config.vocab_size, config.context_length
        self.rows: list[Row] = []  # the running rows; row i in cache slot i
        self.cache: SlotCache | None = None
        self.batches = 0  # admissions: groups of rows whose prompts were encoded together
        self.largest_batch = 0  # the most rows in one forward pass
        self.steps = 0  # decoding steps
        self.joined_running = 0  # rows admitted while other rows were decoding
        self.finished_jobs = 0
        self.cancelled_rows = 0  # rows dropped because their client went away
        self.died: BaseException | None = None
        self._waiting: deque[Job] = deque()
        self._admitted: dict[Job, int] = {}  # jobs partly admitted: how many rows so far
        self._condition = threading.Condition()
        self._paused = False
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="gpt-finetune-batcher", daemon=True)

    @property
    def running(self) -> list[Job]:
        """The jobs with a row in the batch, in slot order."""
        return list(dict.fromkeys(row.job for row in self.rows))

    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stopping and self.died is None

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Fail the waiting jobs, stop the running rows at the next step, and join the worker."""
        with self._condition:
            self._stopping = True
            left, self._waiting = list(self._waiting), deque()
            self._condition.notify_all()
        for job in left:
            job.fail(ServerStopping("the server is shutting down"))
        if self._thread.is_alive():
            self._thread.join(timeout)

    def submit(self, job: Job) -> None:
        """Queue `job`; refused when the server stops, the worker is dead or `max_waiting` jobs wait."""
        with self._condition:
            if self._stopping:
                raise ServerStopping("the server is shutting down")
            if not self.alive():
                raise WorkerDead("the batching worker is not running; see the server's log")
            if self.max_waiting is not None and len(self._waiting) >= self.max_waiting:
                raise Overloaded(f"{len(self._waiting)} requests are waiting (max_waiting); retry shortly")
            self._waiting.append(job)
            self._condition.notify()

    def waiting(self) -> int:
        """How many jobs are queued (not yet wholly admitted)."""
        with self._condition:
            return len(self._waiting)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Admit no new rows while inside (jobs queue up); the running rows go on."""
        with self._condition:
            self._paused = True
        try:
            yield
        finally:
            with self._condition:
                self._paused = False
                self._condition.notify()

    def _run(self) -> None:
        try:
            with torch.inference_mode():
                self._loop()
        except BaseException as error:  # a bug in the loop itself: say so everywhere, never hang
            log.exception("the batching worker died")
            self.died = error
            with self._condition:
                left, self._waiting = list(self._waiting), deque()
            dead = WorkerDead(f"the batching worker died ({type(error).__name__}); see the server's log")
            for job in left + self.running:
                job.fail(dead)
        finally:
            for job in self.running:
                job.fail(ServerStopping("the server is shutting down"))
            self.rows, self.cache = [], None

    def _loop(self) -> None:
        while True:
            with self._condition:
                while not self._stopping and not self.rows and (self._paused or not self._waiting):
                    self._condition.wait()
                if not self.rows:
                    self._gather()
                if self._stopping:
                    return
                self._expire()
                if self.usable.kind == "classify":
                    jobs = [] if self._paused else self._take_jobs()
                else:
                    admitted = [] if self._paused else self._admit()
            if self.usable.kind == "classify":
                self._classify(jobs)
                continue
            if admitted:
                self._prefill(admitted)
            if self.rows:
                self._step()
            if not self.rows:
                self.cache = None  # idle: give the memory back

    def _gather(self) -> None:
        """Wait up to `gather_s` while fewer than `max_batch_size` rows wait (a burst of requests whose
        first would otherwise start alone); call with the condition held."""
        deadline = time.monotonic() + self.gather_s
        while not self._stopping and not self._paused and self._waiting_rows() < self.max_batch_size:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._condition.wait(left)

    def _waiting_rows(self) -> int:
        return sum(job.rows - self._admitted.get(job, 0) for job in self._waiting)

    def _expire(self) -> None:
        """Drop queued jobs whose client left, and fail those that waited past `queue_timeout_s`."""
        now = time.monotonic()
        for job in list(self._waiting):
            timed_out = self.queue_timeout_s is not None and now - job.submitted > self.queue_timeout_s
            if job.cancelled or job.failed or (timed_out and not job.started):
                self._waiting.remove(job)
                if self._admitted.pop(job, None) is not None and not self._has_rows(job):
                    self.finished_jobs += 1
                if timed_out and not job.started:
                    wait = f"{self.queue_timeout_s:g}"
                    job.fail(QueueTimeout(f"the request waited over {wait} s for a place (queue_timeout_s)"))

    def _admit(self) -> list[Row]:
        """Waiting rows for the free places, oldest job first (a big job may be admitted in parts)."""
        if not self.continuous and self.rows:
            return []
        free = self.max_batch_size - len(self.rows)
        rows: list[Row] = []
        while free > 0 and self._waiting:
            job = self._waiting[0]
            start = self._admitted.get(job, 0)
            take = min(free, job.rows - start)
            device = self.usable.device
            rows += [Row(job, i, device, self.vocab_size) for i in range(start, start + take)]
            job.started, free = True, free - take
            if start + take == job.rows:
                self._waiting.popleft()
                self._admitted.pop(job, None)
            else:
                self._admitted[job] = start + take
        return rows

    def _take_jobs(self) -> list[Job]:
        """Up to `max_batch_size` waiting classification jobs, oldest first."""
        jobs: list[Job] = []
        while self._waiting and len(jobs) < self.max_batch_size:
            jobs.append(self._waiting.popleft())
        return jobs

    def _prefill(self, rows: list[Row]) -> None:
        """Encode the newcomers' prompts together, put them in free slots and pick their first tokens."""
        self.batches += 1
        self.joined_running += len(rows) if self.rows else 0
        try:
            logits, encoded = self._encode(rows)
        except Exception as error:
            if len(rows) > 1:  # find the row at fault: each alone
                for row in rows:
                    self._prefill([row])
                return
            log.exception("encoding a prompt failed")
            rows[0].job.fail(error)
            self._settle(rows)
            return
        if self.cache is None:
            head_dim = self.gpt.config.emb_dim // self.gpt.config.n_heads
            dtype = next(self.gpt.parameters()).dtype
            self.cache = SlotCache(
                self.gpt.config.n_layers, self.max_batch_size, self.gpt.config.n_heads, head_dim,
                max_capacity=self.context, device=self.usable.device, dtype=dtype,
            )  # fmt: skip
        placed = []
        for i, row in enumerate(rows):
            if row.sampling.max_new_tokens == 0:  # an echo of the prompt only
                row.finish()
                continue
            self.cache.reserve(len(row.prompt))
            self.cache.store(len(self.rows), encoded, i, len(row.prompt))
            self.rows.append(row)
            placed.append(i)
        if placed:
            self.largest_batch = max(self.largest_batch, len(placed))
            choose(logits[placed], self.rows[-len(placed) :])
        self._settle(rows)

    def _encode(self, rows: list[Row]) -> tuple[torch.Tensor, KVCache]:
        """The rows' prompts in one forward pass (right-padded, causal): each row's next-token logits
        (k, V), and the keys/values of every position; prompt log-probs for the rows that echo them."""
        config, device = self.gpt.config, self.usable.device
        lengths = [len(row.prompt) for row in rows]
        tokens = torch.full((len(rows), max(lengths)), END_OF_TEXT, dtype=torch.long)
        for i, row in enumerate(rows):
            tokens[i, : lengths[i]] = torch.tensor(row.prompt)
        encoded = KVCache(
            config.n_layers, len(rows), config.n_heads, max(lengths), config.emb_dim // config.n_heads,
            device=device, dtype=next(self.gpt.parameters()).dtype,
        )  # fmt: skip
        hidden = self.gpt.hidden_states(tokens.to(device), cache=encoded)  # (k, T, C)
        last = hidden[torch.arange(len(rows), device=device), torch.tensor(lengths, device=device) - 1]
        for i, row in enumerate(rows):
            if row.sampling.prompt_logprobs:
                head = self.gpt.lm_head(hidden[i, : lengths[i] - 1])
                row.prompt_logprobs = prompt_logprobs(head, row.prompt, row.sampling.logprobs or 0)
        return self.gpt.lm_head(last).float(), encoded

    def _step(self) -> None:
        """One decoding step for every running row: feed its newest token, pick the next."""
        self._drop_left()
        if not self.rows:
            return
        assert self.cache is not None
        B = len(self.rows)
        self.steps += 1
        self.largest_batch = max(self.largest_batch, B)
        device = self.usable.device
        tokens = torch.tensor([[row.last] for row in self.rows], device=device)
        positions, mask = self.cache.step(B)
        try:
            hidden = self.gpt.hidden_states(tokens, position_ids=positions, attn_mask=mask, cache=self.cache)
            logits = self.gpt.lm_head(hidden[:, -1]).float()  # (B, V)
        except Exception as error:  # out of memory...: fail these rows, keep serving
            log.exception("a decoding step of %d rows failed", B)
            for row in self.rows:
                row.job.fail(error)
            self._drop_left()
            return
        choose(logits, self.rows)
        self._drop_left()

    def _drop_left(self) -> None:
        """Take out the rows that ended or whose job failed or lost its client; keep the rest packed."""
        for row in self.rows:
            if not row.done and (row.job.cancelled or row.job.failed):
                row.done = True
                self.cancelled_rows += not row.job.failed
        if not any(row.done for row in self.rows):
            return
        left = [row for row in self.rows if row.done]
        kept = len(self.rows) - len(left)
        holes = [i for i in range(kept) if self.rows[i].done]
        movers = [i for i in range(kept, len(self.rows)) if not self.rows[i].done]
        assert self.cache is not None
        for hole, source in zip(holes, movers, strict=True):
            self.cache.move(source, hole)
            self.rows[hole] = self.rows[source]
        del self.rows[kept:]
        self._settle(left)

    def _settle(self, rows: list[Row]) -> None:
        """Count the jobs of `rows` that have nothing left running or waiting."""
        with self._condition:
            for job in dict.fromkeys(row.job for row in rows):
                if job not in self._waiting and not self._has_rows(job):
                    self.finished_jobs += 1

    def _has_rows(self, job: Job) -> bool:
        return any(row.job is job for row in self.rows)

    def _classify(self, jobs: list[Job]) -> None:
        """Class probabilities for each job's texts (one `predict_proba` call per job)."""
        classifier = self.usable.classifier
        assert classifier is not None  # classification jobs are only accepted for classification models
        self.batches += 1
        self.largest_batch = max(self.largest_batch, len(jobs))
        for job in jobs:
            try:
                job.emit(classifier.predict_proba(job.texts))
            except Exception as error:
                log.exception("classification failed")
                job.fail(error)
            self.finished_jobs += 1
