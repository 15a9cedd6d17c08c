"""`last.ckpt` at the end of training and on interruption (never on a failure)."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


class LastCheckpoint(L.Callback):
    """Write `last.ckpt` (atomically) when training ends and on Ctrl-C (SIGINT) or SIGTERM.

    Lightning's periodic `save_last` can leave `last.ckpt` up to N - 1 steps behind the end of training;
    this keeps it current. Other exceptions (e.g. a non-finite loss) save nothing: the last good one stays.
    """

    def __init__(self, dirpath: str) -> None:
        self.path = Path(dirpath) / "last.ckpt"

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.save_checkpoint(self.path)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, KeyboardInterrupt | SIGTERMException) or trainer.state.fn != "fit":
            return
        trainer.save_checkpoint(self.path)
        log.warning(
            "interrupted at step %d; saved %s; resume with: python train.py resume=%s",
            trainer.global_step,
            self.path,
            self.path.parent.parent,
        )
