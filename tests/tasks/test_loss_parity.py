"""The training loss equals transformers' GPT2LMHeadModel loss for the same weights and targets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gpt_finetune.data.collate import collate_instructions
from gpt_finetune.tasks.instruct import InstructionTuning

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("mask_prompt", [False, True])
@pytest.mark.parametrize("head_on_targets_only", [False, True])
def test_training_step_loss_matches_transformers(
    mask_prompt: bool, head_on_targets_only: bool, tmp_path: Path
):
    torch.manual_seed(0)
    task = InstructionTuning(
        model={"size": "tiny", "pretrained": False, "tie_embeddings": False},
        head_on_targets_only=head_on_targets_only,
    ).eval()
    sequences = [torch.randint(0, 50000, (n,)).tolist() for n in (17, 5, 11, 23)]
    batch = collate_instructions(sequences, prompt_lengths=[6, 2, 4, 9] if mask_prompt else None)
    task.model.save_pretrained(tmp_path)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()

    # transformers shifts labels by one itself: give it one more input column and labels = [ignored, targets].
    inputs = torch.cat([batch["input_ids"], batch["targets"][:, -1:].clamp(min=0)], dim=1)
    labels = torch.cat([torch.full_like(batch["targets"][:, :1], -100), batch["targets"]], dim=1)
    with torch.no_grad():
        loss_sum, count = task.loss_fn(
            task.model, batch["input_ids"], batch["targets"], head_on_targets_only=head_on_targets_only
        )
        ours = loss_sum / count
        theirs = hf(inputs, labels=labels).loss
    assert abs(ours.item() - theirs.item()) <= 1e-5
