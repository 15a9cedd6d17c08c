"""One answer being decoded: its prompt, generator, penalties and bias, text so far, and how it ends.

The batching worker owns every `Row`; a row turns the tokens the worker picks for it into the job's
events (text pieces while streaming, then one `Finished`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gpt_finetune.serving.jobs import Finished, Job, Piece, TokenLogprob
from gpt_finetune.serving.streaming import TextStream


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
