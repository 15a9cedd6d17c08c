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
from gpt_finetune.data.sampling import finished_batches, unstepped_batches

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


def random_states() -> dict[str, Any]:
    """The random states training draws from: torch's CPU generator, Python's, and CUDA's once in use."""
    states: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_random_states(states: dict[str, Any]) -> None:
    """Restore `random_states()`; CUDA states go to as many devices as both the save and this machine have."""
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        for device, state in enumerate(states["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(state, device)


class LastCheckpoint(Checkpoint):
    """Write `last.ckpt` when training ends and on Ctrl-C (SIGINT) or SIGTERM, resumable exactly.

    Lightning's periodic `save_last` can leave `last.ckpt` up to N - 1 steps behind the end of training;
    this keeps it current. Other exceptions (e.g. a non-finite loss) save nothing: the last good one stays.
    As a `Checkpoint`, Lightning runs it after its ModelCheckpoints, so it writes last (a ModelCheckpoint that
    found our file would write `last-v1.ckpt` beside it).

    Every checkpoint holds the random states, so dropout continues identically on resume. A checkpoint saved
    mid-step or mid-accumulation (an interrupt) describes the last optimizer-step boundary instead: the
    micro-batches since then are trained on again after a resume, from the random states they started with.
    """

    def __init__(self, dirpath: str) -> None:
        self.path = Path(dirpath) / "last.ckpt"
        self._boundary_states: dict[str, Any] | None = None  # random states at the last step boundary
        self._trainer: L.Trainer | None = None

    def state_dict(self) -> dict[str, Any]:
        trainer = self._trainer
        if trainer is not None and self._boundary_states is not None and not at_step_boundary(trainer):
            return self._boundary_states
        return random_states()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "torch" in state_dict:
            set_random_states(state_dict)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer if stage == "fit" else None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._boundary_states = random_states()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if at_step_boundary(trainer):
            self._boundary_states = random_states()

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Mid-accumulation, count only the batches of whole optimizer steps as done (as the loader does)."""
        if trainer.state.fn != "fit":
            return
        done = finished_batches(trainer)
        unstepped = unstepped_batches(trainer, done)
        if unstepped == 0:
            return
        progress = checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]
        earlier = progress["total"]["completed"] - progress["current"]["completed"]  # previous epochs
        for key in progress["current"]:
            progress["current"][key] = done - unstepped
            progress["total"][key] = earlier + done - unstepped
        progress["is_last_batch"] = False

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)  # resume needs optimizer and loops

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, KeyboardInterrupt | SIGTERMException) or trainer.state.fn != "fit":
            return
        trainer.save_checkpoint(self.path, weights_only=False)  # resume needs optimizer and loops
        log.warning(
            "interrupted at step %d; saved %s; resume with: python train.py resume=%s",
            trainer.global_step,
            self.path,
            self.path.parent.parent,
        )


def at_step_boundary(trainer: L.Trainer) -> bool:
    """Whether the current epoch's batches so far have all run to their end and into an optimizer step."""
    progress = trainer.fit_loop.epoch_loop.batch_progress.current
    done = finished_batches(trainer)
    return progress.ready == done and unstepped_batches(trainer, done) == 0
