"""The instruction-tuning DataModule: read, validate, split, tokenise once, collate."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from gpt_finetune.data.collate import collate_instructions
from gpt_finetune.data.download import fetch, is_url
from gpt_finetune.data.instructions import Record, load_records, split_records
from gpt_finetune.data.prompts import format_prompt, prompt_style
from gpt_finetune.data.sampling import ResumableDataLoader, training_sampler
from gpt_finetune.tokenizer import gpt2_tokenizer

log = logging.getLogger(__name__)
BOOK_URL = "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch07/01_main-chapter-code/instruction-data.json"


class TokenizedInstructions:
    """A split as (token ids of prompt + output, prompt length) pairs, tokenised once."""

    def __init__(self, records: list[Record], style: str) -> None:
        tokenizer = gpt2_tokenizer()
        self.records = records
        self.items: list[tuple[list[int], int]] = []
        for record in records:
            prompt = format_prompt(record, style)
            ids = tokenizer.encode(prompt + record["output"], disallowed_special=())
            self.items.append((ids, len(tokenizer.encode(prompt, disallowed_special=()))))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[list[int], int]:
        return self.items[index]


class InstructionDataModule(L.LightningDataModule):
    """Instruction records from a JSON / JSONL path or URL, split 85 / 10 / 5, batched for next-token loss."""

    def __init__(
        self,
        path: str = BOOK_URL,
        style: str = "alpaca",
        train_fraction: float = 0.85,
        test_fraction: float = 0.10,
        shuffle_split: bool = False,
        seed: int = 123,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        max_length: int | None = 1024,
        mask_prompt: bool = False,
        group_by_length: bool = False,
        shuffle: bool = True,
        drop_last: bool = True,
        num_workers: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        prompt_style(style)  # fail before any work on an unknown style
        self.save_hyperparameters()
        self.splits: dict[str, list[Record]] = {}
        self.datasets: dict[str, TokenizedInstructions] = {}

    def prepare_data(self) -> None:
        if is_url(self.hparams.path):
            fetch(self.hparams.path, self.hparams.cache_dir)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        h = self.hparams
        records = load_records(h.path, h.cache_dir)
        self.splits = split_records(records, h.train_fraction, h.test_fraction, h.shuffle_split, h.seed)
        self.datasets = {name: TokenizedInstructions(part, h.style) for name, part in self.splits.items()}
        sizes = " / ".join(f"{len(part)} {name}" for name, part in self.splits.items())
        log.info("data: %s records from %s: %s", len(records), Path(str(h.path)).name, sizes)
        if h.max_length is not None:
            long = sum(len(ids) > h.max_length for ds in self.datasets.values() for ids, _ in ds.items)
            if long:
                log.warning(
                    "data: %d of %d records are longer than max_length=%d tokens and are truncated",
                    long,
                    len(records),
                    h.max_length,
                )

    def collate(self, batch: list[tuple[list[int], int]]) -> dict[str, Any]:
        sequences, prompt_lengths = zip(*batch, strict=True)
        return collate_instructions(
            sequences,
            max_length=self.hparams.max_length,
            prompt_lengths=prompt_lengths if self.hparams.mask_prompt else None,
        )

    def train_dataloader(self) -> DataLoader:
        h, dataset = self.hparams, self.datasets["train"]
        sampler = training_sampler(
            [len(ids) for ids, _ in dataset.items],
            h.batch_size,
            self.trainer,
            shuffle=h.shuffle,
            group_by_length=h.group_by_length,
            seed=h.seed,
            drop_last=h.drop_last,
        )
        return self._loader(
            dataset,
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
        self,
        dataset: TokenizedInstructions,
        batch_size: int,
        cls: type[DataLoader] = DataLoader,
        **kwargs: Any,
    ) -> DataLoader:
        return cls(
            dataset,
            batch_size=batch_size,
            collate_fn=self.collate,
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
            **kwargs,
        )
