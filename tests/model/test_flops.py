"""The MFU numerator: `GPTConfig.training_flops` against torch's FLOP counter and the parameter count."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from gpt_finetune.model import GPT, GPTConfig

# Attention-heavy (small vocab and width, long rows), then gpt2-small (LM head and blocks dominate).
SHAPES = [
    (GPTConfig(vocab_size=64, emb_dim=32, n_layers=2, n_heads=2, context_length=256), 2, 256),
    pytest.param(GPTConfig.from_size("gpt2-small", context_length=64), 1, 32, marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("config", "rows", "width"), SHAPES)
def test_training_flops_match_the_counted_flops_of_a_training_step(
    config: GPTConfig, rows: int, width: int
) -> None:
    config = config.with_(tie_embeddings=False)
    model = GPT(config)
    ids = torch.randint(0, config.vocab_size, (rows, width))
    # The math attention kernel is made of matmuls the counter sees (it skips the fused CPU kernel).
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(ids).flatten(0, 1), ids.flatten()).backward()
    # The counter skips bias and norm arithmetic (<2 % here), which the formula includes.
    assert config.training_flops(rows, width) == pytest.approx(counter.get_total_flops(), rel=0.02)


def test_matmul_parameters_are_all_parameters_but_the_embedding_lookups() -> None:
    config = GPTConfig.from_size("tiny", context_length=64, tie_embeddings=False)
    model = GPT(config)
    lookups = model.transformer.wte.weight.numel() + model.transformer.wpe.weight.numel()
    matmul = sum(p.numel() for p in model.parameters()) - lookups
    attention = 12 * config.n_layers * config.emb_dim * 10
    assert config.training_flops(1, 10) == 10 * (6 * matmul + attention)


@pytest.mark.parametrize(("config", "rows", "width"), SHAPES)
def test_lora_training_flops_match_the_counted_flops(config: GPTConfig, rows: int, width: int) -> None:
    from gpt_finetune.tasks.adapters import LoRASettings, add_lora

    config = config.with_(tie_embeddings=False)
    model = GPT(config)
    add_lora(model, LoRASettings(r=4))  # the base frozen: no weight gradients but the adapters'
    adapters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    ids = torch.randint(0, config.vocab_size, (rows, width))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(ids).flatten(0, 1), ids.flatten()).backward()
    expected = config.training_flops(rows, width, frozen=True, adapters=adapters)
    # Autograd also skips the input gradient of the first layer (nothing before it trains): ~3 % here.
    assert expected == pytest.approx(counter.get_total_flops(), rel=0.04)
    assert expected < config.training_flops(rows, width)  # attention-heavy rows save less
