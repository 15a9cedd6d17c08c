"""GPT-2: the network, its weights and generation."""

from gpt_finetune.model.config import SIZES, GPTConfig
from gpt_finetune.model.gpt import GPT

__all__ = ["GPT", "SIZES", "GPTConfig"]
