"""Preference pairs for DPO: read, validate, split as instruction data, tokenise once, collate pairs."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from gpt_finetune.data.base import SplitRecordsDataModule
from gpt_finetune.data.collate import collate_instructions
from gpt_finetune.data.conversation_prompts import prompt_tokens
from gpt_finetune.data.conversations import Place, read_conversation
from gpt_finetune.data.fields import check_fields
from gpt_finetune.data.instructions import validate_record
from gpt_finetune.data.json_records import json_kind
from gpt_finetune.data.prompts import format_prompt, prompt_style
from gpt_finetune.data.tables import records_of
from gpt_finetune.errors import UserError
from gpt_finetune.tokenizer import gpt2_tokenizer

log = logging.getLogger(__name__)
BOOK_URL = (
    "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch07/04_preference-tuning-with-dpo/"
    "instruction-data-with-preference.json"
)
PAIR_FIELDS = ("instruction", "input", "chosen", "rejected")
PAIR_SHAPE = '{"instruction": ..., "input": ..., "chosen": ..., "rejected": ...}'
PAIR_KEYS = ("chosen", "rejected")
Record = dict[
    str, Any
]  # instruction, input, chosen, rejected, output (= chosen); messages after a conversation
MAPPED_FIELDS = (*PAIR_FIELDS, "messages")  # what data.fields maps (a conversation's turns: messages)
Pair = tuple[
    int, list[int], list[int], int
]  # (index in its split, prompt + chosen, prompt + rejected, prompt)


def load_pairs(
    source: str | Path, cache_dir: str | Path | None = None, mapping: Mapping[str, str] | None = None
) -> list[Record]:
    """Validated preference records; `output` (the book's files have it) is ignored and set to `chosen`,
    the expected response of a pair (what test-set responses are scored against). A pair after a
    conversation (`messages`, or TRL's `prompt` list) keeps its turns as `messages`."""
    located = records_of(str(source), cache_dir, PAIR_SHAPE, mapping)
    records = [read_pair(item, where, name) for item, where, name in located]
    if not records:
        raise UserError(f"{source}: no records; add at least one record like {PAIR_SHAPE}")
    return records


def read_pair(item: Any, where: str, source: str) -> Record:
    """One pair: instruction, input, chosen, rejected (+ `messages` when its prompt is a conversation)."""
    turns = item.get("messages", item.get("prompt")) if isinstance(item, dict) else None
    if not isinstance(turns, list):
        record = validate_record(item, where, source, PAIR_FIELDS, PAIR_SHAPE)
        return {**record, "output": record["chosen"]}
    place = Place(source, where)
    messages = read_conversation({"messages": turns}, place, ending="user")
    chosen, rejected = (answer_text(item, key, place) for key in ("chosen", "rejected"))
    pair = {"instruction": messages[-1]["content"], "input": "", "chosen": chosen, "rejected": rejected}
    return {"messages": messages, **pair, "output": chosen}


def answer_text(item: dict[str, Any], key: str, place: Place) -> str:
    """A conversational pair's answer: a string, or TRL's `[{"role": "assistant", "content": ...}]`."""
    value = item.get(key)
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        value = value[0].get("content") if value[0].get("role") == "assistant" else value
    if not isinstance(value, str):
        kind = "missing" if key not in item else json_kind(item[key])
        raise place.error(
            f"field {key!r} is {kind}, not a string; write the answer as a string or as "
            '[{"role": "assistant", "content": ...}]'
        )
    return value


def pair_tokens(record: Record, style: str) -> tuple[list[int], list[int], int]:
    """(prompt + chosen ids, prompt + rejected ids, prompt length); a conversation's prompt as the
    conversation rule encodes it, then each answer."""
    tokenizer = gpt2_tokenizer()
    if "messages" in record:
        prompt = prompt_tokens(record["messages"], style)
        chosen, rejected = (prompt + tokenizer.encode(record[k], disallowed_special=()) for k in PAIR_KEYS)
        return chosen, rejected, len(prompt)
    text = format_prompt(record, style)
    chosen, rejected = (tokenizer.encode(text + record[k], disallowed_special=()) for k in PAIR_KEYS)
    return chosen, rejected, len(tokenizer.encode(text, disallowed_special=()))


class TokenizedPairs(Dataset):
    """A split as (index, prompt + chosen ids, prompt + rejected ids, prompt length), tokenised once."""

    def __init__(self, records: list[Record], style: str) -> None:
        self.records = records
        self.items: list[Pair] = [(i, *pair_tokens(record, style)) for i, record in enumerate(records)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Pair:
        return self.items[index]


class PreferenceDataModule(SplitRecordsDataModule[TokenizedPairs]):
    """Preference records (instruction, input, chosen, rejected) from a JSON / JSONL path or URL, split
    85 / 10 / 5 as instruction data; a batch holds the chosen rows, then the rejected rows of its pairs."""

    def __init__(
        self,
        path: str = BOOK_URL,
        style: str = "alpaca",
        fields: Mapping[str, str] | None = None,
        **split: Any,
    ) -> None:
        """`split`: `SplitRecordsDataModule`'s settings (fractions, seed, batch size, max_length, ...)."""
        prompt_style(style)  # fail before any work on an unknown style
        check_fields(fields, MAPPED_FIELDS, "preference")
        super().__init__(**split)

    noun = "preference pairs"

    def read(self) -> list[Record]:
        return load_pairs(self.hparams.path, self.hparams.cache_dir, self.hparams.fields)

    def tokenize(self, records: list[Record]) -> TokenizedPairs:
        return TokenizedPairs(records, self.hparams.style)

    def warn_long(self, datasets: dict[str, TokenizedPairs], records: int) -> None:
        h = self.hparams
        items = [item for ds in datasets.values() for item in ds.items]
        long = sum(max(len(item[1]), len(item[2])) > h.max_length for item in items)
        if long:
            log.warning(
                "data: %d of %d pairs are longer than max_length=%d tokens and are truncated",
                long,
                records,
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
