"""What the judge is asked and how its replies are read: the book's polite / impolite rewrite, A-or-B rank.

The rewrite prompt is the book's (ch07 `create-preference-data-ollama`), with the spaces between its
sentences and its doubled "return" fixed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal

from gpt_finetune.data.prompts import ALPACA_PREAMBLE

Tone = Literal["polite", "impolite"]
Choice = Literal["A", "B"]

REWRITE = (
    "Given the input `{input}` and correct output `{output}`, slightly rewrite the output to be more "
    "{tone}. Keep the modification minimal. Only return the generated response and nothing else."
)
RANK = (
    "Given the input `{input}` and correct output `{output}`, which of these two responses is better?\n\n"
    "Response A: `{a}`\n\nResponse B: `{b}`\n\n"
    "Answer with the single letter A or B only."
)
RANK_REMINDER = "Answer with the single letter A or B only, no other text."

_THINKING = re.compile(r"<think>.*?</think>", re.DOTALL)
_REFUSAL = re.compile(
    r"^(?:i'?m sorry|i am sorry|sorry)?[,.!]?\s*(?:but\s+)?(?:as an ai\b|i\s+(?:can't|cannot|can not|won't|"
    r"will not|am unable to|'m unable to|am not able to|'m not able to)\s+(?:help|assist|fulfil|comply|"
    r"do|provide|create|write|rewrite|generate|make|produce))",
    re.IGNORECASE,
)
_ONLY_LETTER = re.compile(r"^[\W_]*(?:(?i:response|option)\s+)?([AB])[\W_]*$")
_SAID = re.compile(  # "The better response is B", "Answer: A", "I prefer response B"
    r"(?i:answer|better(?:\s+(?:one|response))?\s+is|choose|choice|pick|prefer|winner)\W*"
    r"(?:(?i:response|option)\s+)?\**([AB])\b"
)
_NAMED = re.compile(r"(?i:response|option)\s+\**([AB])\b")  # "Response A is clearer"
_MARKED = re.compile(r"\*\*([AB])\*\*|[\"'`]([AB])[\"'`]|^\W*([AB])(?:[.:)]|\n)")  # **A**, "B", "A: ..."


def book_input(record: Mapping[str, str]) -> str:
    """The book's `format_input`: the Alpaca preamble, instruction and input, without the response header."""
    text = f"{ALPACA_PREAMBLE}\n\n### Instruction:\n{record['instruction']}"
    return text + (f"\n\n### Input:\n{record['input']}" if record.get("input") else "")


def rewrite_prompt(record: Mapping[str, str], tone: Tone) -> str:
    """The book's request to rewrite `record`'s expected output slightly more politely or impolitely."""
    return REWRITE.format(input=book_input(record), output=record["output"], tone=tone)


def rank_prompt(record: Mapping[str, str], a: str, b: str) -> str:
    """A request to pick the better of two responses to `record`, its expected output given as reference."""
    return RANK.format(input=book_input(record), output=record["output"], a=a, b=b)


def clean_reply(reply: str) -> str:
    """The reply without a reasoning model's `<think>` block, surrounding space, or wrapping backticks."""
    text = _THINKING.sub("", reply).strip()
    for fence in ("```", "`"):
        if len(text) > 2 * len(fence) and text.startswith(fence) and text.endswith(fence):
            return text[len(fence) : -len(fence)].strip()
    return text


def unusable_rewrite(rewrite: str, original: str) -> str | None:
    """Why a cleaned rewrite cannot be one side of a pair (empty, unchanged, a refusal), or None."""
    if not rewrite:
        return "empty"
    if rewrite.split() == original.split():
        return "unchanged"
    if _REFUSAL.match(rewrite):
        return "refused"
    return None


def parse_choice(reply: str) -> Choice | None:
    """The response a reply picks ("B", "**A**", "Response B.", "The better response is A"), or None when
    it names neither or both."""
    text = clean_reply(reply)
    only = _ONLY_LETTER.match(text)
    if only:
        return "A" if only.group(1) == "A" else "B"
    for pattern in (_SAID, _NAMED, _MARKED):
        letters = {letter for match in pattern.finditer(text) for letter in match.groups() if letter}
        if len(letters) > 1:
            return None
        if letters:
            return "A" if letters == {"A"} else "B"
    return None
