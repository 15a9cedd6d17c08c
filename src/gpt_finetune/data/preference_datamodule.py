"""Preference pairs for DPO: read, validate, split as instruction data, tokenise once, collate pairs."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from gpt_finetune.data.base import FinetuneDataModule
from gpt_finetune.data.collate import collate_instructions
from gpt_finetune.data.instructions import Record, load_records, split_records
from gpt_finetune.data.prompts import format_prompt, prompt_style
from gpt_finetune.tokenizer import gpt2_tokenizer

log = logging.getLogger(__name__)
BOOK_URL = (
    "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch07/04_preference-tuning-with-dpo/"
    "instruction-data-with-preference.json"
)
PAIR_FIELDS = ("instruction", "input", "chosen", "rejected")
PAIR_SHAPE = '{"instruction": ..., "input": ..., "chosen": ..., "rejected": ...}'
Pair = tuple[
    int, list[int], list[int], int
]  # (index in its split, prompt + chosen, prompt + rejected, prompt)


def load_pairs(source: str | Path, cache_dir: str | Path | None = None) -> list[Record]:
    """Validated preference records; `output` (the book's files have it) is ignored and set to `chosen`,
    the expected response of a pair (what test-set responses are scored against)."""
    records = load_records(source, cache_dir, PAIR_FIELDS, PAIR_SHAPE)
    return [{**record, "output": record["chosen"]} for record in records]


class TokenizedPairs(Dataset):
    """A split as (index, prompt + chosen ids, prompt + rejected ids, prompt length), tokenised once."""

    def __init__(self, records: list[Record], style: str) -> None:
        tokenizer = gpt2_tokenizer()
        self.records = records
        self.items: list[Pair] = []
        for index, record in enumerate(records):
            prompt = format_prompt(record, style)
            chosen, rejected = (
                tokenizer.encode(prompt + record[key], disallowed_special=())
                for key in ("chosen", "rejected")
            )
            self.items.append((index, chosen, rejected, len(tokenizer.encode(prompt, disallowed_special=()))))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Pair:
        return self.items[index]


class PreferenceDataModule(FinetuneDataModule[TokenizedPairs]):
    """Preference records (instruction, input, chosen, rejected) from a JSON / JSONL path or URL, split
    85 / 10 / 5 as instruction data; a batch holds the chosen rows, then the rejected rows of its pairs."""

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
        group_by_length: bool = False,
        shuffle: bool = True,
        drop_last: bool = True,
        num_workers: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        prompt_style(style)  # fail before any work on an unknown style
        self.save_hyperparameters(logger=False)  # train.py logs the whole resolved config instead
        self.splits: dict[str, list[Record]] = {}

    def build(self) -> None:
        h = self.hparams
        records = load_pairs(h.path, h.cache_dir)
        self.splits = split_records(records, h.train_fraction, h.test_fraction, h.shuffle_split, h.seed)
        self.datasets = {name: TokenizedPairs(part, h.style) for name, part in self.splits.items()}
        sizes = " / ".join(f"{len(part)} {name}" for name, part in self.splits.items())
        log.info("data: %s preference pairs from %s: %s", len(records), Path(str(h.path)).name, sizes)
        if h.max_length is not None:
            items = [item for ds in self.datasets.values() for item in ds.items]
            long = sum(max(len(item[1]), len(item[2])) > h.max_length for item in items)
            if long:
                log.warning(
                    "data: %d of %d pairs are longer than max_length=%d tokens and are truncated",
                    long,
                    len(records),
                    h.max_length,
                )

    def collate(self, batch: list[Pair]) -> dict[str, torch.Tensor]:
        """`input_ids` and `targets` (2B, T): the B chosen rows, then the B rejected rows, each learned on
        its response and end-of-text only (the prompt is never learned); `index` (B) in the split."""
        indices, chosen, rejected, prompts = zip(*batch, strict=True)
        collated = collate_instructions(
            [*chosen, *rejected], max_length=self.hparams.max_length, prompt_lengths=[*prompts, *prompts]
        )
        return {**collated, "index": torch.tensor(indices, dtype=torch.long)}

    def train_dataloader(self) -> DataLoader:
        h = self.hparams
        lengths = [max(len(chosen), len(rejected)) for _, chosen, rejected, _ in self.datasets["train"].items]
        return self.train_loader(lengths, shuffle=h.shuffle, group_by_length=h.group_by_length)

    def dataloader(self, split: str) -> DataLoader:
        """The split in order, in evaluation batches (for precomputing reference log-probabilities)."""
        return self._loader(self.datasets[split], self.hparams.eval_batch_size or self.hparams.batch_size)
