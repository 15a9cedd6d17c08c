"""Automatic response metrics: golden ROUGE-L / exact-match examples, parity with `rouge_score`, averages."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt_finetune.evaluation.metrics import (
    exact_match,
    lcs_length,
    rouge_l_f1,
    rouge_tokens,
    score_record,
    summarize,
)

VOCABULARY = ["the", "cat", "sat", "on", "mat", "Dog!", "a", "7", "é", "x-y"]
WORDS = st.lists(st.sampled_from(VOCABULARY), max_size=12)


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("the cat sat on the mat", "the cat is on the mat", 5 / 6),  # LCS "the cat on the mat" = 5 of 6
        ("Hallo!", "hallo", 1.0),  # case and punctuation do not count
        ("a b c d", "d c b a", 0.25),  # order matters: LCS is one word
        ("completely different", "nothing shared", 0.0),
        ("", "the reference", 0.0),
        ("a prediction", "", 0.0),
        ("x y", "x y z w", 2 * (1.0 * 0.5) / 1.5),  # precision 1, recall 1/2
    ],
)
def test_rouge_l_golden_examples(prediction: str, reference: str, expected: float) -> None:
    assert rouge_l_f1(prediction, reference) == pytest.approx(expected)


def test_rouge_tokens_split_on_everything_but_ascii_letters_and_digits() -> None:
    assert rouge_tokens("It's 1,000 grams—exactly.") == ["it", "s", "1", "000", "grams", "exactly"]


@settings(max_examples=200, deadline=None)
@given(prediction=WORDS, reference=WORDS)
def test_rouge_l_matches_rouge_score(prediction: list[str], reference: list[str]) -> None:
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    pred, ref = " ".join(prediction), " ".join(reference)
    assert rouge_l_f1(pred, ref) == pytest.approx(scorer.score(ref, pred)["rougeL"].fmeasure, abs=1e-12)


@settings(max_examples=100, deadline=None)
@given(a=WORDS, b=WORDS)
def test_lcs_is_symmetric_and_bounded(a: list[str], b: list[str]) -> None:
    n = lcs_length(a, b)
    assert n == lcs_length(b, a)
    assert 0 <= n <= min(len(a), len(b))
    assert lcs_length(a, a) == len(a)


def test_exact_match_ignores_whitespace_only() -> None:
    assert exact_match("  The sentence\n has 5 words. ", "The sentence has 5 words.")
    assert not exact_match("the sentence has 5 words.", "The sentence has 5 words.")
    assert not exact_match("The sentence has 5 words", "The sentence has 5 words.")


def test_score_record_and_summary() -> None:
    base = {"instruction": "i", "input": "", "output": "Hello world"}
    records = [
        {**base, "model_response": "Hello world", "stopped": True},
        {**base, "model_response": "Goodbye", "stopped": False},
        {**base, "model_response": "Hello there friend"},
    ]
    scores = [score_record(r) for r in records]
    assert [s["exact_match"] for s in scores] == [True, False, False]
    # GPT-2 BPE: "Hello" " world"; "Good" "bye"; "Hello" " there" " friend"
    assert [s["response_tokens"] for s in scores] == [2, 2, 3]
    assert scores[0]["expected_tokens"] == 2
    assert [s["stopped"] for s in scores] == [True, False, None]
    summary = summarize(scores)
    assert summary["records"] == 3
    assert summary["exact_match"] == pytest.approx(1 / 3)
    assert summary["rouge_l_f1"] == pytest.approx((1.0 + 0.0 + 2 * (1 / 3 * 1 / 2) / (1 / 3 + 1 / 2)) / 3)
    assert summary["response_tokens"] == pytest.approx(7 / 3)
    assert summary["stopped_fraction"] == 0.5  # over the two records that say


def test_summary_of_nothing_is_empty_not_an_error() -> None:
    assert summarize([]) == {
        "records": 0,
        "exact_match": None,
        "rouge_l_f1": None,
        "response_tokens": None,
        "expected_tokens": None,
        "stopped_fraction": None,
    }
