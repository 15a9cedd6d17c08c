"""The two ways to make a record's pair: the judge rewrites the expected output more or less politely
(`polite`, the book's), or picks the better of two responses sampled from an instruction run (`rank`).

Each record becomes one job (run on a worker thread) returning its progress entry: `{"index", "pair"}`
or `{"index", "left_out": reason}`.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from gpt_finetune.data.instructions import Record
from gpt_finetune.data.prompts import format_prompt
from gpt_finetune.evaluation.judge import Judge, JudgedRecord
from gpt_finetune.evaluation.judge_client import Message
from gpt_finetune.preferences.prompts import (
    RANK_REMINDER,
    Tone,
    clean_reply,
    parse_choice,
    rank_prompt,
    rewrite_prompt,
    unusable_rewrite,
)
from gpt_finetune.serving.loading import UsableModel
from gpt_finetune.tokenizer import END_OF_TEXT, gpt2_tokenizer

Entry = dict[str, Any]
Job = Callable[[], Entry]


def left_out(index: int, reason: str, tally: JudgedRecord | None = None) -> Entry:
    """The progress entry of a record left out of the output, with the judge's last reply or error."""
    entry: Entry = {"index": index, "left_out": reason}
    if tally is not None and (tally.replies or tally.error):
        entry["detail"] = tally.error if tally.error else tally.replies[-1][:200]
    return entry


def paired(index: int, record: Record, chosen: str, rejected: str) -> Entry:
    """The progress entry of a finished pair: the record (the book's layout) with chosen and rejected."""
    return {"index": index, "pair": {**record, "chosen": chosen, "rejected": rejected}}


def tone_for(seed: int, index: int) -> Tone:
    """Polite or impolite for record `index`: a seeded coin per record, the same on every (re)run."""
    return random.Random(f"{seed}:{index}").choice(["polite", "impolite"])


def sample_seed(seed: int, index: int, draw: int) -> int:
    """The sampling seed of record `index`'s response `draw` (0 or 1), independent of batching."""
    digest = hashlib.sha256(f"{seed}:{index}:{draw}".encode()).digest()
    return int.from_bytes(digest[:7], "big")


def rewrite_pair(judge: Judge, index: int, record: Record, seed: int) -> Entry:
    """Ask for a more polite or impolite output; the polite side of the two is chosen."""
    tone = tone_for(seed, index)
    tally = JudgedRecord(index)
    reply = judge.ask([{"role": "user", "content": rewrite_prompt(record, tone)}], tally)
    if reply is None:
        return left_out(index, "no reply", tally)
    tally.replies.append(reply)
    rewrite = clean_reply(reply)
    reason = unusable_rewrite(rewrite, record["output"])
    if reason is not None:
        return left_out(index, reason, tally)
    if tone == "polite":
        return paired(index, record, chosen=rewrite, rejected=record["output"])
    return paired(index, record, chosen=record["output"], rejected=rewrite)


def ranked_pair(judge: Judge, index: int, record: Record, a: str, b: str) -> Entry:
    """Ask which of responses A and B is better (once more, reminded, when the reply names neither)."""
    if a.split() == b.split():
        return left_out(index, "identical responses")
    tally = JudgedRecord(index)
    messages: list[Message] = [{"role": "user", "content": rank_prompt(record, a, b)}]
    for _ in range(2):
        reply = judge.ask(messages, tally)
        if reply is None:
            return left_out(index, "no reply", tally)
        tally.replies.append(reply)
        choice = parse_choice(reply)
        if choice is not None:
            better, worse = (a, b) if choice == "A" else (b, a)
            return paired(index, record, chosen=better, rejected=worse)
        messages = [
            *messages,
            {"role": "assistant", "content": reply},
            {"role": "user", "content": RANK_REMINDER},
        ]
    return left_out(index, "unparsable choice", tally)


@dataclass
class Sampling:
    """How rank mode samples its two responses per record (`generate.*`)."""

    max_new_tokens: int
    temperature: float
    top_k: int | None
    batch_size: int


def sampled_responses(
    model: UsableModel, records: Sequence[Record], indices: Sequence[int], sampling: Sampling, seed: int
) -> Iterator[tuple[int, str, str]]:
    """(index, response A, response B) for each of `indices`, generated `sampling.batch_size` records at
    a time, each response from its own seed (the same responses whatever the batching)."""
    tokenizer = gpt2_tokenizer()
    room = model.gpt.config.context_length - sampling.max_new_tokens
    for start in range(0, len(indices), sampling.batch_size):
        chunk = indices[start : start + sampling.batch_size]
        prompts = []
        for index in chunk:
            tokens = tokenizer.encode(
                format_prompt(records[index], model.prompt_style), disallowed_special=()
            )
            prompts += [tokens[-room:], tokens[-room:]]
        outputs = model.gpt.generate(
            prompts,
            max_new_tokens=sampling.max_new_tokens,
            temperature=sampling.temperature,
            top_k=sampling.top_k,
            seed=[sample_seed(seed, index, draw) for index in chunk for draw in (0, 1)],
            batch_size=2 * sampling.batch_size,
        )
        texts = [tokenizer.decode(t[:-1] if t and t[-1] == END_OF_TEXT else t).strip() for t in outputs]
        for k, index in enumerate(chunk):
            yield index, texts[2 * k], texts[2 * k + 1]


def rewrite_jobs(judge: Judge, records: Sequence[Record], pending: Sequence[int], seed: int) -> Iterator[Job]:
    """One polite / impolite rewrite job per pending record."""
    for index in pending:
        yield partial(rewrite_pair, judge, index, records[index], seed)


def rank_jobs(
    judge: Judge,
    model: UsableModel,
    records: Sequence[Record],
    pending: Sequence[int],
    sampling: Sampling,
    seed: int,
) -> Iterator[Job]:
    """One ranking job per pending record, its two responses sampled (in this thread) just before."""
    for index, a, b in sampled_responses(model, records, pending, sampling, seed):
        yield partial(ranked_pair, judge, index, records[index], a, b)
