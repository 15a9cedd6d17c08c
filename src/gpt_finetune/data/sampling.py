"""Training-order samplers that give every rank its share of one global order.

The DataModules build these themselves (the trainer presets set `use_distributed_sampler: false`), so a run
on N processes with batch b sees exactly the batches of one process with batch N * b, shuffled or not.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loops.progress import _ProcessedTracker
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from torch.utils.data.dataloader import _BaseDataLoaderIter


def replicas(trainer: L.Trainer | None) -> tuple[int, int]:
    """(world size, global rank) of the attached trainer, (1, 0) without one."""
    return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)


class LengthGroupedSampler(Sampler[int]):
    """Shuffle, sort by length inside mega-batches, shuffle the global batches, then take this rank's share.

    Global batches hold `batch_size * num_replicas` indices of similar length; rank r takes every
    `num_replicas`-th index of each, so its batches are also of similar length. Every rank yields the same
    number of indices: with `drop_last` only whole global batches, else the order padded by repeating its
    start (as DistributedSampler does). The order depends only on `seed` and the epoch (`set_epoch`).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        seed: int = 0,
        group_batches: int = 50,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = False,
    ) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size * num_replicas
        self.seed, self.group_batches = seed, group_batches
        self.num_replicas, self.rank, self.drop_last = num_replicas, rank, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.lengths)
        if self.drop_last:
            return n // self.batch_size * self.batch_size // self.num_replicas
        return math.ceil(n / self.num_replicas)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        group = self.batch_size * self.group_batches
        ordered: list[int] = []
        for start in range(0, len(order), group):
            ordered += sorted(order[start : start + group], key=lambda i: -self.lengths[i])
        batches = [ordered[i : i + self.batch_size] for i in range(0, len(ordered), self.batch_size)]
        # A short final global batch stays last: dropped with drop_last (never a full one), else padded.
        full, rest = (
            (batches[:-1], batches[-1:]) if batches and len(batches[-1]) < self.batch_size else (batches, [])
        )
        shuffled = [full[b] for b in torch.randperm(len(full), generator=generator).tolist()]
        flat = [index for batch in shuffled + ([] if self.drop_last else rest) for index in batch]
        while flat and len(flat) % self.num_replicas:  # pad: every rank gets as many indices
            flat += flat[: self.num_replicas - len(flat) % self.num_replicas]
        yield from flat[self.rank :: self.num_replicas]


def training_sampler(
    lengths: Sequence[int],
    batch_size: int,
    trainer: L.Trainer | None,
    *,
    shuffle: bool,
    group_by_length: bool,
    seed: int,
    drop_last: bool,
) -> Sampler[int]:
    """This rank's training sampler: length-grouped, or a (possibly unshuffled) distributed split.

    Pass the DataLoader's `drop_last`: with it every rank keeps only whole global batches of
    `batch_size * world size` indices, without it the order is padded, so every rank has as many batches
    (a rank with one batch more would wait forever in its extra collective).
    """
    num_replicas, rank = replicas(trainer)
    if group_by_length:
        return LengthGroupedSampler(
            lengths, batch_size, seed=seed, num_replicas=num_replicas, rank=rank, drop_last=drop_last
        )
    # drop_last here trims to a multiple of the world size; the DataLoader's drop_last then drops each
    # rank's short batch, leaving floor(n / (world size * batch_size)) whole global batches.
    return DistributedSampler(
        range(len(lengths)),  # type: ignore[arg-type]  # typed as a Dataset, but it only takes len() of it
        num_replicas=num_replicas,
        rank=rank,
        shuffle=shuffle,
        seed=seed,
        drop_last=drop_last,
    )


class ResumableDataLoader(DataLoader):
    """A training DataLoader that Lightning checkpoints: resuming mid-epoch skips batches already trained on.

    Without this, a run resumed from a mid-epoch checkpoint would see the epoch's first batches again and
    never the ones after them. Lightning calls `state_dict` when it saves and `load_state_dict` before it
    iterates again. The state also holds the epoch: resuming mid-epoch, Lightning creates the iterator before
    it sets the sampler's epoch, so without it a later epoch would resume in epoch 0's order.
    """

    def __init__(self, *args: Any, trainer_ref: Callable[[], L.Trainer | None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.trainer_ref = trainer_ref
        self._skip = 0

    def state_dict(self) -> dict[str, int]:
        trainer = self.trainer_ref()
        return {
            "epoch": trainer.current_epoch if trainer is not None else 0,
            "batches_done": batches_done(trainer),
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        done = state.get("batches_done", 0)
        self._skip = done if done < len(self) else 0  # a checkpoint at the epoch's end resumes a new epoch
        if self._skip and "epoch" in state and hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(state["epoch"])  # the interrupted epoch's order, before iterating

    def __iter__(self) -> _BaseDataLoaderIter:
        iterator, skip, self._skip = super().__iter__(), self._skip, 0
        for _ in range(skip):
            next(iterator)
        return iterator


def batches_done(trainer: L.Trainer | None) -> int:
    """Training batches of the current epoch that count as done if a checkpoint is saved now.

    Only whole optimizer steps count: micro-batches of an unfinished gradient accumulation are trained on
    again after a resume (their gradients are not in the checkpoint).
    """
    if trainer is None:
        return 0
    done = finished_batches(trainer)
    return done - unstepped_batches(trainer, done)


def finished_batches(trainer: L.Trainer) -> int:
    """Training batches of the current epoch that have run to their end."""
    progress = trainer.fit_loop.epoch_loop.batch_progress.current
    assert isinstance(progress, _ProcessedTracker)  # a batch progress is one (typed as its base class)
    # Saved at a batch's end, that batch counts; saved mid-step (an interrupt), only the completed ones.
    at_batch_end = progress.started == progress.ready == progress.processed
    return progress.processed if at_batch_end else progress.completed


def unstepped_batches(trainer: L.Trainer, done: int) -> int:
    """Of `done` batches of this epoch, those trained on since the last optimizer step (Lightning steps
    every `accumulate_grad_batches` batches and at the epoch's last batch)."""
    if done >= trainer.num_training_batches:
        return 0
    return done % trainer.accumulate_grad_batches
