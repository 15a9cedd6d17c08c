"""What every DataModule shares: fetching a URL or Hub dataset once, building the splits once, loaders."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

import lightning as L
import torch
from lightning.fabric.utilities.data import AttributeDict
from torch.utils.data import DataLoader, Dataset

from gpt_finetune.data.instructions import Record, split_records
from gpt_finetune.data.sampling import ResumableDataLoader, training_sampler
from gpt_finetune.data.sources import prefetch

log = logging.getLogger(__name__)
D = TypeVar("D", bound=Dataset)


class FinetuneDataModule(L.LightningDataModule, Generic[D]):
    """`datasets` (train / val / test), built once by `build`, batched by `collate`.

    A subclass saves its hyperparameters, which include `path`, `cache_dir`, `seed`, `batch_size`,
    `eval_batch_size`, `drop_last` and `num_workers`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.datasets: dict[str, D] = {}

    @property
    def hparams(self) -> AttributeDict:
        """The saved `__init__` arguments: a dict, which `save_hyperparameters` keeps as an AttributeDict."""
        hparams = super().hparams
        assert isinstance(hparams, AttributeDict)
        return hparams

    def prepare_data(self) -> None:
        prefetch(self.hparams.path, self.hparams.cache_dir)

    def setup(self, stage: str | None = None) -> None:
        if not self.datasets:  # fit, validate and test share one set of splits
            self.build()

    def build(self) -> None:
        """Read, split and tokenise: fill `self.datasets`."""
        raise NotImplementedError

    def collate(self, batch: list[Any]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def train_loader(self, lengths: Sequence[int], *, shuffle: bool, group_by_length: bool) -> DataLoader:
        """This rank's share of one seeded order of the train split (`lengths`: tokens per item)."""
        h = self.hparams
        sampler = training_sampler(
            lengths,
            h.batch_size,
            self.trainer,
            shuffle=shuffle,
            group_by_length=group_by_length,
            seed=h.seed,
            drop_last=h.drop_last,
        )
        return self._loader(
            self.datasets["train"],
            h.batch_size,
            ResumableDataLoader,
            sampler=sampler,
            drop_last=h.drop_last,
            trainer_ref=lambda: self.trainer,
            # Its own generator: starting an epoch's iterator then draws nothing from the global RNG, so a
            # resumed run's dropout stream (restored from the checkpoint) stays in step.
            generator=torch.Generator().manual_seed(h.seed),
        )

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.datasets["val"], self.hparams.eval_batch_size or self.hparams.batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.datasets["test"], self.hparams.eval_batch_size or self.hparams.batch_size)

    def _loader(
        self, dataset: D, batch_size: int, cls: type[DataLoader] = DataLoader, **kwargs: Any
    ) -> DataLoader:
        return cls(
            dataset,
            batch_size=batch_size,
            collate_fn=self.collate,
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
            **kwargs,
        )


class SplitRecordsDataModule(FinetuneDataModule[D]):
    """Records read once, split train / test / val (file order, or shuffled with the seed) as the book
    splits instruction data, each split tokenised once: instructions, conversations, preference pairs.

    A subclass says what it reads (`read`), how a split becomes a dataset (`tokenize`), the records' name in
    the log (`noun`), and how many are longer than `max_length` (`warn_long`).
    """

    noun = "records"

    def __init__(
        self,
        train_fraction: float = 0.85,
        test_fraction: float = 0.10,
        shuffle_split: bool = False,
        seed: int = 123,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        max_length: int | None = 1024,
        group_by_length: bool = False,
        shuffle: bool = True,
        drop_last: bool = True,
        num_workers: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        """The settings every split-records kind shares; a subclass takes its own (`path`, `style`, ...) and
        passes these on (`**split`). The `__init__` arguments of every class up the chain are saved."""
        super().__init__()
        self.save_hyperparameters(logger=False)  # train.py logs the whole resolved config instead
        self.splits: dict[str, list[Record]] = {}

    def read(self) -> list[Record]:
        raise NotImplementedError

    def tokenize(self, records: list[Record]) -> D:
        raise NotImplementedError

    def warn_long(self, datasets: dict[str, D], records: int) -> None:
        """Log how many records `max_length` cuts (or shortens), if any."""

    def build(self) -> None:
        h = self.hparams
        records = self.read()
        self.splits = split_records(records, h.train_fraction, h.test_fraction, h.shuffle_split, h.seed)
        self.datasets = {name: self.tokenize(part) for name, part in self.splits.items()}
        sizes = " / ".join(f"{len(part)} {name}" for name, part in self.splits.items())
        log.info("data: %s %s from %s: %s", len(records), self.noun, Path(str(h.path)).name, sizes)
        if h.max_length is not None:
            self.warn_long(self.datasets, len(records))
