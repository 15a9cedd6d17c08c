"""Batched text generation with a KV cache: greedy, temperature and top-k sampling, stop at end-of-text.

Prompts of different lengths are left-padded; each row gets its own positions (0 at its first real
token) and attends only to its own real tokens, so a row decodes exactly as it would alone. When a row
outgrows the context window the last `context_length` tokens are re-encoded each step, as the book does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import torch

from gpt_finetune.model.kv_cache import KVCache
from gpt_finetune.tokenizer import END_OF_TEXT

if TYPE_CHECKING:
    from gpt_finetune.model.gpt import GPT

# Streaming: called with {prompt index: new token} each step; returns the prompt indices to stop.
OnToken = Callable[[dict[int, int]], Iterable[int] | None]


def generate(
    model: GPT,
    prompts: Sequence[Sequence[int]] | torch.Tensor,
    *,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_k: int | None = None,
    eos_id: int | None = END_OF_TEXT,
    seed: int | None = None,
    batch_size: int | None = None,
    use_cache: bool = True,
    on_batch: Callable[[int], None] | None = None,
    on_token: OnToken | None = None,
) -> list[list[int]]:
    """New tokens for each prompt (ending with `eos_id` where the row stopped on it), in prompt order.

    `temperature=0` is greedy; otherwise logits are divided by it and sampled, from the `top_k` most
    likely tokens when given. `batch_size` bounds how many prompts decode together (similar lengths
    are grouped to save padding); `seed` makes sampling reproducible. `on_batch(n)` is called after each
    batch with the number of prompts it finished (a progress bar). `on_token({prompt index: token})` is
    called after each decoding step with the new token of every row still running (streaming); the
    indices it returns stop those rows there (a stop string was seen, a client went away).
    """
    rows = [list(map(int, p)) for p in (prompts.tolist() if isinstance(prompts, torch.Tensor) else prompts)]
    if any(len(r) == 0 for r in rows):
        raise ValueError("every prompt needs at least one token")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
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
                max_new_tokens,
                temperature,
                top_k,
                eos_id,
                generator,
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
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    eos_id: int | None,
    generator: torch.Generator | None,
    use_cache: bool,
    on_token: OnToken | None = None,
) -> list[list[int]]:
    context = model.config.context_length
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
    finished = torch.zeros(len(rows), dtype=torch.bool, device=device)
    cut: dict[int, int] = {}  # rows stopped by `on_token`: how many new tokens they keep
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
        next_token = _pick(logits, temperature, top_k, generator)
        if eos_id is not None:
            next_token = torch.where(finished, torch.full_like(next_token, eos_id), next_token)
        generated.append(next_token)
        if on_token is not None:
            picked = next_token.tolist()
            running = (~finished).nonzero().flatten().tolist()
            for i in on_token({i: picked[i] for i in running}) or ():
                cut.setdefault(i, step + 1)  # a stopped row ends after this token
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


def _pick(
    logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None
) -> torch.Tensor:
    """Next token per row: argmax when temperature is 0, else a sample from the (top-k) softmax."""
    if temperature <= 0.0:
        return logits.argmax(dim=-1)
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits / temperature, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)


def _trim(rows: list[list[int]], eos_id: int | None) -> list[list[int]]:
    """Cut each row after its first end-of-text token (kept), dropping the padding that follows."""
    if eos_id is None:
        return rows
    return [row[: row.index(eos_id) + 1] if eos_id in row else row for row in rows]
