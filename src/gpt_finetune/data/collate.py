"""Batching for instruction tuning: pad, shift by one, ignore padding (and optionally the prompt)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gpt_finetune.tokenizer import END_OF_TEXT

IGNORE_INDEX = -100


def collate_instructions(
    sequences: Sequence[Sequence[int]],
    *,
    pad_id: int = END_OF_TEXT,
    ignore_index: int = IGNORE_INDEX,
    max_length: int | None = None,
    prompt_lengths: Sequence[int] | None = None,
) -> dict[str, torch.Tensor]:
    """`{"input_ids", "targets"}`, each (B, T), from token sequences (the book's chapter 7 collate).

    Every sequence gets one `pad_id` (end-of-text) appended and is right-padded with `pad_id` to the longest
    in the batch plus one; inputs are all but the last column, targets all but the first. In targets the
    first `pad_id` of each row is kept (the model learns to stop) and every later one becomes
    `ignore_index`. With `prompt_lengths`, the first `prompt_length - 1` targets of each row are ignored
    too, so only the response is learned. Both tensors are then cut to `max_length` columns.
    """
    if prompt_lengths is not None and len(prompt_lengths) != len(sequences):
        raise ValueError(f"{len(prompt_lengths)} prompt lengths for {len(sequences)} sequences")
    width = max(len(s) for s in sequences) + 1
    padded = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    for row, seq in enumerate(sequences):
        padded[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
    input_ids, targets = padded[:, :-1], padded[:, 1:].clone()
    is_pad = targets == pad_id
    targets[is_pad & (is_pad.cumsum(dim=1) > 1)] = ignore_index
    if prompt_lengths is not None:
        columns = torch.arange(targets.shape[1])
        prompt = torch.as_tensor(prompt_lengths, dtype=torch.long)[:, None] - 1
        targets[columns[None, :] < prompt] = ignore_index
    if max_length is not None:
        input_ids, targets = input_ids[:, :max_length], targets[:, :max_length]
    return {"input_ids": input_ids.contiguous(), "targets": targets.contiguous()}


def batch_rows(batch: dict[str, torch.Tensor]) -> int:
    """Examples in a collated batch (for throughput monitoring)."""
    return batch["input_ids"].shape[0]


def batch_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Input positions in a collated batch, padding included (for throughput monitoring)."""
    return batch["input_ids"].numel()
