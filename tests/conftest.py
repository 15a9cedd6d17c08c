"""Shared fixtures: tiny GPT configs and the path to ../shared/data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gpt_finetune.config import register_resolvers
from gpt_finetune.model import GPT, GPTConfig

register_resolvers()  # configs composed in tests resolve ${bundled:...} as the entry points do

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_file(name: str) -> Path:
    """A file from ../shared/data, or skip the test when the folder is not beside the checkout."""
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return path


@pytest.fixture
def tiny_config() -> GPTConfig:
    return GPTConfig.from_size("tiny", context_length=64)


@pytest.fixture
def tiny_model(tiny_config: GPTConfig) -> GPT:
    torch.manual_seed(0)
    return GPT(tiny_config).eval()
