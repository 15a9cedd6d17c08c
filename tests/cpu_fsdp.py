"""FSDP on CPU processes over gloo, for tests (on PYTHONPATH=tests).

Lightning refuses `FSDPStrategy` without a GPU accelerator (checking the exact type) and passes FSDP no
device on CPU, where torch then looks for an accelerator; torch's FSDP itself runs on CPU with gloo when
given `device_id=cpu`. So this subclass runs the FSDP paths (sharded forward, generation callbacks,
checkpoints) on any machine:
`trainer=fsdp trainer.accelerator=cpu trainer.strategy._target_=cpu_fsdp.CPUFSDPStrategy`.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.fabric.strategies import fsdp as fabric_fsdp
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.strategies import fsdp as pytorch_fsdp
from torch.distributed.fsdp import FullyShardedDataParallel
from torch.nn import Module


class CPUFSDPStrategy(FSDPStrategy):
    """Lightning's FSDPStrategy, allowed on `accelerator=cpu`: the model is wrapped for the CPU device."""

    def _setup_model(self, model: Module) -> Module:
        if any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
            return super()._setup_model(model)  # wrapped already (testing after fitting): Lightning's way
        return FullyShardedDataParallel(
            module=model,
            cpu_offload=self.cpu_offload,
            mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy,
            device_id=torch.device("cpu"),
            **self.kwargs,
        )


def _full_state_dict_on_cpu(module: Module, world_size: int, rank0_only: bool = True) -> Any:
    """Lightning's full state-dict context without `offload_to_cpu`: with the weights already on the CPU,
    torch's offload clones freed storage and segfaults (torch 2.13, gloo)."""
    from torch.distributed.fsdp import FullOptimStateDictConfig, FullStateDictConfig, StateDictType

    return FullyShardedDataParallel.state_dict_type(
        module=module,
        state_dict_type=StateDictType.FULL_STATE_DICT,
        state_dict_config=FullStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only),
        optim_state_dict_config=FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only),
    )


pytorch_fsdp._get_full_state_dict_context = _full_state_dict_on_cpu
fabric_fsdp._get_full_state_dict_context = _full_state_dict_on_cpu
