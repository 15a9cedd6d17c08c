"""Faster one-row decoding on CPU: every weight matrix also kept in MKL's packed layout.

A decoding step for a single answer multiplies one row by every weight matrix (124M weights for
gpt2-small, 38 % of them in the 50257 x 768 head): memory-bound matrix-vector products. Reordered once
into MKL's packed GEMM layout (`torch.ops.mkl._mkl_reorder_linear_weight`, as torch.compile's CPU
freezing does), they are read markedly faster than by the plain `F.linear` call (the generation
benchmark measures it beside llama.cpp). Each `nn.Linear` keeps its weight: a one-row input uses the
packed copy (results equal `F.linear`'s up to float rounding, ~1e-6), any other input the plain call
(identical). The packed copies cost about 1.5x the matrices' memory and follow no later change to the
weights: pack a model for inference, after loading it.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn


def can_pack(model: nn.Module) -> bool:
    """Whether packing applies: a float32 model on the CPU, and a torch built with MKL."""
    weight = next(model.parameters())
    return weight.device.type == "cpu" and weight.dtype == torch.float32 and torch.backends.mkl.is_available()


def pack_for_decoding(model: nn.Module) -> int:
    """Give every `nn.Linear` of `model` a packed copy for one-row inputs; how many were packed (0 where
    packing does not apply, see `can_pack`)."""
    if not can_pack(model):
        return 0
    packed = 0
    for module in model.modules():
        if isinstance(module, nn.Linear) and not hasattr(module, "packed_weight"):
            module.packed_weight = torch.ops.mkl._mkl_reorder_linear_weight(module.weight.detach(), 1)
            module.forward = types.MethodType(_packed_forward, module)  # type: ignore[method-assign]
            packed += 1
    return packed


def _packed_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    if x.numel() != x.shape[-1] or torch.is_grad_enabled():  # several rows, or training: the plain call
        return F.linear(x, self.weight, self.bias)
    bias = None if self.bias is None else self.bias.detach()
    y = torch.ops.mkl._mkl_linear(x.reshape(1, -1), self.packed_weight, self.weight.detach(), bias, 1)
    return y.view(*x.shape[:-1], self.out_features)
