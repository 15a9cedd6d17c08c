"""LoRA on the real training path: bf16-mixed with clipping, gradient accumulation and torch.compile.

Each run starts from a tiny base saved with `save_pretrained` (LoRA refuses a random-init base) and checks
that only the adapters moved: the frozen base stays bit-identical.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import pytest
import torch
from gradient_norms import GradientNorms
from torch._dynamo.utils import counters
from torch.utils.data import DataLoader

from gpt_finetune.data.collate import collate_instructions
from gpt_finetune.model import GPT, GPTConfig
from gpt_finetune.tasks.classify import Classification
from gpt_finetune.tasks.instruct import InstructionTuning

LORA = {"r": 4, "alpha": 8}
CLIP = 1e-3  # far below the adapters' unclipped gradient norm: clipping must act at every step


@pytest.fixture(scope="module")
def base_spec(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A `model` spec whose weights are a saved tiny base (context 64)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("base") / "tiny"
    GPT(GPTConfig.from_size("tiny", context_length=64)).save_pretrained(path)
    return {"size": "tiny", "pretrained": False, "weights": str(path), "context_length": 64}


def sequences() -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 50000, (n,), generator=g).tolist() for n in (3, 30, 7, 12, 25, 4, 9, 18)]


def frozen(task: L.LightningModule) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in task.named_parameters() if not p.requires_grad}


def assert_base_unchanged(task: L.LightningModule, before: dict[str, torch.Tensor]) -> None:
    after = frozen(task)
    assert after.keys() == before.keys() and len(before) > 0
    for name, tensor in before.items():
        assert torch.equal(after[name], tensor), name


@pytest.mark.parametrize("clip", [CLIP, None], ids=["clipped", "unclipped"])
def test_lora_trains_in_bf16_mixed_with_clipping(base_spec: dict, quiet_trainer, clip: float | None) -> None:
    torch.manual_seed(0)
    task = InstructionTuning(base_spec, optimizer={"lr": 1e-2, "weight_decay": 0.0}, lora=LORA)
    before = frozen(task)
    norms = GradientNorms()
    loader = DataLoader(sequences(), batch_size=4, collate_fn=collate_instructions)
    trainer = quiet_trainer(precision="bf16-mixed", gradient_clip_val=clip, max_steps=2, callbacks=[norms])
    trainer.fit(task, train_dataloaders=loader)

    assert trainer.global_step == 2 and all(math.isfinite(n) for n in norms.norms)
    if clip is not None:
        assert max(norms.norms) <= CLIP * 1.01, norms.norms
    else:
        assert min(norms.norms) > 10 * CLIP, norms.norms  # so that the clipped run had something to clip
    moved = max(float(p.detach().abs().max()) for n, p in task.named_parameters() if n.endswith("lora_B"))
    assert moved > 1e-3  # B started at zero
    assert_base_unchanged(task, before)


def test_a_lora_classifier_trains_in_bf16_mixed_with_clipping(base_spec: dict, quiet_trainer) -> None:
    torch.manual_seed(0)
    task = Classification(base_spec, labels=["ham", "spam"], optimizer={"lr": 1e-2}, lora=LORA)
    before = frozen(task)
    g = torch.Generator().manual_seed(0)
    batches = [
        {
            "input_ids": torch.randint(0, 50257, (4, 16), generator=g),
            "lengths": torch.full((4,), 16),
            "labels": torch.tensor([0, 1, 0, 1]),
        }
        for _ in range(2)
    ]
    norms = GradientNorms()
    trainer = quiet_trainer(precision="bf16-mixed", gradient_clip_val=CLIP, max_steps=2, callbacks=[norms])
    trainer.fit(task, train_dataloaders=DataLoader(batches, batch_size=None))

    assert len(norms.norms) == 2 and max(norms.norms) <= CLIP * 1.01, norms.norms
    assert_base_unchanged(task, before)


class CapturesGradients(InstructionTuning):
    """Keeps the gradients the optimizer is about to apply."""

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        super().on_before_optimizer_step(optimizer)
        self.applied = {n: p.grad.clone() for n, p in self.named_parameters() if p.grad is not None}


def applied_gradients(base_spec: dict, quiet_trainer, batch_size: int, accumulate: int) -> dict:
    torch.manual_seed(0)
    task = CapturesGradients(base_spec, lora=LORA)
    with torch.no_grad():  # B = 0 would give A no gradient: make both carry one
        for name, param in task.named_parameters():
            if name.endswith("lora_B"):
                param.normal_(std=0.02)
    loader = DataLoader(sequences(), batch_size=batch_size, collate_fn=collate_instructions)
    trainer = quiet_trainer(max_steps=1, accumulate_grad_batches=accumulate)
    trainer.fit(task, train_dataloaders=loader)
    return task.applied


def test_lora_accumulation_gives_the_gradients_of_the_whole_batch(base_spec: dict, quiet_trainer) -> None:
    whole = applied_gradients(base_spec, quiet_trainer, batch_size=8, accumulate=1)
    accumulated = applied_gradients(base_spec, quiet_trainer, batch_size=2, accumulate=4)

    assert whole and all(".lora_" in name for name in whole)  # the frozen base gets no gradients
    assert whole.keys() == accumulated.keys()
    for name, grad in whole.items():
        assert grad.abs().max() > 0, name
        torch.testing.assert_close(accumulated[name], grad, rtol=1e-5, atol=1e-7)


class RecordsLosses(InstructionTuning):
    """Keeps each training step's summed loss."""

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        self.losses.append(float(loss.detach()))
        return loss


def trained(base_spec: dict, quiet_trainer, compile: bool) -> tuple[list[float], dict[str, torch.Tensor]]:
    """The losses of 3 AdamW steps on batches of different widths, and the adapters after them."""
    torch.manual_seed(0)
    task = RecordsLosses(base_spec, optimizer={"lr": 1e-3}, compile=compile, lora=LORA)
    task.losses = []
    loader = DataLoader(sequences()[:6], batch_size=2, collate_fn=collate_instructions)
    quiet_trainer(max_steps=3).fit(task, train_dataloaders=loader)
    return task.losses, {n: p.detach().clone() for n, p in task.named_parameters() if p.requires_grad}


@pytest.mark.slow
def test_compiled_lora_training_matches_eager(base_spec: dict, quiet_trainer) -> None:
    torch._dynamo.reset()
    counters.clear()
    compiled_losses, compiled = trained(base_spec, quiet_trainer, compile=True)
    assert counters["stats"]["unique_graphs"] > 0  # dynamo really compiled the step
    eager_losses, eager = trained(base_spec, quiet_trainer, compile=False)

    assert len(eager_losses) == 3 and compiled.keys() == eager.keys()
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-5)
    moved = max(float(p.abs().max()) for n, p in eager.items() if n.endswith("lora_B"))
    assert moved > 1e-4  # B started at zero; Adam moves it by about lr a step
    for name, weight in eager.items():
        torch.testing.assert_close(compiled[name], weight, rtol=0, atol=1e-4)
