"""Every precision a CPU runs x gradient clipping on/off x fused/unfused AdamW trains, and clipping clips.

Lightning's MixedPrecision refuses to clip a fused optimizer for fear of a GradScaler; bf16-mixed has none,
so `bf16-mixed` + `trainer.gradient_clip_val=1.0` with our default (fused) AdamW must train, clipped.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from gradient_norms import GradientNorms
from hydra import compose, initialize_config_dir
from lightning.pytorch.plugins.precision import MixedPrecision
from torch.utils.data import DataLoader

from gpt_finetune.config import check_config
from gpt_finetune.errors import UserError
from gpt_finetune.tasks.classify import Classification
from gpt_finetune.tasks.instruct import InstructionTuning

CONF = Path(__file__).resolve().parents[2] / "conf"

TINY = {"size": "tiny", "pretrained": False, "context_length": 32}
# Far below the unclipped gradient norm of a random-init tiny model (about 4 with token-mean gradients):
# clipping must act at every step.
CLIP = 0.05


def instruction_batches(n: int = 2) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(n):
        tokens = torch.randint(0, 50257, (4, 17), generator=generator)
        targets = tokens[:, 1:].clone()
        targets[:, :5] = -100  # a masked prompt: the token-mean rescaling must count only real targets
        batches.append({"input_ids": tokens[:, :-1], "targets": targets})
    return DataLoader(batches, batch_size=None)


def classification_batches(n: int = 2) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    batches = [
        {
            "input_ids": torch.randint(0, 50257, (4, 16), generator=generator),
            "lengths": torch.full((4,), 16),
            "labels": torch.tensor([0, 1, 0, 1]),
        }
        for _ in range(n)
    ]
    return DataLoader(batches, batch_size=None)


def train(
    task: L.LightningModule, batches: DataLoader, precision: Any, clip: float | None
) -> tuple[list[float], float]:
    """Fit two steps; the gradient norms of each step and the largest weight change."""
    norms = GradientNorms()
    plugins = [precision] if isinstance(precision, MixedPrecision) else None
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        precision=None if plugins else precision,
        plugins=plugins,
        gradient_clip_val=clip,
        max_steps=2,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[norms],
    )
    before = {k: v.detach().float().clone() for k, v in task.model.state_dict().items()}
    trainer.fit(task, train_dataloaders=batches)
    assert trainer.global_step == 2
    after = task.model.state_dict()
    change = max(float((after[k].float() - before[k]).abs().max()) for k in before)
    return norms.norms, change


def instruction_task(fused: bool | None) -> InstructionTuning:
    torch.manual_seed(0)
    return InstructionTuning(model=TINY, optimizer={"lr": 1e-2, "weight_decay": 0.0, "fused_adamw": fused})


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("clip", [CLIP, None], ids=["clipped", "unclipped"])
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "bf16-true"])
def test_instruction_tuning_trains_in_every_cpu_precision(
    precision: str, clip: float | None, fused: bool
) -> None:
    task = instruction_task(fused)
    norms, change = train(task, instruction_batches(), precision, clip)

    assert task.optimizers().optimizer.defaults["fused"] is fused
    assert len(norms) == 2 and all(math.isfinite(n) for n in norms)
    assert change > 1e-3  # the weights moved (lr 1e-2)
    if clip is not None:
        # bf16-true gradients are bf16: the clipped norm is exact to bf16's rounding.
        assert max(norms) <= CLIP * 1.01, norms
    else:
        assert min(norms) > 10 * CLIP, norms  # so that the clipped runs above had something to clip


def test_classification_clips_a_fused_adamw_in_bf16_mixed() -> None:
    torch.manual_seed(0)
    optimizer = {"lr": 1e-2, "weight_decay": 0.0, "fused_adamw": True}
    task = Classification(model=TINY, labels=["ham", "spam"], optimizer=optimizer)
    norms, change = train(task, classification_batches(), "bf16-mixed", CLIP)

    assert max(norms) <= CLIP * 1.01 and change > 1e-3, (norms, change)


def fp16_mixed() -> MixedPrecision:
    """16-mixed with its GradScaler, on a CPU (fp16 autocast runs there; Lightning's flag would pick bf16).

    A small initial scale: the default 65536 overflows at the first steps, which the scaler then skips.
    """
    return MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=16.0))


def test_fp16_resolves_fused_null_to_unfused_only_when_clipping() -> None:
    """A GradScaler's fused step unscales inside itself, after clipping: `fused_adamw=null` is unfused."""
    task = instruction_task(None)
    norms, change = train(task, instruction_batches(), fp16_mixed(), CLIP)

    assert task.optimizers().optimizer.defaults["fused"] is False
    assert max(norms) <= CLIP * 1.01 and change > 1e-3, (norms, change)

    unclipped = instruction_task(None)
    train(unclipped, instruction_batches(), fp16_mixed(), None)
    assert unclipped.optimizers().optimizer.defaults["fused"] is True  # the faster kernel stays otherwise


def test_fused_fp16_with_clipping_fails_in_one_line_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # 16-mixed is a GPU setting
    overrides = ["trainer=gpu", "trainer.precision=16-mixed", "trainer.gradient_clip_val=1.0"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        fused = compose(
            "train", overrides=[f"output_dir={tmp_path}", *overrides, "optimizer.fused_adamw=true"]
        )
        default = compose("train", overrides=[f"output_dir={tmp_path}", *overrides])

    with pytest.raises(UserError) as error:
        check_config(fused)
    assert str(error.value) == (
        "optimizer.fused_adamw=true cannot clip 16-mixed gradients (trainer.gradient_clip_val); "
        "set optimizer.fused_adamw=null (unfused when clipping) or use trainer.precision=bf16-mixed"
    )
    check_config(default)  # fused_adamw=null: unfused when clipping, as above
