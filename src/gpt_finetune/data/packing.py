"""Packing: several tokenised records in one row, each attending only to itself (per-document attention).

A packed batch holds, besides `input_ids` and `targets` (B, T), `position_ids` (restarting at 0 at each
record) and `document_ids` (the record's place in its row, -1 on padding). The (B, 1, T, T) attention
mask is built from `document_ids` where the model runs (`document_attention_mask`), not in the collate:
B x T x T booleans per batch would be most of what a DataLoader moves.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from gpt_finetune.data.collate import IGNORE_INDEX, collate_instructions, collate_labelled
from gpt_finetune.tokenizer import END_OF_TEXT

# (token ids of prompt + output, prompt length), or a conversation's (inputs, targets) of equal length
Item = tuple[list[int], int | list[int]]
PADDING_DOCUMENT = -1


def record_width(length: int, max_length: int | None) -> int:
    """Positions a record of `length` tokens takes in a row: its inputs, cut to `max_length`."""
    return length if max_length is None else min(length, max_length)


def pack_records(widths: Sequence[int], capacity: int, seed: int) -> list[list[int]]:
    """Rows of record indices, each row's widths summing to at most `capacity` (best-fit decreasing).

    Records go longest first into the fullest row that still has room, else into a new row; records of
    equal width go in an order shuffled with `seed`, so the packing is deterministic for a seed.
    """
    if any(w > capacity for w in widths):
        raise ValueError(f"a record of {max(widths)} positions does not fit a row of {capacity}")
    order = torch.randperm(len(widths), generator=torch.Generator().manual_seed(seed)).tolist()
    order.sort(key=lambda i: -widths[i])  # stable: ties keep the seeded order
    rows: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (free positions, row), ascending
    for index in order:
        if widths[index] == 0:
            continue  # an empty record has no inputs, packed or not
        slot = bisect.bisect_left(room, (widths[index], -1))
        if slot == len(room):
            rows.append([index])
            free, row = capacity - widths[index], len(rows) - 1
        else:
            free, row = room.pop(slot)
            rows[row].append(index)
            free -= widths[index]
        bisect.insort(room, (free, row))
    return rows


class PackedRows(Dataset):
    """A split's records grouped into packed rows; item i is the list of row i's (ids, prompt length)."""

    def __init__(self, items: Sequence[Item], rows: list[list[int]]) -> None:
        self.items, self.rows = items, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> list[Item]:
        return [self.items[i] for i in self.rows[index]]


def collate_packed(
    rows: Sequence[Sequence[Item]],
    *,
    max_length: int | None = None,
    mask_prompt: bool = False,
    pad_id: int = END_OF_TEXT,
    ignore_index: int = IGNORE_INDEX,
) -> dict[str, torch.Tensor]:
    """`{"input_ids", "targets", "position_ids", "document_ids"}`, each (B, T), from rows of records.

    Each record's inputs and targets are exactly those `collate_instructions` gives it alone in a batch
    (end-of-text rule, prompt masking, `max_length` cut); a row is its records side by side, right-padded
    to the widest row of the batch with `pad_id` inputs, `ignore_index` targets, position 0 and document -1.
    """
    segments = [
        [one_record(ids, prompt, max_length, mask_prompt, pad_id, ignore_index) for ids, prompt in row]
        for row in rows
    ]
    width = max(sum(s[0].numel() for s in row) for row in segments)
    shape = (len(rows), width)
    batch = {
        "input_ids": torch.full(shape, pad_id, dtype=torch.long),
        "targets": torch.full(shape, ignore_index, dtype=torch.long),
        "position_ids": torch.zeros(shape, dtype=torch.long),
        "document_ids": torch.full(shape, PADDING_DOCUMENT, dtype=torch.long),
    }
    for r, row in enumerate(segments):
        start = 0
        for document, (inputs, targets) in enumerate(row):
            end = start + inputs.numel()
            batch["input_ids"][r, start:end] = inputs
            batch["targets"][r, start:end] = targets
            batch["position_ids"][r, start:end] = torch.arange(end - start)
            batch["document_ids"][r, start:end] = document
            start = end
    return batch


def one_record(
    ids: list[int],
    prompt: int | list[int],
    max_length: int | None,
    mask_prompt: bool,
    pad_id: int,
    ignore_index: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of one record as `collate_instructions` makes them for it alone in a batch (a
    conversation's `prompt` holds its targets: `collate_labelled`'s)."""
    if isinstance(prompt, list):
        labelled = collate_labelled(
            [(ids, prompt)], pad_id=pad_id, ignore_index=ignore_index, max_length=max_length
        )
        return labelled["input_ids"][0], labelled["targets"][0]
    alone = collate_instructions(
        [ids],
        pad_id=pad_id,
        ignore_index=ignore_index,
        max_length=max_length,
        prompt_lengths=[prompt] if mask_prompt else None,
    )
    return alone["input_ids"][0], alone["targets"][0]


def document_attention_mask(document_ids: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T) boolean SDPA mask, True where attention is allowed: causal within each document.

    Padding (document -1) attends to the padding before it and to itself, so no row of the mask is all
    False (SDPA would give NaN there).
    """
    T = document_ids.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=document_ids.device).tril()
    same = document_ids[:, :, None] == document_ids[:, None, :]  # (B, T, T): query x key
    return (same & causal).unsqueeze(1)


def padding_share(rows: list[list[int]], widths: Sequence[int], row_length: int) -> float:
    """Share of the positions of `rows` rows of `row_length` that no record fills."""
    if not rows:
        return 0.0
    return 1 - sum(widths[i] for row in rows for i in row) / (len(rows) * row_length)
