"""Direct Preference Optimization (Rafailov et al., 2023): response log-probabilities and the sigmoid loss."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from gpt_finetune.data.collate import IGNORE_INDEX
from gpt_finetune.model import GPT

Reduction = Literal["mean", "sum"]


def response_logps(
    model: GPT, input_ids: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-probability of each row's targets != -100, their number), each (rows,).

    The LM head runs only where a target is learned (the response and its end-of-text).
    """
    hidden = model.hidden_states(input_ids)  # (R, T, C)
    keep = targets != IGNORE_INDEX
    logits = model.lm_head(hidden[keep]).float()  # (N, V)
    token_logps = -F.cross_entropy(logits, targets[keep], reduction="none")  # (N,)
    rows = keep.nonzero()[:, 0]
    sums = torch.zeros(input_ids.shape[0], device=token_logps.device).index_add(0, rows, token_logps)
    return sums, keep.sum(dim=1)


def reduce_logps(sums: torch.Tensor, counts: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    """A response's log-probability: `sum` over its tokens (the paper, TRL), or their `mean` (the book)."""
    if reduction == "sum":
        return sums
    return sums / counts.clamp(min=1)


@dataclass
class PreferenceLoss:
    """Per pair: the DPO loss and the implicit rewards β·log(π/π_ref) of the chosen and rejected responses."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor

    @property
    def margins(self) -> torch.Tensor:
        return self.chosen_rewards - self.rejected_rewards

    @property
    def accuracy(self) -> torch.Tensor:
        """1 where the chosen response's reward is above the rejected one's, else 0."""
        return (self.chosen_rewards > self.rejected_rewards).float()


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> PreferenceLoss:
    """-log σ(β·h) with h = log π(y_w)/π_ref(y_w) − log π(y_l)/π_ref(y_l); with `label_smoothing` ε the
    conservative form −(1−ε)·log σ(β·h) − ε·log σ(−β·h) (the preference taken to be flipped with
    probability ε)."""
    chosen_ratio = policy_chosen - reference_chosen
    rejected_ratio = policy_rejected - reference_rejected
    logits = beta * (chosen_ratio - rejected_ratio)
    losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return PreferenceLoss(losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach())
