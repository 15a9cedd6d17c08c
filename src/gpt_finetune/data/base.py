"""What every DataModule shares: fetching a URL or Hub dataset once, building the splits once, loaders."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Generic, TypeVar

import lightning as L
import torch
from lightning.fabric.utilities.data import AttributeDict
from torch.utils.data import DataLoader, Dataset

from gpt_finetune.data.sampling import ResumableDataLoader, training_sampler
from gpt_finetune.data.sources import prefetch

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
