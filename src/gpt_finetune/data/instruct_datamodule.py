"""The instruction-tuning DataModule: read, validate, split, tokenise once, pack (optionally), collate."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from torch.utils.data import DataLoader, Dataset

from gpt_finetune.data.base import SplitRecordsDataModule
from gpt_finetune.data.collate import collate_instructions
from gpt_finetune.data.fields import check_fields
from gpt_finetune.data.instructions import FIELDS, Record, load_records
from gpt_finetune.data.packing import (
    Item,
    PackedRows,
    collate_packed,
    pack_records,
    padding_share,
    record_width,
)
from gpt_finetune.data.prompts import format_prompt, prompt_style
from gpt_finetune.data.sampling import replicas
from gpt_finetune.errors import UserError
from gpt_finetune.tokenizer import gpt2_tokenizer

log = logging.getLogger(__name__)
BOOK_URL = "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch07/01_main-chapter-code/instruction-data.json"


class TokenizedInstructions(Dataset):
    """A split as (token ids of prompt + output, prompt length) pairs, tokenised once (a conversation
    split: (inputs, targets) pairs, `packing.Item`)."""

    def __init__(self, records: list[Record], style: str) -> None:
        tokenizer = gpt2_tokenizer()
        self.records = records
        self.items: list[Item] = []
        for record in records:
            prompt = format_prompt(record, style)
            ids = tokenizer.encode(prompt + record["output"], disallowed_special=())
            self.items.append((ids, len(tokenizer.encode(prompt, disallowed_special=()))))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Item:
        return self.items[index]


class InstructionDataModule(SplitRecordsDataModule[TokenizedInstructions | PackedRows]):
    """Instruction records from a path, URL or Hub dataset (JSON, JSONL, CSV, parquet; `fields` names the
    file's columns for ours), split 85 / 10 / 5, batched for next-token loss.

    With `packing`, the train split is packed once into rows of up to `pack_length` tokens (default
    `max_length`), each record attending only to itself; a batch is then `batch_size` rows. Validation and
    test stay unpacked, so their losses compare with unpacked runs.
    """

    def __init__(
        self,
        path: str = BOOK_URL,
        style: str = "alpaca",
        fields: Mapping[str, str] | None = None,
        mask_prompt: bool = False,
        packing: bool = False,
        pack_length: int | None = None,
        **split: Any,
    ) -> None:
        """`split`: `SplitRecordsDataModule`'s settings (fractions, seed, batch size, max_length, ...)."""
        prompt_style(style)  # fail before any work on an unknown style
        check_fields(fields, FIELDS, "instruction")
        super().__init__(**split)
        check_packing(packing, pack_length, self.hparams.max_length, self.hparams.group_by_length)

    @property
    def pack_length(self) -> int | None:
        """Tokens a packed training row holds at most; None without packing."""
        h = self.hparams
        if not h.packing:
            return None
        return h.pack_length if h.pack_length is not None else h.max_length

    def read(self) -> list[Record]:
        return load_records(self.hparams.path, self.hparams.cache_dir, mapping=self.hparams.fields)

    def tokenize(self, records: list[Record]) -> TokenizedInstructions:
        return TokenizedInstructions(records, self.hparams.style)

    def warn_long(self, datasets: dict[str, Any], records: int) -> None:
        h = self.hparams
        long = sum(len(ids) > h.max_length for ds in datasets.values() for ids, _ in ds.items)
        if long:
            log.warning(
                "data: %d of %d records are longer than max_length=%d tokens and are truncated",
                long,
                records,
                h.max_length,
            )

    def build(self) -> None:
        super().build()
        train = self.datasets["train"]
        if self.hparams.packing and isinstance(train, TokenizedInstructions):
            self.datasets["train"] = self.packed(train)

    def packed(self, train: TokenizedInstructions) -> PackedRows:
        """The train split packed into rows of up to `pack_length` tokens (the same rows for a seed)."""
        h, row_length = self.hparams, self.pack_length
        assert row_length is not None  # check_packing: packing has a pack_length or a max_length
        widths = [record_width(len(ids), h.max_length) for ids, _ in train.items]
        longest = max(widths, default=0)
        if longest > row_length:
            raise UserError(
                f"data.pack_length={row_length} is shorter than the longest training record ({longest} "
                f"tokens, after data.max_length={h.max_length}); raise data.pack_length or lower "
                "data.max_length"
            )
        rows = pack_records(widths, row_length, h.seed)
        world, _ = replicas(self.trainer)
        if h.drop_last and len(rows) < h.batch_size * world:
            processes = f" x {world} processes" if world > 1 else ""
            raise UserError(
                f"data.packing=true packs the {len(widths)} train records into {len(rows)} rows of up to "
                f"{row_length} tokens, less than one batch of data.batch_size={h.batch_size} rows{processes} "
                "(data.drop_last=true drops it); lower data.batch_size or data.pack_length"
            )
        log.info(
            "data: packed %d train records into %d rows of up to %d tokens (%.1f %% padding)",
            len(widths),
            len(rows),
            row_length,
            100 * padding_share(rows, widths, row_length),
        )
        return PackedRows(train.items, rows)

    def collate(self, batch: list[Any]) -> dict[str, Any]:
        if isinstance(batch[0], list):  # packed rows (PackedRows items), from the train split
            return collate_packed(
                batch, max_length=self.hparams.max_length, mask_prompt=self.hparams.mask_prompt
            )
        sequences, prompt_lengths = zip(*batch, strict=True)
        return collate_instructions(
            sequences,
            max_length=self.hparams.max_length,
            prompt_lengths=prompt_lengths if self.hparams.mask_prompt else None,
        )

    def train_dataloader(self) -> DataLoader:
        h = self.hparams
        train = self.datasets["train"]
        if isinstance(train, PackedRows):
            lengths = [sum(len(ids) for ids, _ in train[i]) for i in range(len(train))]
        else:
            lengths = [len(ids) for ids, _ in train.items]
        return self.train_loader(lengths, shuffle=h.shuffle, group_by_length=h.group_by_length)


def check_packing(
    packing: bool, pack_length: int | None, max_length: int | None, group_by_length: bool
) -> None:
    """Packing settings that cannot run, all in one line."""
    if not packing:
        return
    problems = []
    if group_by_length:
        problems.append("data.packing=true already fills rows; set data.group_by_length=false")
    if pack_length is None and max_length is None:
        problems.append("data.packing=true needs a row length: set data.pack_length or data.max_length")
    if pack_length is not None and pack_length < 1:
        problems.append(f"data.pack_length={pack_length} must be >= 1 (or null = data.max_length)")
    if problems:
        raise UserError("; ".join(problems))
