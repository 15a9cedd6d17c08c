"""AdamW parameter groups and the warmup + cosine schedule."""

from __future__ import annotations

import pytest
import torch

from gpt_finetune.tasks.optim import adamw, warmup_cosine


def test_decay_on_matrices_skips_biases_and_norms() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    groups = adamw(model, lr=1e-3, weight_decay=0.1, decay_on="matrices").param_groups
    assert [(len(g["params"]), g["weight_decay"]) for g in groups] == [(1, 0.1), (3, 0.0)]
    assert adamw(model, lr=1e-3, weight_decay=0.1).param_groups[0]["weight_decay"] == 0.1


def test_warmup_then_cosine_to_the_floor() -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    asked = []
    schedule = warmup_cosine(optimizer, 4, lambda: asked.append(1) or 14, cosine=True, min_lr_ratio=0.1)
    lrs = []
    for _ in range(16):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs[:5] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])
    assert lrs[9] == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the cosine
    assert lrs[14:] == pytest.approx([0.1, 0.1])
    assert len(asked) == 1  # the total is asked once, when the cosine starts


def test_adamw_uses_the_fused_kernel_unless_told_not_to() -> None:
    model = torch.nn.Linear(4, 4)
    assert adamw(model, lr=1e-3, weight_decay=0.1).defaults["fused"] is True  # torch would loop on a CPU
    assert not adamw(model, lr=1e-3, weight_decay=0.1, fused=False).defaults["fused"]
