"""Checkpoints: `last.ckpt` at the end and on interruption, with the random states; streamed to disk."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from gpt_finetune.artifacts import atomic_path

log = logging.getLogger(__name__)


class StreamingCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO, but `torch.save` streams into a temporary file beside the target, renamed
    over it when complete: as atomic, without the whole serialized checkpoint in memory (Lightning's default
    fills a BytesIO first, so its peak grows by the checkpoint's size: 1.8 GiB for gpt2-small with AdamW).
    Remote paths (`s3://...`) keep Lightning's way.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if "://" in str(path) or storage_options is not None:
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


class LastCheckpoint(Checkpoint):
    """Write `last.ckpt` when training ends and on Ctrl-C (SIGINT) or SIGTERM.

    Lightning's periodic `save_last` can leave `last.ckpt` up to N - 1 steps behind the end of training;
    this keeps it current. Other exceptions (e.g. a non-finite loss) save nothing: the last good one stays.
    As a `Checkpoint`, Lightning runs it after its ModelCheckpoints, so it writes last (a ModelCheckpoint that
    found our file would write `last-v1.ckpt` beside it).
    """

    def __init__(self, dirpath: str) -> None:
        self.path = Path(dirpath) / "last.ckpt"

    def state_dict(self) -> dict[str, Any]:
        """The random states, saved in every checkpoint so that dropout continues identically on resume."""
        return {"torch": torch.get_rng_state(), "python": random.getstate()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "torch" in state_dict:
            torch.set_rng_state(state_dict["torch"])
            random.setstate(state_dict["python"])

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
