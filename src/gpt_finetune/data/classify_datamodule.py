"""Classification data: read, balance, split, tokenise once, pad (to the longest train text or per batch)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader, Dataset

from gpt_finetune.data.base import FinetuneDataModule
from gpt_finetune.data.classification import (
    Column,
    Example,
    Format,
    balance,
    check_labels,
    check_splits,
    load_examples,
    split_examples,
)
from gpt_finetune.data.fields import check_fields
from gpt_finetune.tokenizer import END_OF_TEXT, gpt2_tokenizer

log = logging.getLogger(__name__)
Padding = Literal["longest_train", "batch"]
UCI_URL = "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip"


def collate_classification(
    sequences: Sequence[Sequence[int]],
    labels: Sequence[int],
    *,
    width: int | None = None,
    max_length: int | None = None,
    pad_id: int = END_OF_TEXT,
) -> dict[str, torch.Tensor]:
    """`{"input_ids" (B, T), "lengths" (B,), "labels" (B,)}`, right-padded with `pad_id`.

    Each row keeps its first `max_length` tokens, then is cut and padded to `width` (the book: the longest
    training text) or, without a width, padded to the longest row of the batch. `lengths` counts real tokens.
    """
    cut = [list(s[:max_length]) if max_length is not None else list(s) for s in sequences]
    if width is not None:
        cut = [s[:width] for s in cut]
    columns = width if width is not None else max(len(s) for s in cut)
    input_ids = torch.full((len(cut), columns), pad_id, dtype=torch.long)
    for row, seq in enumerate(cut):
        input_ids[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
    return {
        "input_ids": input_ids,
        "lengths": torch.tensor([len(s) for s in cut], dtype=torch.long),
        "labels": torch.as_tensor(list(labels), dtype=torch.long),
    }


def encode_texts(texts: Sequence[str], input_format: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A batch for unlabelled texts, padded exactly as the model was trained (`input_format` of the task)."""
    tokenizer = gpt2_tokenizer()
    ids = [tokenizer.encode(text, disallowed_special=()) for text in texts]
    batch = collate_classification(
        ids, [0] * len(ids), width=input_format["width"], max_length=input_format["max_length"]
    )
    del batch["labels"]
    return batch


class TokenizedTexts(Dataset):
    """A split as (token ids, label id, index in the split), tokenised once."""

    def __init__(self, examples: list[Example]) -> None:
        tokenizer = gpt2_tokenizer()
        self.items = [
            (tokenizer.encode(e.text, disallowed_special=()), e.label, i) for i, e in enumerate(examples)
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[list[int], int, int]:
        return self.items[index]


class ClassificationDataModule(FinetuneDataModule[TokenizedTexts]):
    """Labelled texts (the UCI SMS Spam Collection by default), optionally balanced, split 70 / 10 / 20."""

    def __init__(
        self,
        labels: list[Any],
        path: str = UCI_URL,
        member: str | None = "SMSSpamCollection",
        format: Format = "auto",
        text_column: Column = 1,
        label_column: Column = 0,
        balance: bool = False,
        train_fraction: float = 0.7,
        val_fraction: float = 0.1,
        shuffle: bool = True,
        seed: int = 123,
        padding: Padding = "longest_train",
        max_length: int | None = None,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        drop_last: bool = True,
        num_workers: int = 0,
        cache_dir: str | None = None,
        fields: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.labels = check_labels(labels)  # fail before any work
        check_fields(fields, ("text", "label"), "classification")
        self.save_hyperparameters(logger=False)  # train.py logs the whole resolved config instead
        self.splits: dict[str, list[Example]] = {}
        self.width: int | None = None
        self.longest = 0

    def build(self) -> None:
        h = self.hparams
        examples = load_examples(
            h.path, self.labels, h.format, h.text_column, h.label_column, h.member, h.cache_dir, h.fields
        )
        counts = [sum(e.label == i for e in examples) for i in range(len(self.labels))]
        if h.balance:
            examples = balance(examples, h.seed)
        self.splits = split_examples(examples, h.train_fraction, h.val_fraction, h.shuffle, h.seed)
        check_splits(self.splits, self.labels)
        self.datasets = {name: TokenizedTexts(part) for name, part in self.splits.items()}
        self.width = self._width()
        limit = self.width if self.width is not None else h.max_length
        lengths = [len(ids) for dataset in self.datasets.values() for ids, _, _ in dataset.items]
        self.longest = max(lengths) if limit is None else min(max(lengths), limit)  # the widest batch
        log.info(
            "data: %s (%s)%s -> %s; padding %s",
            h.path,
            ", ".join(f"{n} {label}" for n, label in zip(counts, self.labels, strict=True)),
            " balanced" if h.balance else "",
            " / ".join(f"{len(part)} {name}" for name, part in self.splits.items()),
            f"to {self.width} tokens" if self.width is not None else "per batch",
        )
        self._warn_truncated()

    def _width(self) -> int | None:
        """The book's width: the longest training text (every split is padded and cut to it), capped."""
        if self.hparams.padding == "batch":
            return None
        longest = max(len(ids) for ids, _, _ in self.datasets["train"].items)
        return min(longest, self.hparams.max_length) if self.hparams.max_length is not None else longest

    def _warn_truncated(self) -> None:
        limit = self.width if self.width is not None else self.hparams.max_length
        if limit is None:
            return
        for name, dataset in self.datasets.items():
            cut = sum(len(ids) > limit for ids, _, _ in dataset.items)
            if cut:
                log.warning("data: %d of %d %s texts are cut to %d tokens", cut, len(dataset), name, limit)

    def input_format(self) -> dict[str, Any]:
        """How texts become model inputs; the task saves it with each checkpoint for prediction."""
        return {"padding": self.hparams.padding, "width": self.width, "max_length": self.hparams.max_length}

    def collate(self, batch: list[tuple[list[int], int, int]]) -> dict[str, torch.Tensor]:
        sequences, labels, indices = zip(*batch, strict=True)
        out = collate_classification(sequences, labels, width=self.width, max_length=self.hparams.max_length)
        out["index"] = torch.as_tensor(indices, dtype=torch.long)
        return out

    def train_dataloader(self) -> DataLoader:
        # This rank's share of one seeded order (the trainer presets leave sharding to the DataModules).
        return self.train_loader([0] * len(self.datasets["train"]), shuffle=True, group_by_length=False)
