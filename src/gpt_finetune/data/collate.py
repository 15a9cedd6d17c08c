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
    too, so only the response is learned, and the `pad_id` kept is the first after the prompt (a
    conversation's prompt ends its earlier turns with end-of-texts). Both tensors are then cut to
    `max_length` columns.
    """
    if prompt_lengths is not None and len(prompt_lengths) != len(sequences):
        raise ValueError(f"{len(prompt_lengths)} prompt lengths for {len(sequences)} sequences")
    width = max(len(s) for s in sequences) + 1
    padded = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    for row, seq in enumerate(sequences):
        padded[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
    input_ids, targets = padded[:, :-1], padded[:, 1:].clone()
    columns = torch.arange(targets.shape[1])[None, :]
    prompt = torch.as_tensor(prompt_lengths or [0] * len(sequences), dtype=torch.long)[:, None] - 1
    lengths = torch.as_tensor([len(seq) for seq in sequences], dtype=torch.long)[:, None]
    is_pad = targets == pad_id
    # The end-of-text kept: the first after the prompt (a conversation's prompt holds its own) and no later
    # than the one appended.
    after_prompt = is_pad & (columns >= prompt) & (columns < lengths)
    targets[is_pad & ~(after_prompt & (after_prompt.cumsum(dim=1) == 1))] = ignore_index
    if prompt_lengths is not None:
        targets[columns < prompt] = ignore_index
    if max_length is not None:
        input_ids, targets = input_ids[:, :max_length], targets[:, :max_length]
    return {"input_ids": input_ids.contiguous(), "targets": targets.contiguous()}


def collate_labelled(
    items: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    pad_id: int = END_OF_TEXT,
    ignore_index: int = IGNORE_INDEX,
    max_length: int | None = None,
) -> dict[str, torch.Tensor]:
    """`{"input_ids", "targets"}`, each (B, T), from (inputs, targets) pairs of equal length whose targets
    already say what each position learns (`ignore_index` where nothing): right-padded to the longest
    with `pad_id` inputs and `ignore_index` targets, then cut to `max_length` columns (conversations)."""
    width = max(len(inputs) for inputs, _ in items)
    if max_length is not None:
        width = min(width, max_length)
    input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    targets = torch.full((len(items), width), ignore_index, dtype=torch.long)
    for row, (inputs, labels) in enumerate(items):
        n = min(len(inputs), width)
        input_ids[row, :n] = torch.as_tensor(inputs[:n], dtype=torch.long)
        targets[row, :n] = torch.as_tensor(labels[:n], dtype=torch.long)
    return {"input_ids": input_ids, "targets": targets}


def batch_rows(batch: dict[str, torch.Tensor]) -> int:
    """Examples in a collated batch (for throughput monitoring)."""
    return batch["input_ids"].shape[0]


def batch_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Input positions in a collated batch, padding included (for throughput monitoring)."""
    return batch["input_ids"].numel()
