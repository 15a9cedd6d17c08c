"""Splitting a data file's records: an optional seeded shuffle, then consecutive shares."""

from __future__ import annotations

import random
from typing import TypeVar

T = TypeVar("T")


def split_shares(
    items: list[T], shares: dict[str, float], rest: str, shuffle: bool, seed: int
) -> dict[str, list[T]]:
    """The first `shares[name]` of the (shuffled) items for each split in order, what is left for `rest`."""
    order = list(items)
    if shuffle:
        random.Random(seed).shuffle(order)
    splits: dict[str, list[T]] = {}
    start = 0
    for name, share in shares.items():
        count = int(len(order) * share)
        splits[name], start = order[start : start + count], start + count
    splits[rest] = order[start:]
    return splits
