"""Length-grouped sampling: batches of similar lengths waste less compute on padding."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class LengthGroupedSampler(Sampler[int]):
    """Shuffle, sort by length inside mega-batches of `batch_size * group_batches`, shuffle the batches.

    Every index is yielded once per epoch; the order depends only on `seed` and the epoch (`set_epoch`).
    """

    def __init__(
        self, lengths: Sequence[int], batch_size: int, seed: int = 0, group_batches: int = 50
    ) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.group_batches = group_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        group = self.batch_size * self.group_batches
        ordered: list[int] = []
        for start in range(0, len(order), group):
            ordered += sorted(order[start : start + group], key=lambda i: -self.lengths[i])
        batches = [ordered[i : i + self.batch_size] for i in range(0, len(ordered), self.batch_size)]
        # Keep a short final batch last so that drop_last drops a short batch, not a full one.
        full, rest = (batches[:-1], batches[-1:]) if len(batches[-1]) < self.batch_size else (batches, [])
        for b in torch.randperm(len(full), generator=generator).tolist():
            yield from full[b]
        for batch in rest:
            yield from batch
