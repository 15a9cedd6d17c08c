"""One answer being decoded: its prompt, generator, penalties and bias, text so far, and how it ends;
and how the rows of a step pick their next tokens, each on its own.

The batching worker owns every `Row`; a row turns the tokens picked for it into the job's events (text
pieces while streaming, then one `Finished`). Picking runs per row where it can raise (sampling, log-probs,
text), so a row that fails fails only its own job.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from gpt_finetune.model.sampling import draw, filter_logits
from gpt_finetune.serving.jobs import Finished, Job, Piece, TokenLogprob
from gpt_finetune.serving.streaming import TextStream

log = logging.getLogger(__name__)


class Row:
    """Answer `index` of `job` (prompt `index // job.n`, choice `index % job.n`)."""

    def __init__(self, job: Job, index: int, device: torch.device, vocab_size: int) -> None:
        self.job, self.index = job, index
        self.prompt = job.prompts[index // job.n]
        self.sampling = s = job.sampling
        self.generator: torch.Generator | None = None
        if s.seed is not None and s.temperature > 0:  # choice j draws from seed + j: reproducible answers
            self.generator = torch.Generator(device=device).manual_seed(s.seed + index % job.n)
        self.stream = TextStream(s.stops)
        self.tokens: list[int] = []
        self.logprobs: list[TokenLogprob] = []
        self.unsent: list[TokenLogprob] = []  # log-probs of tokens whose text has not been sent yet
        self.prompt_logprobs: tuple[TokenLogprob, ...] | None = None
        self.counts = torch.zeros(vocab_size, device=device) if s.penalized else None
        self.bias: tuple[torch.Tensor, torch.Tensor] | None = None
        if s.logit_bias:
            ids, values = zip(*s.logit_bias, strict=True)
            self.bias = torch.tensor(ids, device=device), torch.tensor(values, device=device)
        self.last = self.prompt[-1]  # the token the next decoding step feeds
        self.done = False

    @property
    def adjusts(self) -> bool:
        """Whether the row changes its logits before picking (penalties or bias)."""
        return self.counts is not None or self.bias is not None

    def adjust(self, logits: torch.Tensor) -> None:
        """Apply the row's logit bias and presence / frequency penalties to its (V,) logits, in place."""
        if self.bias is not None:
            logits.index_add_(0, self.bias[0], self.bias[1])
        if self.counts is not None:
            s = self.sampling
            logits -= s.frequency_penalty * self.counts + s.presence_penalty * (self.counts > 0).float()

    def accept(self, token: int, logprob: TokenLogprob | None) -> None:
        """Take the worker's next token: send the text that became final, and finish if the row ended."""
        self.tokens.append(token)
        self.last = token
        self.job.decoded += 1
        if self.counts is not None:
            self.counts[token] += 1
        if logprob is not None:
            self.logprobs.append(logprob)
            self.unsent.append(logprob)
        text = self.stream.feed(token)
        if text and self.job.stream:
            self.job.emit(Piece(self.index, text, tuple(self.unsent)))
            self.unsent = []
        if self.stream.done or len(self.tokens) >= self.sampling.max_new_tokens:
            self.finish()

    def finish(self) -> None:
        """End the row (end-of-text, a stop string or its token limit): its last text, then `Finished`."""
        rest = self.stream.finish()
        if self.job.stream and (rest or self.unsent):
            self.job.emit(Piece(self.index, rest, tuple(self.unsent)))
        wanted = self.sampling.logprobs is not None
        self.job.emit(
            Finished(
                self.index,
                self.stream.text,
                "stop" if self.stream.stopped_by == "stop" else "length",
                len(self.tokens),
                tuple(self.logprobs) if wanted else None,
                self.prompt_logprobs,
            )
        )
        self.done = True


def token_logprob(logprobs: torch.Tensor, token: int, top: int) -> TokenLogprob:
    """`token`'s entry from one position's (V,) log-probs, with the `top` most likely tokens."""
    best = torch.topk(logprobs, top) if top > 0 else None
    pairs = tuple(zip(best.indices.tolist(), best.values.tolist(), strict=True)) if best is not None else ()
    return TokenLogprob(token, float(logprobs[token]), pairs)


def prompt_logprobs(logits: torch.Tensor, prompt: list[int], top: int) -> tuple[TokenLogprob, ...]:
    """Each prompt token's log-prob given the tokens before it (None for the first), from the (T-1, V)
    logits of the positions that predict tokens 1..T-1."""
    logprobs = F.log_softmax(logits.float(), dim=-1)
    first = TokenLogprob(prompt[0], None)
    return (first, *(token_logprob(logprobs[i], t, top) for i, t in enumerate(prompt[1:])))


def choose(logits: torch.Tensor, rows: list[Row]) -> None:
    """Pick each row's next token from the step's (B, V) logits and hand it over: penalties and bias,
    then argmax or a sample; log-probs of the raw logits. A row that raises fails only its own job."""
    wanted = any(row.sampling.logprobs is not None for row in rows)
    logprobs = F.log_softmax(logits, dim=-1) if wanted else None
    if any(row.adjusts for row in rows):
        logits = logits.clone()
        for i, row in enumerate(rows):
            if row.adjusts:
                row.adjust(logits[i])
    chosen = logits.argmax(dim=-1).tolist()
    sampled = [i for i, row in enumerate(rows) if row.sampling.temperature > 0]
    if sampled:
        probs = probabilities(logits[sampled], [rows[i] for i in sampled])
        for j, i in enumerate(sampled):
            try:
                chosen[i] = int(draw(probs[j : j + 1], rows[i].generator)[0])
            except Exception as error:
                fail(rows[i], error)
    for i, row in enumerate(rows):
        if row.done or row.job.failed:
            continue
        try:
            top = row.sampling.logprobs
            entry = None if logprobs is None or top is None else token_logprob(logprobs[i], chosen[i], top)
            row.accept(chosen[i], entry)
        except Exception as error:
            fail(row, error)


def probabilities(logits: torch.Tensor, rows: list[Row]) -> torch.Tensor:
    """Sampling probabilities of sampled rows' (B, V) logits: temperature, then top-k, then top-p."""
    device = logits.device
    temperatures = torch.tensor([row.sampling.temperature for row in rows], device=device)
    ks = [row.sampling.top_k for row in rows]
    ps = [row.sampling.top_p for row in rows]
    top_ks = torch.tensor([k or logits.shape[-1] for k in ks], device=device) if any(ks) else None
    top_ps = torch.tensor([p or 1.0 for p in ps], device=device) if any(ps) else None
    return torch.softmax(filter_logits(logits, temperatures, top_ks, top_ps), dim=-1)


def fail(row: Row, error: Exception) -> None:
    log.error("a request failed in its row: %r", error, exc_info=error)
    row.job.fail(error)
