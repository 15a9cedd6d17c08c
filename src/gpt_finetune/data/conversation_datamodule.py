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
        packing: bool = False,
        pack_length: int | None = None,
        **split: Any,
    ) -> None:
        """`split`: `SplitRecordsDataModule`'s settings (fractions, seed, batch size, max_length, ...)."""
        check_settings(path, format, train_on)
        prompt_style(style)  # fail before any work on an unknown style
        check_fields(fields, FIELDS, "conversation")
        # SplitRecordsDataModule's __init__: InstructionDataModule's takes other settings (mask_prompt).
        super(InstructionDataModule, self).__init__(**split)
        check_packing(packing, pack_length, self.hparams.max_length, self.hparams.group_by_length)

    noun = "conversations"

    def read(self) -> list[Record]:
        h = self.hparams
        return load_conversations(h.path, h.cache_dir, h.format, h.fields)

    def tokenize(self, records: list[Record]) -> TokenizedConversations:
        h = self.hparams
        return TokenizedConversations(records, h.style, h.train_on, h.max_length)

    def warn_long(self, datasets: dict[str, Any], records: int) -> None:
        shortened = sum(ds.shortened for ds in datasets.values())
        if shortened:
            log.warning(
                "data: %d of %d conversations are longer than max_length=%d tokens: their oldest exchanges "
                "are left out, %d still cut at max_length (their last answer learned only in part)",
                shortened,
                records,
                self.hparams.max_length,
                sum(ds.cut for ds in datasets.values()),
            )

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
