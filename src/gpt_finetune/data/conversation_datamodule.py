"""The conversation DataModule: multi-turn chats, rendered by the one conversation rule, learned on the
assistant turns only; split, packed and batched as instruction data.

Past `max_length`: a conversation drops its oldest whole exchanges (a user turn and its answer), keeping
the system message and at least the last exchange, until it fits; one still too long is cut at
`max_length` (its last answer then learned only in part). Both are counted in the log.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt_finetune.data.collate import IGNORE_INDEX, collate_labelled
from gpt_finetune.data.conversation_prompts import TRAIN_ON, TrainOn, training_tokens
from gpt_finetune.data.conversations import (
    FIELDS,
    FORMATS,
    Format,
    Message,
    Record,
    load_conversations,
    whole,
)
from gpt_finetune.data.fields import check_fields
from gpt_finetune.data.instruct_datamodule import InstructionDataModule, TokenizedInstructions, check_packing
from gpt_finetune.data.instructions import split_records
from gpt_finetune.data.packing import collate_packed
from gpt_finetune.data.prompts import prompt_style
from gpt_finetune.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fitted:
    """A conversation's (inputs, targets) and how `max_length` shortened it."""

    inputs: list[int]
    targets: list[int]
    dropped: int  # oldest exchanges left out
    cut: bool  # still longer than max_length: cut there


def fit_conversation(
    messages: list[Message], style: str, train_on: TrainOn, max_length: int | None
) -> Fitted:
    """Inputs and targets (`IGNORE_INDEX` where nothing is learned), the oldest exchanges dropped while the
    conversation has more inputs than `max_length` and more than one exchange."""
    system = messages[:1] if messages[0]["role"] == "system" else []
    turns = messages[len(system) :]
    dropped = 0
    tokens, learned = training_tokens(system + turns, style, train_on)
    while max_length is not None and len(tokens) - 1 > max_length and len(turns) > 2:
        turns, dropped = turns[2:], dropped + 1
        tokens, learned = training_tokens(system + turns, style, train_on)
    targets = [t if keep else IGNORE_INDEX for t, keep in zip(tokens[1:], learned[1:], strict=True)]
    cut = max_length is not None and len(tokens) - 1 > max_length
    return Fitted(tokens[:-1], targets, dropped, cut)


class TokenizedConversations(TokenizedInstructions):
    """A split as (input ids, targets) pairs, tokenised once; `shortened` counts the conversations that
    max_length shortened, `cut` those of them still cut at max_length."""

    def __init__(self, records: list[Record], style: str, train_on: TrainOn, max_length: int | None) -> None:
        self.records = records
        fitted = [fit_conversation(whole(r), style, train_on, max_length) for r in records]
        self.items = [(f.inputs, f.targets) for f in fitted]
        self.shortened = sum(f.dropped > 0 or f.cut for f in fitted)
        self.cut = sum(f.cut for f in fitted)


class ConversationDataModule(InstructionDataModule):
    """Conversations (OpenAI or ShareGPT records) from a path, URL or Hub dataset, split 85 / 10 / 5 as
    instruction data; `train_on` learns every assistant turn (`all_assistant`) or the last only. A split
    record is the context before the last answer (`messages`), the answer (`output`) and the last user turn
    (`instruction`): test responses answer the context. Packing as for instruction data."""

    def __init__(
        self,
        path: str | None = None,
        format: Format = "auto",
        fields: Mapping[str, str] | None = None,
        style: str = "alpaca",
        train_on: TrainOn = "all_assistant",
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
        packing: bool = False,
        pack_length: int | None = None,
    ) -> None:
        # FinetuneDataModule's __init__: InstructionDataModule's takes other settings (mask_prompt).
        super(InstructionDataModule, self).__init__()
        check_settings(path, format, train_on)
        prompt_style(style)  # fail before any work on an unknown style
        check_fields(fields, FIELDS, "conversation")
        check_packing(packing, pack_length, max_length, group_by_length)
        self.save_hyperparameters(logger=False)  # train.py logs the whole resolved config instead
        self.splits: dict[str, list[Record]] = {}

    def build(self) -> None:
        h = self.hparams
        records = load_conversations(h.path, h.cache_dir, h.format, h.fields)
        self.splits = split_records(records, h.train_fraction, h.test_fraction, h.shuffle_split, h.seed)
        tokenized = {
            name: TokenizedConversations(part, h.style, h.train_on, h.max_length)
            for name, part in self.splits.items()
        }
        sizes = " / ".join(f"{len(part)} {name}" for name, part in self.splits.items())
        log.info("data: %s conversations from %s: %s", len(records), Path(str(h.path)).name, sizes)
        shortened = sum(ds.shortened for ds in tokenized.values())
        if shortened:
            log.warning(
                "data: %d of %d conversations are longer than max_length=%d tokens: their oldest exchanges "
                "are left out, %d still cut at max_length (their last answer learned only in part)",
                shortened,
                len(records),
                h.max_length,
                sum(ds.cut for ds in tokenized.values()),
            )
        self.datasets = {**tokenized, **({"train": self.packed(tokenized["train"])} if h.packing else {})}

    def collate(self, batch: list[Any]) -> dict[str, Any]:
        if isinstance(batch[0], list):  # packed rows, from the train split
            return collate_packed(batch, max_length=self.hparams.max_length)
        return collate_labelled(batch, max_length=self.hparams.max_length)


def check_settings(path: str | None, format: str, train_on: str) -> None:
    """Settings that cannot run, all in one line."""
    problems = []
    if path is None:
        problems.append(
            "data.path is not set; pass a JSON, JSONL or parquet file of conversations, a URL or "
            "hf://datasets/OWNER/NAME"
        )
    if format not in ("auto", *FORMATS):
        problems.append(f"data.format={format} is not one of auto, {', '.join(FORMATS)}")
    if train_on not in TRAIN_ON:
        problems.append(f"data.train_on={train_on} is not one of {', '.join(TRAIN_ON)}")
    if problems:
        raise UserError("; ".join(problems))
