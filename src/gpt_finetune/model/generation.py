"""Batched text generation with a KV cache: greedy or sampled (temperature, top-k, top-p), to end-of-text.

Prompts of different lengths are left-padded; each row gets its own positions (0 at its first real
token) and attends only to its own real tokens, so a row decodes exactly as it would alone. When a row
outgrows the context window the last `context_length` tokens are re-encoded each step, as the book does.
The sampling settings and the token limit may differ per row (a server batches unrelated requests).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import torch

from gpt_finetune.model.kv_cache import KVCache
from gpt_finetune.model.sampling import draw, filter_logits
from gpt_finetune.tokenizer import END_OF_TEXT

if TYPE_CHECKING:
    from gpt_finetune.model.gpt import GPT

# Streaming: called with {prompt index: new token} each step; returns the prompt indices to stop.
OnToken = Callable[[dict[int, int]], Iterable[int] | None]
T = TypeVar("T")


@dataclass
class RowSettings:
    """One batch's per-row settings; rows that share a generator are sampled from it in one draw."""

    limits: list[int]  # max new tokens
    temperatures: list[float]
    top_ks: list[int | None]
    top_ps: list[float | None]
    generators: list[torch.Generator | None]

    def take(self, index: list[int]) -> RowSettings:
        """The settings of rows `index`, in that order."""
        return RowSettings(*([values[i] for i in index] for values in vars(self).values()))


def generate(
    model: GPT,
    prompts: Sequence[Sequence[int]] | torch.Tensor,
    *,
    max_new_tokens: int | Sequence[int] = 256,
    temperature: float | Sequence[float] = 0.0,
    top_k: int | Sequence[int | None] | None = None,
    top_p: float | Sequence[float | None] | None = None,
    eos_id: int | None = END_OF_TEXT,
    seed: int | Sequence[int | None] | None = None,
    batch_size: int | None = None,
    use_cache: bool = True,
    on_batch: Callable[[int], None] | None = None,
    on_token: OnToken | None = None,
) -> list[list[int]]:
    """New tokens for each prompt (ending with `eos_id` where the row stopped on it), in prompt order.

    `temperature=0` is greedy; otherwise logits are divided by it and sampled, from the `top_k` most
    likely tokens and the `top_p` nucleus when given (`model.sampling`). `batch_size` bounds how many
    prompts decode together (similar lengths are grouped to save padding); `seed` makes sampling
    reproducible. `on_batch(n)` is called after each
    batch with the number of prompts it finished (a progress bar). `on_token({prompt index: token})` is
    called after each decoding step with the new token of every row still running (streaming); the
    indices it returns stop those rows there (a stop string was seen, a client went away).

    `max_new_tokens`, `temperature`, `top_k`, `top_p` and `seed` may also be given per prompt (a
    sequence): a per-prompt seed samples that row from its own generator, so its tokens do not depend on
    its batch.
    """
    rows = [list(map(int, p)) for p in (prompts.tolist() if isinstance(prompts, torch.Tensor) else prompts)]
    if any(len(r) == 0 for r in rows):
        raise ValueError("every prompt needs at least one token")
    device = next(model.parameters()).device
    settings = RowSettings(
        _per_row(max_new_tokens, len(rows), "max_new_tokens"),
        _per_row(temperature, len(rows), "temperature"),
        _per_row(top_k, len(rows), "top_k"),
        _per_row(top_p, len(rows), "top_p"),
        _generators(seed, len(rows), device),
    )
    if any(limit < 0 for limit in settings.limits):
        raise ValueError(f"max_new_tokens must be >= 0, got {min(settings.limits)}")
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    chunk = batch_size or len(rows) or 1
    outputs: list[list[int]] = [[] for _ in rows]
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), chunk):
            index = order[start : start + chunk]
            new = _generate_batch(
                model,
                [rows[i] for i in index],
                settings.take(index),
                eos_id,
                use_cache,
                None if on_token is None else _reindexed(on_token, index),
            )
            for i, tokens in zip(index, new, strict=True):
                outputs[i] = tokens
            if on_batch is not None:
                on_batch(len(index))
    finally:
        model.train(was_training)
    return outputs


