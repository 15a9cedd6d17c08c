"""How the next token is chosen from a row's logits: greedy, or sampled with temperature, top-k and top-p.

One rule for `generate()` (chat.py) and the server's continuous batching: logits are divided by the
temperature, cut to the `top_k` most likely tokens, then to the nucleus (the fewest most likely tokens
whose probability adds up to `top_p`), and a token is drawn from what is left. The bounds every caller
checks its settings against live here too, so a value that would break decoding (a denormal temperature
makes NaN probabilities; a seed past 2**63 overflows the generator) is refused before it is used.
"""

from __future__ import annotations

import torch

MIN_TEMPERATURE = 0.01  # below: greedy in all but name, and a denormal one overflows 1/temperature
MAX_TEMPERATURE = 2.0  # OpenAI's bound
SEED_LIMIT = 2**63  # seeds are in [0, 2**63)


def sampling_problems(
    temperature: float,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    vocab_size: int | None = None,
) -> list[str]:
    """What is wrong with these settings, one `name=value: fix` phrase each (empty when all are usable)."""
    found = []
    if temperature != 0 and not MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE:
        found.append(
            f"temperature={temperature}: use 0 (greedy) or a value in [{MIN_TEMPERATURE}, {MAX_TEMPERATURE}]"
        )
    if top_k is not None and not 1 <= top_k <= (vocab_size or top_k):
        limit = f" up to the vocabulary size {vocab_size}" if vocab_size else ""
        found.append(f"top_k={top_k}: use a positive integer{limit}, or null (all tokens)")
    if top_p is not None and not 0 < top_p <= 1:
        found.append(f"top_p={top_p}: use a value in (0, 1], or null (1: all tokens)")
    if seed is not None and not 0 <= seed < SEED_LIMIT:
        found.append(f"seed={seed}: use an integer in [0, 2**63), or null")
    return found


def filter_logits(
    logits: torch.Tensor,
    temperatures: torch.Tensor,
    top_ks: torch.Tensor | None = None,
    top_ps: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, V) `logits` divided by each row's temperature (0 counts as 1), with -inf outside each row's
    top-k (B,) and nucleus top-p (B,); a row's k past the vocabulary or p >= 1 keeps every token."""
    logits = logits / torch.where(temperatures > 0, temperatures, 1.0)[:, None]
    if top_ks is not None:
        ks = top_ks.clamp(1, logits.shape[-1])
        top = torch.topk(logits, int(ks.max()), dim=-1).values  # (B, k_max), descending
        logits = logits.masked_fill(logits < top.gather(1, ks[:, None] - 1), float("-inf"))
    if top_ps is not None:
        logits = logits.masked_fill(outside_nucleus(logits, top_ps), float("-inf"))
    return logits


def outside_nucleus(logits: torch.Tensor, top_ps: torch.Tensor) -> torch.Tensor:
    """(B, V) True for tokens outside each row's nucleus: a token is kept while the probability of the
    tokens more likely than it is below `top_p` (so the most likely one always is)."""
    ordered, order = logits.sort(dim=-1, descending=True)
    probs = ordered.softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs  # (B, V) the mass of the more likely tokens
    dropped = (before >= top_ps[:, None]) & (top_ps[:, None] < 1)
    return dropped.scatter(1, order, dropped)


def draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row of (B, V) `probs` from `generator` (torch's own when None), (B,)."""
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)
