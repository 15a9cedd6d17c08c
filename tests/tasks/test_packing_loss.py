"""Packed training equals unpacked training token for token, and no token sees another record (fp32)."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters

from gpt_finetune.data.collate import IGNORE_INDEX, collate_instructions
from gpt_finetune.data.packing import (
    PackedRows,
    collate_packed,
    document_attention_mask,
    pack_records,
    record_width,
)
from gpt_finetune.model import GPT
from gpt_finetune.tasks.instruct import InstructionTuning
from gpt_finetune.tasks.loss import masked_lm_loss_sum

SPEC = {"size": "tiny", "pretrained": False, "context_length": 64, "tie_embeddings": False}
MAX_LENGTH = 24  # the 30-token record is truncated
LENGTHS, PROMPTS = (17, 5, 11, 23, 30, 9, 14), (6, 2, 4, 9, 12, 3, 5)


def records() -> list[tuple[list[int], int]]:
    rng = random.Random(0)
    return [([rng.randrange(50000) for _ in range(n)], p) for n, p in zip(LENGTHS, PROMPTS, strict=True)]


def packed_batch(items: list[tuple[list[int], int]], mask_prompt: bool) -> tuple[dict, list[list[int]]]:
    """The records packed into rows of 48 positions, and the rows (record indices)."""
    rows = pack_records([record_width(len(ids), MAX_LENGTH) for ids, _ in items], 48, seed=0)
    dataset = PackedRows(items, rows)
    rows_of_items = [dataset[i] for i in range(len(dataset))]
    return collate_packed(rows_of_items, max_length=MAX_LENGTH, mask_prompt=mask_prompt), rows


def unpacked_batch(items: list[tuple[list[int], int]], mask_prompt: bool) -> dict[str, torch.Tensor]:
    prompts = [p for _, p in items] if mask_prompt else None
    return collate_instructions([ids for ids, _ in items], max_length=MAX_LENGTH, prompt_lengths=prompts)


def token_losses(model: GPT, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy at every position (B, T), 0 where the target is ignored; per document when packed."""
    logits = model(batch["input_ids"], **layout(batch))  # (B, T, V)
    return F.cross_entropy(
        logits.transpose(1, 2), batch["targets"], ignore_index=IGNORE_INDEX, reduction="none"
    )


def layout(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's `position_ids` and `attn_mask` for a packed batch; nothing for a plain one."""
    if "document_ids" not in batch:
        return {}
    return {
        "position_ids": batch["position_ids"],
        "attn_mask": document_attention_mask(batch["document_ids"]),
    }


def per_record(
    losses: torch.Tensor, batch: dict[str, torch.Tensor], rows: list[list[int]] | None, n: int
) -> list[torch.Tensor]:
    """Each record's target-token losses, in record order, from an unpacked (rows None) or packed batch."""
    out: list[torch.Tensor] = [torch.empty(0)] * n
    if rows is None:
        for r in range(n):
            keep = batch["targets"][r] != IGNORE_INDEX
            out[r] = losses[r][keep]
        return out
    for r, row in enumerate(rows):
        for document, index in enumerate(row):
            keep = (batch["document_ids"][r] == document) & (batch["targets"][r] != IGNORE_INDEX)
            out[index] = losses[r][keep]
    return out


@pytest.mark.parametrize("mask_prompt", [False, True])
def test_packed_and_unpacked_give_the_same_token_losses_and_gradients(mask_prompt: bool) -> None:
    torch.manual_seed(0)
    task = InstructionTuning(model=SPEC).eval()
    items = records()
    plain = unpacked_batch(items, mask_prompt)
    packed, rows = packed_batch(items, mask_prompt)
    assert len(rows) < len(items)  # records really share rows

    plain_losses = per_record(token_losses(task.model, plain), plain, None, len(items))
    packed_losses = per_record(token_losses(task.model, packed), packed, rows, len(items))
    for ours, alone in zip(packed_losses, plain_losses, strict=True):
        assert ours.numel() == alone.numel() > 0
        torch.testing.assert_close(ours, alone, rtol=0, atol=1e-5)

    gradients = []
    for batch in (plain, packed):
        task.zero_grad()
        loss_sum = task._shared_step(batch, "val")  # the task's own path: the packing keys passed on
        (loss_sum / (batch["targets"] != IGNORE_INDEX).sum()).backward()
        gradients.append({n: p.grad.clone() for n, p in task.named_parameters() if p.grad is not None})
    assert gradients[0].keys() == gradients[1].keys() and gradients[0]
    for name, grad in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], grad, rtol=0, atol=1e-5, msg=name)


