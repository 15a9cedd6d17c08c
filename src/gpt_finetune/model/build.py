"""Build the backbone from its config spec (size, weights source, overrides)."""

from __future__ import annotations

from gpt_finetune.errors import UserError
from gpt_finetune.model.config import GPTConfig
from gpt_finetune.model.gpt import GPT


def build_gpt(
    size: str = "gpt2-small",
    pretrained: bool = True,
    weights: str | None = None,
    dropout: float = 0.0,
    tie_embeddings: bool = False,
    context_length: int | None = None,
    gradient_checkpointing: bool = False,
) -> GPT:
    """A GPT from `weights` (a path), the Hub weights of `size` (`pretrained`), or random init."""
    overrides = {
        "dropout": dropout,
        "tie_embeddings": tie_embeddings,
        "gradient_checkpointing": gradient_checkpointing,
    }
    if context_length is not None:
        overrides["context_length"] = context_length
    if weights is not None:
        return GPT.from_pretrained(weights, **overrides)
    if pretrained:
        if size == "tiny":
            raise UserError("model size 'tiny' has no pretrained weights; set model.pretrained=false")
        return GPT.from_pretrained(size, **overrides)
    return GPT(GPTConfig.from_size(size, **overrides))
