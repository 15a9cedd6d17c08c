"""LoRA: low-rank adapters on the blocks' Linear layers, the base frozen (Hu et al. 2021; book appendix E).

An adapted layer keeps its own `weight` and `bias` under the same names (checkpoints and `save_pretrained`
see the layer as before) and adds `lora_A` (r, in) and `lora_B` (out, r):
`y = x W^T + b + (alpha / r) * dropout(x) A^T B^T`. B starts at zero, so an adapted model starts as its
base. `merge_lora` folds the adapters into the weights: the plain GPT-2 that exports and loads anywhere.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gpt_finetune.errors import UserError
from gpt_finetune.model import GPT

# `targets` names -> the Linear layers of each block they adapt (the names in the checkpoint).
TARGET_LAYERS = {"attn": ("attn.c_attn",), "attn_proj": ("attn.c_proj",), "mlp": ("mlp.c_fc", "mlp.c_proj")}
ALL_TARGETS = ("attn", "attn_proj", "mlp")


@dataclass(frozen=True)
class LoRASettings:
    """`task.lora`: rank `r` (None = no adapters), `alpha` (scale alpha / r), dropout on the adapter input,
    and the block Linear layers to adapt: any of attn (c_attn), attn_proj, mlp, or `all` (the book)."""

    r: int | None = None
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] | str = field(default="all")

    @property
    def enabled(self) -> bool:
        return self.r is not None

    def layer_names(self) -> tuple[str, ...]:
        """The in-block module names the targets name (e.g. `attn.c_attn`), checked."""
        targets = [self.targets] if isinstance(self.targets, str) else list(self.targets)
        if targets == ["all"]:
            targets = list(ALL_TARGETS)
        unknown = [t for t in targets if t not in TARGET_LAYERS]
        if unknown or not targets:
            raise UserError(
                f"task.lora.targets={self.targets!r}: use all, or a list of {', '.join(TARGET_LAYERS)}"
            )
        return tuple(name for t in dict.fromkeys(targets) for name in TARGET_LAYERS[t])

    def check(self) -> None:
        """A one-line error for settings that cannot train."""
        if self.r is not None and (not isinstance(self.r, int) or self.r < 1):
            raise UserError(f"task.lora.r={self.r!r}: use a positive rank (4, 8, 16 ...) or null for no LoRA")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"task.lora.dropout={self.dropout}: use a value in [0, 1)")
        self.layer_names()


class LoRALinear(nn.Linear):
    """A Linear layer with a low-rank update; `adapters_on` false computes the base layer alone."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias  # the same Parameters: nothing is copied
        device, dtype = base.weight.device, base.weight.dtype
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, device=device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, device=device, dtype=dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as PEFT: A random, B zero
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.adapters_on = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        if not self.adapters_on:
            return out
        update = F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B)
        return out + update * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """The adapters as a weight update (out, in): `(alpha / r) B A`."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def merged(self) -> nn.Linear:
        """A plain Linear with the update folded in (the adapters' contribution, exactly, up to rounding)."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        linear = linear.to(device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(self.weight + self.delta_weight().to(self.weight.dtype))
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        linear.weight.requires_grad_(self.weight.requires_grad)
        return linear

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, r={self.r}, alpha={self.alpha}"


def adapted_layers(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    """(qualified name, layer) of every LoRA layer in `model`."""
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            yield name, module


def add_lora(model: GPT, settings: LoRASettings) -> int:
    """Freeze `model` and put trainable adapters on the target layers of every block; how many layers."""
    settings.check()
    assert settings.r is not None
    model.requires_grad_(False)
    count = 0
    for block in model.transformer.h:
        for name in settings.layer_names():
            parent_name, attr = name.rsplit(".", 1)
            parent = block.get_submodule(parent_name)
            base = getattr(parent, attr)
            if isinstance(base, LoRALinear):
                continue
            setattr(parent, attr, LoRALinear(base, settings.r, settings.alpha, settings.dropout))
            count += 1
    return count


def merge_lora(model: nn.Module) -> int:
    """Fold every adapter into its layer's weight, in place (plain Linear layers again); how many."""
    layers = list(adapted_layers(model))
    for name, layer in layers:
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, layer.merged())
    return len(layers)


@contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """Inside: every LoRA layer computes its base layer alone (the base model, e.g. as a DPO reference)."""
    layers = [layer for _, layer in adapted_layers(model)]
    states = [layer.adapters_on for layer in layers]
    for layer in layers:
        layer.adapters_on = False
    try:
        yield
    finally:
        for layer, state in zip(layers, states, strict=True):
            layer.adapters_on = state


def trainable_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, each shared tensor counted once."""
    seen: dict[int, nn.Parameter] = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in seen.values())
    return sum(p.numel() for p in seen.values() if p.requires_grad), total


def peft_state_dict(model: nn.Module, prefix: str = "base_model.model.") -> dict[str, torch.Tensor]:
    """The adapters under PEFT's names (`...c_attn.lora_A.weight`), for `adapter_model.safetensors`."""
    tensors: dict[str, torch.Tensor] = {}
    for name, layer in adapted_layers(model):
        tensors[f"{prefix}{name}.lora_A.weight"] = layer.lora_A.detach().contiguous()
        tensors[f"{prefix}{name}.lora_B.weight"] = layer.lora_B.detach().contiguous()
    return tensors


def peft_config(settings: LoRASettings, base_model: str) -> dict[str, Any]:
    """`adapter_config.json` for PEFT: transformers' GPT-2 stores these layers as Conv1D (fan_in_fan_out)."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": settings.r,
        "lora_alpha": settings.alpha,
        "lora_dropout": settings.dropout,
        "target_modules": sorted(settings.layer_names()),  # PEFT matches these as name suffixes
        "fan_in_fan_out": True,
        "bias": "none",
        "inference_mode": True,
        "init_lora_weights": True,
    }