def test_no_token_attends_across_a_record_boundary() -> None:
    """Changing the middle record of a row leaves the other records' logits as they were; under a plain
    causal mask (the check that this test can fail) the record after it moves."""
    torch.manual_seed(0)
    model = InstructionTuning(model=SPEC).model.eval()
    rng = random.Random(1)
    row = [([rng.randrange(50000) for _ in range(n)], 1) for n in (7, 9, 6)]
    changed = [row[0], ([rng.randrange(50000) for _ in range(9)], 1), row[2]]
    before, after = collate_packed([row]), collate_packed([changed])
    others = before["document_ids"][0] != 1
    with torch.no_grad():
        logits = [model(b["input_ids"], **layout(b))[0, others] for b in (before, after)]
        causal = [model(b["input_ids"], position_ids=b["position_ids"])[0, others] for b in (before, after)]
    torch.testing.assert_close(logits[1], logits[0], rtol=0, atol=1e-6)
    assert (causal[1] - causal[0]).abs().max() > 1e-3  # what per-document attention prevents


def test_padding_rows_stay_finite() -> None:
    """Padding positions attend to themselves: no NaN in the logits, the loss or the gradients."""
    torch.manual_seed(0)
    task = InstructionTuning(model=SPEC)
    batch = collate_packed([[([1, 2, 3], 1)], [([4, 5, 6, 7, 8, 9, 10], 1), ([11, 12], 1)]])
    assert (batch["document_ids"] == -1).any()
    logits = task.model(batch["input_ids"], **layout(batch))
    assert torch.isfinite(logits).all()
    loss_sum, count = masked_lm_loss_sum(task.model, batch["input_ids"], batch["targets"], **packing(batch))
    loss_sum.backward()
    assert count == 12 and torch.isfinite(loss_sum)
    assert all(torch.isfinite(p.grad).all() for p in task.parameters() if p.grad is not None)


def packing(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: batch[k] for k in ("position_ids", "document_ids")}


def test_bf16_autocast_packed_loss_is_close_to_fp32() -> None:
    torch.manual_seed(0)
    model = InstructionTuning(model=SPEC).model.eval()
    batch, _ = packed_batch(records(), mask_prompt=False)
    args = (model, batch["input_ids"], batch["targets"])
    with torch.no_grad():
        full, count = masked_lm_loss_sum(*args, **packing(batch))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half, _ = masked_lm_loss_sum(*args, **packing(batch))
    assert torch.isfinite(half) and abs(half / count - full / count) < 0.05


@pytest.mark.slow
def test_compiled_packed_loss_equals_eager() -> None:
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    task = InstructionTuning(model=SPEC, compile=True).eval()
    items = records()
    for rows in (items, items[2:]):  # two widths: the dynamic graph serves both
        batch, _ = packed_batch(rows, mask_prompt=True)
        with torch.no_grad():
            compiled, count = task.loss_fn(task.model, batch["input_ids"], batch["targets"], **packing(batch))
            eager, _ = masked_lm_loss_sum(task.model, batch["input_ids"], batch["targets"], **packing(batch))
        torch.testing.assert_close(compiled / count, eager / count, rtol=1e-5, atol=1e-6)
    assert counters["stats"]["unique_graphs"] > 0  # dynamo really compiled it