@torch.no_grad()
def _generate_batch(
    model: GPT,
    rows: list[list[int]],
    settings: RowSettings,
    eos_id: int | None,
    use_cache: bool,
    on_token: OnToken | None = None,
) -> list[list[int]]:
    context = model.config.context_length
    max_new_tokens = max(settings.limits)
    device = next(model.parameters()).device
    rows = [r[-context:] for r in rows]
    width = max(len(r) for r in rows)
    tokens = torch.full((len(rows), width), END_OF_TEXT if eos_id is None else eos_id, dtype=torch.long)
    valid = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        tokens[i, width - len(r) :] = torch.tensor(r)
        valid[i, width - len(r) :] = True
    tokens, valid = tokens.to(device), valid.to(device)

    capacity = min(width + max_new_tokens, context)
    cache = None
    if use_cache:
        head_dim = model.config.emb_dim // model.config.n_heads
        dtype = next(model.parameters()).dtype
        cache = KVCache(
            model.config.n_layers,
            len(rows),
            model.config.n_heads,
            capacity,
            head_dim,
            device=device,
            dtype=dtype,
        )
    sampler = Sampler(settings, device)
    cut: dict[int, int] = {i: 0 for i, limit in enumerate(settings.limits) if limit == 0}
    # rows stopped by `on_token` or their token limit: how many new tokens they keep
    finished = torch.tensor([i in cut for i in range(len(rows))], dtype=torch.bool, device=device)
    generated: list[torch.Tensor] = []
    for step in range(max_new_tokens):
        if cache is not None and step > 0 and cache.length < capacity:
            # Incremental step: the newest token attends to every real token of its row.
            positions = valid.sum(dim=1, keepdim=True) - 1  # (B, 1)
            hidden = model.hidden_states(
                tokens[:, -1:], position_ids=positions, attn_mask=valid[:, None, None, :], cache=cache
            )
        else:
            # First step, no cache, or past the context: encode the last `context` tokens in full.
            window, window_valid = tokens[:, -context:], valid[:, -context:]
            hidden = model.hidden_states(
                window,
                position_ids=(window_valid.cumsum(dim=1) - 1).clamp(min=0),
                attn_mask=_padded_causal_mask(window_valid),
                cache=cache if step == 0 else None,
            )
        logits = model.lm_head(hidden[:, -1]).float()  # (B, V)
        next_token = sampler.pick(logits)
        if eos_id is not None:
            next_token = torch.where(finished, torch.full_like(next_token, eos_id), next_token)
        generated.append(next_token)
        if on_token is not None:
            picked = next_token.tolist()
            running = (~finished).nonzero().flatten().tolist()
            for i in on_token({i: picked[i] for i in running}) or ():
                cut.setdefault(i, step + 1)  # a stopped row ends after this token
                finished[i] = True
        for i, limit in enumerate(settings.limits):
            if limit == step + 1:
                cut.setdefault(i, limit)
                finished[i] = True
        if eos_id is not None:
            finished |= next_token == eos_id
        if (eos_id is not None or cut) and bool(finished.all()):
            break
        tokens = torch.cat([tokens, next_token[:, None]], dim=1)
        valid = torch.cat([valid, torch.ones_like(valid[:, :1])], dim=1)
    new = _trim(torch.stack(generated, dim=1).tolist() if generated else [[] for _ in rows], eos_id)
    return [row[: cut[i]] if i in cut else row for i, row in enumerate(new)]


def _reindexed(on_token: OnToken, index: list[int]) -> OnToken:
    """`on_token` seen from one batch: batch rows become prompt indices, and back."""
    row_of = {prompt: row for row, prompt in enumerate(index)}

    def batch_on_token(new: dict[int, int]) -> Iterable[int]:
        stopped = on_token({index[r]: t for r, t in new.items()}) or ()
        return [row_of[p] for p in stopped if p in row_of]

    return batch_on_token


def _padded_causal_mask(valid: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T) boolean: causal over real keys; each position also sees itself (pad rows stay finite)."""
    T = valid.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=valid.device).tril()
    eye = torch.eye(T, dtype=torch.bool, device=valid.device)
    return ((causal & valid[:, None, :]) | eye)[:, None]


class Sampler:
    """Picks each row's next token with its own temperature, top-k, top-p and generator."""

    def __init__(self, settings: RowSettings, device: torch.device) -> None:
        self.temperatures = torch.tensor(settings.temperatures, dtype=torch.float, device=device)
        self.sampled = [t > 0.0 for t in settings.temperatures]
        ks, ps = settings.top_ks, settings.top_ps
        self.top_ks = (
            torch.tensor([2**62 if k is None else k for k in ks], device=device)
            if any(k is not None for k in ks)
            else None
        )
        self.top_ps = (
            torch.tensor([1.0 if p is None else p for p in ps], device=device)
            if any(p is not None for p in ps)
            else None
        )
        groups: dict[int, tuple[torch.Generator | None, list[int]]] = {}
        for row, generator in enumerate(settings.generators):
            groups.setdefault(id(generator), (generator, []))[1].append(row)
        self.groups = list(groups.values())

    def pick(self, logits: torch.Tensor) -> torch.Tensor:
        """Next token per row of (B, V) `logits`: argmax at temperature 0, else a filtered softmax sample."""
        picked = logits.argmax(dim=-1)
        if not any(self.sampled):
            return picked
        probs = torch.softmax(filter_logits(logits, self.temperatures, self.top_ks, self.top_ps), dim=-1)
        for generator, group in self.groups:
            rows = [r for r in group if self.sampled[r]]
            if rows:
                picked[rows] = draw(probs[rows], generator)
        return picked


def _per_row(value: T | Sequence[T], n: int, name: str) -> list[T]:
    """`value` for each of `n` rows: a scalar repeated, or a sequence of exactly `n`."""
    if isinstance(value, Sequence):
        if len(value) != n:
            raise ValueError(f"{name} has {len(value)} values for {n} prompts")
        return list(value)
    return [value] * n


def _generators(
    seed: int | Sequence[int | None] | None, n: int, device: torch.device
) -> list[torch.Generator | None]:
    """One generator shared by every row (a scalar seed), one per seeded row, or None (torch's RNG)."""
    if seed is None or isinstance(seed, int):
        shared = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
        return [shared] * n
    seeds: list[int | None] = _per_row(seed, n, "seed")
    return [None if s is None else torch.Generator(device=device).manual_seed(s) for s in seeds]


def _trim(rows: list[list[int]], eos_id: int | None) -> list[list[int]]:
    """Cut each row after its first end-of-text token (kept), dropping the padding that follows."""
    if eos_id is None:
        return rows
    return [row[: row.index(eos_id) + 1] if eos_id in row else row for row in rows]
