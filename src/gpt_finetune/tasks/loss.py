"""Next-token cross-entropy over the targets that are not ignored."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gpt_finetune.data.collate import IGNORE_INDEX
from gpt_finetune.data.packing import document_attention_mask
from gpt_finetune.model import GPT

PACKING_KEYS = ("position_ids", "document_ids")  # what a packed batch holds besides input_ids and targets


def masked_lm_loss_sum(
    model: GPT,
    input_ids: torch.Tensor,
    targets: torch.Tensor,
    *,
    head_on_targets_only: bool = True,
    position_ids: torch.Tensor | None = None,
    document_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy, number of target tokens) over targets != -100.

    With `head_on_targets_only` the LM head (the largest matmul of a GPT-2 step) runs only at positions
    that have a target, instead of at every position; the result is the same. A packed batch passes its
    `position_ids` and `document_ids` (B, T): each document then attends only to itself.
    """
    mask = document_attention_mask(document_ids) if document_ids is not None else None  # (B, 1, T, T)
    hidden = model.hidden_states(input_ids, position_ids=position_ids, attn_mask=mask)  # (B, T, C)
    keep = targets != IGNORE_INDEX
    count = keep.sum()
    if head_on_targets_only:
        logits = model.lm_head(hidden[keep])  # (N, V)
        loss = F.cross_entropy(logits.float(), targets[keep], reduction="sum")
    else:
        logits = model.lm_head(hidden)  # (B, T, V)
        loss = F.cross_entropy(
            logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
        )
    return loss, count


def masked_lm_loss(
    model: GPT,
    input_ids: torch.Tensor,
    targets: torch.Tensor,
    *,
    head_on_targets_only: bool = True,
    **packing: torch.Tensor,
) -> torch.Tensor:
    """Mean cross-entropy over targets != -100 (0 with a gradient path when there are none); `packing`:
    a packed batch's `position_ids` and `document_ids`."""
    loss, count = masked_lm_loss_sum(
        model, input_ids, targets, head_on_targets_only=head_on_targets_only, **packing
    )
    return loss / count.clamp(min=1)
