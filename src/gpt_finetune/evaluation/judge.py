"""LLM-as-judge: a larger model scores each response 0-100 against the expected output (the book's 7.8)."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from typing import Any

from tqdm import tqdm

from gpt_finetune.data.conversation_prompts import render_messages
from gpt_finetune.data.prompts import format_prompt
from gpt_finetune.errors import UserError
from gpt_finetune.evaluation.judge_client import (
    ChatClient,
    Message,
    Protocol,
    RequestRejected,
    TransientError,
    Unreachable,
)

log = logging.getLogger(__name__)

PROMPT = (
    "Given the input `{prompt}` and correct output `{output}`, score the model response `{response}` "
    "on a scale from 0 to 100, where 100 is the best score. Respond with the integer number only."
)
REMINDER = "Respond with the integer score from 0 to 100 only, no other text."
_THINKING = re.compile(r"<think>.*?</think>", re.DOTALL)
_NUMBER = re.compile(r"(?<![\w.-])(\d+(?:\.\d+)?)(?!\w)")
_OUT_OF = re.compile(r"(/|out of)\s*$", re.IGNORECASE)


def judge_prompt(record: Mapping[str, Any], style: str) -> str:
    """The book's judge prompt for one record, with the prompt (a conversation's turns) formatted as the
    model saw it."""
    shown = (
        render_messages(record["messages"], style) if "messages" in record else format_prompt(record, style)
    )
    prompt = shown.rstrip()
    return PROMPT.format(prompt=prompt, output=record["output"], response=record["model_response"])


def parse_score(reply: str) -> int | None:
    """The 0-100 score in a reply ("85", "Score: 85/100", "**85**"), or None when absent or ambiguous."""
    text = _THINKING.sub("", reply)
    values = set()
    for match in _NUMBER.finditer(text):
        if _OUT_OF.search(text[: match.start()]) and float(match.group(1)) == 100:
            continue  # the "100" of "85/100" or "85 out of 100"
        values.add(round(float(match.group(1))))
    if len(values) != 1:
        return None
    (score,) = values
    return score if 0 <= score <= 100 else None


@dataclass
class JudgedRecord:
    """A record's score (None = unscored), the judge's replies, the last error, and requests sent."""

    index: int
    score: int | None = None
    replies: list[str] = field(default_factory=list)
    error: str | None = None
    requests: int = 0


class Judge:
    """Scores responses with a chat model; the keys are the `judge/` config (ollama or openai protocol)."""

    def __init__(
        self,
        protocol: Protocol,
        base_url: str,
        model: str,
        retries: int = 2,
        retry_backoff_s: float = 1.0,
        concurrency: int = 4,
        **options: Any,
    ) -> None:
        """`options`: the request settings of `ChatClient` (temperature, seed, timeout_s, max_tokens, num_ctx,
        api_key_env)."""
        client = self.client = ChatClient(protocol, base_url, model, **options)
        self.retries, self.retry_backoff_s, self.concurrency = retries, retry_backoff_s, max(1, concurrency)
        self.settings = {
            "protocol": client.protocol, "url": client.url, "model": client.model,
            "temperature": client.temperature, "seed": client.seed, "timeout_s": client.timeout_s,
            "retries": retries, "concurrency": concurrency, "api_key_env": client.api_key_env,
        }  # fmt: skip

    def ask(self, messages: list[Message], result: JudgedRecord) -> str | None:
        """One reply, repeating transient failures `retries` times; None (and `result.error`) if none came.
        A rejected request, or a server still unreachable after the retries, is a UserError."""
        for attempt in range(self.retries + 1):
            result.requests += 1
            try:
                return self.client.chat(messages)
            except RequestRejected as error:
                raise UserError(f"the judge rejected the request: {error}") from None
            except TransientError as error:
                result.error = str(error)
                if attempt < self.retries:
                    time.sleep(self.retry_backoff_s * 2**attempt)
                elif isinstance(error, Unreachable):
                    raise UserError(
                        f"judge: {error}; start the server (e.g. `ollama serve`) or set judge.base_url"
                    ) from None
        return None

    def score(self, index: int, prompt: str) -> JudgedRecord:
        """Ask for a score; ask once more, with a reminder, when the reply holds no single 0-100 number."""
        result = JudgedRecord(index)
        messages: list[Message] = [{"role": "user", "content": prompt}]
        for asked in range(2):
            reply = self.ask(messages, result)
            if reply is None:
                return result
            result.replies.append(reply)
            result.score = parse_score(reply)
            if result.score is not None:
                result.error = None
                return result
            result.error = f"no 0-100 score in the reply {reply[:80]!r}" + (
                " (after one retry)" if asked else ""
            )
            messages = [
                *messages,
                {"role": "assistant", "content": reply},
                {"role": "user", "content": REMINDER},
            ]
        return result

    def judge(self, records: Sequence[Mapping[str, Any]], style: str) -> dict[str, Any]:
        """Score every record, `concurrency` at a time, with a progress bar; see `summary` for the result."""
        results: list[JudgedRecord | None] = [None] * len(records)
        with ThreadPoolExecutor(self.concurrency) as pool:
            futures = [pool.submit(self.score, i, judge_prompt(r, style)) for i, r in enumerate(records)]
            try:
                for future in tqdm(as_completed(futures), total=len(futures), desc="judge", unit="record"):
                    result = future.result()
                    results[result.index] = result
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
        return summary(records, [r for r in results if r is not None], self.settings)


def summary(
    records: Sequence[Mapping[str, Any]], results: Sequence[JudgedRecord], settings: Mapping[str, Any]
) -> dict[str, Any]:
    """The judge_scores.json content: settings, "N of M scored, average X", and one entry per record."""
    scores = [r.score for r in results if r.score is not None]
    average = sum(scores) / len(scores) if scores else None
    line = f"{len(scores)} of {len(records)} scored" + (f", average {average:.2f}" if scores else "")
    entries = [{"instruction": records[r.index]["instruction"], **asdict(r)} for r in results]
    return {
        "judge": dict(settings),
        "scored": len(scores),
        "total": len(records),
        "average": average,
        "summary": line,
        "requests": sum(r.requests for r in results),
        "records": entries,
    }
