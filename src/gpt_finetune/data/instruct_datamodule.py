"""The instruction-tuning DataModule: read, validate, split, tokenise once, collate."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader, Dataset

from gpt_finetune.data.base import FinetuneDataModule
from gpt_finetune.data.collate import collate_instructions
from gpt_finetune.data.instructions import Record, load_records, split_records
from gpt_finetune.data.prompts import format_prompt, prompt_style
from gpt_finetune.tokenizer import gpt2_tokenizer

log = logging.getLogger(__name__)
BOOK_URL = "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch07/01_main-chapter-code/instruction-data.json"


class TokenizedInstructions(Dataset):
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


class InstructionDataModule(FinetuneDataModule[TokenizedInstructions]):
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

    def build(self) -> None:
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
        h = self.hparams
        lengths = [len(ids) for ids, _ in self.datasets["train"].items]
        return self.train_loader(lengths, shuffle=h.shuffle, group_by_length=h.group_by_length)
