"""`task.compile=true` compiles the training forward + loss and trains exactly like eager mode."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters
from torch.utils.data import DataLoader

from gpt_finetune.data.collate import collate_instructions
from gpt_finetune.tasks.instruct import InstructionTuning

SPEC = {"size": "tiny", "pretrained": False, "context_length": 64}


class RecordsLosses(InstructionTuning):
    """Keeps each training step's summed loss."""

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        self.losses.append(float(loss.detach()))
        return loss


def trained(quiet_trainer, compile: bool) -> tuple[list[float], dict[str, torch.Tensor]]:
    """The losses of 3 AdamW steps on batches of different widths, and the weights after them."""
    torch.manual_seed(0)
    task = RecordsLosses(model=SPEC, optimizer={"lr": 1e-3}, compile=compile)
    task.losses = []
    g = torch.Generator().manual_seed(0)
    sequences = [torch.randint(0, 50000, (n,), generator=g).tolist() for n in (5, 9, 14, 20, 11, 30)]
    loader = DataLoader(sequences, batch_size=2, collate_fn=collate_instructions)
    trainer = quiet_trainer(
        max_steps=3,
    )
    trainer.fit(task, train_dataloaders=loader)
    return task.losses, {name: p.detach().clone() for name, p in task.named_parameters()}


@pytest.mark.slow
def test_compiled_training_matches_eager_training(quiet_trainer) -> None:
    torch._dynamo.reset()
    counters.clear()
    compiled_losses, compiled = trained(quiet_trainer, compile=True)
    assert counters["stats"]["unique_graphs"] > 0  # dynamo really compiled the step
    eager_losses, eager = trained(quiet_trainer, compile=False)

    assert len(eager_losses) == 3
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-5)
    # Adam turns rounding-level gradient differences into steps of up to lr (1e-3) on near-zero
    # gradients, so weights agree to a tenth of one step; training moved them by far more.
    torch.manual_seed(0)
    initial = InstructionTuning(model=SPEC).state_dict()  # the starting weights
    for name, weight in eager.items():
        torch.testing.assert_close(compiled[name], weight, rtol=0, atol=1e-4)
    moved = (eager["model.transformer.ln_f.weight"] - initial["model.transformer.ln_f.weight"]).abs().max()
    assert moved > 1e-3
