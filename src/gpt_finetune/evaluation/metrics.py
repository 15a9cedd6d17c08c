"""Automatic response metrics: exact match, ROUGE-L F1, response length, stop-at-end-of-text rate.

ROUGE-L is computed here (longest common subsequence over the tokens of Google's `rouge_score`: lower-cased
runs of `[a-z0-9]`, no stemming) because torchmetrics' ROUGE needs `nltk`, which is not a dependency; a test
checks the numbers against `rouge_score` where it is installed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from gpt_finetune.tokenizer import gpt2_tokenizer

_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def rouge_tokens(text: str) -> list[str]:
    """Tokens as `rouge_score` makes them: lower-case, every run of other characters splits."""
    return _NON_ALNUM.sub(" ", text.lower()).split()


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of `a` and `b` (O(len(a) * len(b)) time, O(len(b)) memory)."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l_f1(prediction: str, reference: str) -> float:
    """ROUGE-L F1 of `prediction` against `reference`; 0 when either has no tokens."""
    pred, ref = rouge_tokens(prediction), rouge_tokens(reference)
    if not pred or not ref:
        return 0.0
    lcs = lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, reference: str) -> bool:
    """Equal after collapsing whitespace runs and trimming the ends; case and punctuation count."""
    return " ".join(prediction.split()) == " ".join(reference.split())


def score_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """The automatic metrics of one record with `output` (expected) and `model_response`."""
    response, expected = str(record["model_response"]), str(record["output"])
    tokenizer = gpt2_tokenizer()
    stopped = record.get("stopped")
    return {
        "exact_match": exact_match(response, expected),
        "rouge_l_f1": rouge_l_f1(response, expected),
        "response_tokens": len(tokenizer.encode(response, disallowed_special=())),
        "expected_tokens": len(tokenizer.encode(expected, disallowed_special=())),
        "stopped": None if stopped is None else bool(stopped),
    }


def summarize(scores: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Averages over records; `stopped_fraction` over the records that say whether they stopped."""
    n = len(scores)
    known = [s["stopped"] for s in scores if s["stopped"] is not None]

    def mean(key: str) -> float | None:
        return sum(float(s[key]) for s in scores) / n if n else None

    return {
        "records": n,
        "exact_match": mean("exact_match"),
        "rouge_l_f1": mean("rouge_l_f1"),
        "response_tokens": mean("response_tokens"),
        "expected_tokens": mean("expected_tokens"),
        "stopped_fraction": sum(known) / len(known) if known else None,
    }
