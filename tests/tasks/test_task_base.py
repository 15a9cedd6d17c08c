"""The task base: saved hyperparameters, the optimizer it configures; checkpoints of either layout load."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import lightning as L
import pytest
import torch

from gpt_finetune.evaluation.run_dir import load_finetuned
from gpt_finetune.serving.loading import load_classifier
from gpt_finetune.tasks.base import FinetuneTask
from gpt_finetune.tasks.classify import Classification
from gpt_finetune.tasks.instruct import InstructionTuning
from gpt_finetune.tasks.optim import AdamWSettings

TINY = {"size": "tiny", "pretrained": False, "context_length": 32}
SETTINGS = {"lr": 1e-3, "weight_decay": 0.0, "decay_on": "matrices", "betas": [0.9, 0.95], "warmup_steps": 2}
FULL = {**asdict(AdamWSettings()), **SETTINGS}


def tasks() -> list[FinetuneTask]:
    torch.manual_seed(0)
    return [
        InstructionTuning(model=TINY, prompt_style="phi3", optimizer=SETTINGS),
        Classification(model=TINY, labels=["ham", "spam"], optimizer=SETTINGS),
    ]


@pytest.mark.parametrize("index", [0, 1])
def test_hparams_hold_every_argument_and_the_whole_optimizer(index: int) -> None:
    task = tasks()[index]
    no_lora = {"r": None, "alpha": 16.0, "dropout": 0.0, "targets": "all"}
    expected = {"model": TINY, "optimizer": FULL, "lora": no_lora}
    expected |= (
        {"prompt_style": "phi3", "head_on_targets_only": True, "compile": False}
        if isinstance(task, InstructionTuning)
        else {"labels": ["ham", "spam"], "trainable": "last_block", "pooling": "last_position"}
    )
    assert dict(task.hparams) == expected
    assert dict(task.hparams_initial) == expected  # kept for Lightning; train.py logs the resolved config


def test_the_optimizer_and_schedule_follow_the_settings() -> None:
    task = InstructionTuning(model=TINY, optimizer=SETTINGS)
    configured = task.configure_optimizers()
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    decayed, plain = optimizer.param_groups
    assert (decayed["lr"], decayed["weight_decay"], plain["weight_decay"]) == (1e-3 / 2, 0.0, 0.0)  # warmup
    assert decayed["betas"] == (0.9, 0.95) and isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR)
    assert isinstance(InstructionTuning(model=TINY).configure_optimizers(), torch.optim.AdamW)  # the book


def test_an_unknown_argument_is_refused() -> None:
    with pytest.raises(TypeError, match="'lrr'"):
        InstructionTuning(model=TINY, lrr=1e-3)
    with pytest.raises(TypeError, match="'lrr'"):
        InstructionTuning(model=TINY, optimizer={"lrr": 1e-3})


def old_layout(hparams: dict) -> dict:
    """The hyperparameters as tasks saved them before conf/optimizer/: each setting at the top level."""
    return {**{k: v for k, v in hparams.items() if k != "optimizer"}, **hparams["optimizer"]}


@pytest.mark.parametrize("layout", ["old", "new"])
def test_checkpoints_of_either_layout_load(tmp_path: Path, layout: str) -> None:
    for task in tasks():
        trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
        trainer.strategy.connect(task)
        path = tmp_path / f"{type(task).__name__}.ckpt"
        trainer.save_checkpoint(path, weights_only=True)
        if layout == "old":
            checkpoint = torch.load(path, weights_only=True)
            checkpoint["hyper_parameters"] = old_layout(checkpoint["hyper_parameters"])
            checkpoint["hparams_name"] = "kwargs"
            assert checkpoint["hyper_parameters"]["lr"] == 1e-3
            torch.save(checkpoint, path)
        hparams = torch.load(path, weights_only=True)["hyper_parameters"]
        assert dict(type(task)(**hparams).hparams) == dict(task.hparams)  # as run_dir and lm_eval build them
        loaded = type(task).load_from_checkpoint(path, weights_only=True)
        assert dict(loaded.hparams) == dict(task.hparams)
        weights = zip(loaded.state_dict().values(), task.state_dict().values(), strict=True)
        assert all(torch.equal(a, b) for a, b in weights)
        if isinstance(task, InstructionTuning):
            finetuned = load_finetuned(path)
            assert finetuned.prompt_style == "phi3"
            assert torch.equal(finetuned.model.lm_head.weight, task.model.lm_head.weight)
        else:
            assert load_classifier(path).hparams.optimizer == FULL
