"""Fixtures for the export tests: tiny random instruction models, `conf/export.yaml` composed in-process."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from gpt_finetune.model import GPT, GPTConfig
from gpt_finetune.serving.loading import UsableModel

ROOT = Path(__file__).resolve().parents[2]

MakeUsable = Callable[..., UsableModel]


def random_usable(style: str = "alpaca", seed: int = 0, **config: object) -> UsableModel:
    """A random-init tiny GPT (untied head by default, as train.py builds) as an instruction model."""
    torch.manual_seed(seed)
    settings = {"tie_embeddings": False, **config}
    gpt = GPT(GPTConfig.from_size("tiny", **settings)).eval()
    # GPT-2's init gives nearly the same logits everywhere; widen it so greedy tokens vary step to step.
    with torch.no_grad():
        for name, parameter in gpt.named_parameters():
            if parameter.ndim == 2:
                parameter.mul_(2.0)
            elif ".ln" in name and name.endswith(".weight"):
                parameter.uniform_(0.5, 1.5)
            else:
                parameter.normal_(0.0, 0.1)
    return UsableModel("instruct", gpt, style, name="tiny-test", source="test")


@pytest.fixture(scope="session")
def make_usable() -> MakeUsable:
    """`make_usable(style="alpaca", seed=0, **GPTConfig fields)`: see `random_usable`."""
    return random_usable


@pytest.fixture(scope="session")
def export_config() -> Callable[..., DictConfig]:
    """`export_config(*overrides)`: conf/export.yaml composed as `python export.py ...` sees it."""

    def compose_export(*overrides: str) -> DictConfig:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            return compose(config_name="export", overrides=list(overrides))

    return compose_export
