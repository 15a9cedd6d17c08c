"""Test-only callbacks that interrupt a `train.py` subprocess at an exact point (on PYTHONPATH=tests).

Injected with `+callbacks.interrupt._target_=train_interrupts.SignalAt +callbacks.interrupt.epoch=1 ...`.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import lightning as L


class SignalAt(L.Callback):
    """Send this process `signum` when training batch `batch` of epoch `epoch` starts (SIGKILL: no handler
    runs, as after a crash; SIGTERM: Lightning stops after that batch; SIGINT: stops in the batch)."""

    def __init__(self, epoch: int, batch: int, signum: str = "SIGKILL") -> None:
        self.epoch, self.batch, self.signum = epoch, batch, getattr(signal, signum)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch):
            os.kill(os.getpid(), self.signum)
