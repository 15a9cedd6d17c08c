"""Synthetic instruction data for the learning tests: lists of one-token words (on PYTHONPATH=tests)."""

from __future__ import annotations

import random

# One GPT-2 token each, with and without a leading space: a copied response is a token-for-token copy.
WORDS = (
    *("red", "blue", "green", "black", "white", "cat", "dog", "bird", "fish", "tree"),
    *("sun", "moon", "star", "rain", "fire", "water", "stone", "king", "road", "book"),
)


def distinct_word_lists(n: int, seed: int) -> list[str]:
    """`n` different lists of 2-4 different words, space-separated, in the order drawn."""
    rng = random.Random(seed)
    lists: dict[str, None] = {}  # an ordered set: no list is repeated, so no two splits share one
    while len(lists) < n:
        lists[" ".join(rng.sample(WORDS, rng.randint(2, 4)))] = None
    return list(lists)
