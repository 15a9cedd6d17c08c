"""Conversation records: OpenAI's `{"messages": [{"role", "content"}]}` or ShareGPT's
`{"conversations": [{"from", "value"}]}` (roles system / human / gpt), validated turn by turn.

A conversation is an optional leading system message, then user and assistant turns alternating, each with
a non-empty string content; one to train on ends with an assistant turn, a preference pair's prompt with a
user turn. A bad record is one line naming the file, the record, the turn and the fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gpt_finetune.data.fields import columns_of, renamed
from gpt_finetune.data.json_records import json_kind
from gpt_finetune.data.tables import records_of
from gpt_finetune.errors import UserError

Format = Literal["auto", "openai", "sharegpt"]
Message = dict[str, str]
Record = dict[str, Any]  # messages (the turns before the answer), instruction, input, output
FIELDS = ("messages", "role", "content")  # what data.fields maps (OpenAI's names)
SHAPE = '{"messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}]}'


@dataclass(frozen=True)
class TurnFormat:
    """How a format writes a turn: its keys and its role names (-> ours)."""

    role: str
    content: str
    roles: dict[str, str]


FORMATS = {
    "openai": TurnFormat("role", "content", {"system": "system", "user": "user", "assistant": "assistant"}),
    "sharegpt": TurnFormat("from", "value", {"system": "system", "human": "user", "gpt": "assistant"}),
}


@dataclass(frozen=True)
class Place:
    """Where a record is, and how to read it: for messages and the checks."""

    source: str
    where: str
    format: Format = "auto"
    mapping: Mapping[str, str] | None = None

    def error(self, problem: str) -> UserError:
        return UserError(f"{self.source}: {self.where} {problem}")


def load_conversations(
    source: str | Path,
    cache_dir: str | Path | None = None,
    format: Format = "auto",
    mapping: Mapping[str, str] | None = None,
) -> list[Record]:
    """Validated conversations from a path, an http(s) URL or a Hub dataset (JSON, JSONL or parquet), each
    as the turns before its last answer (`messages`), that answer (`output`) and the last user turn
    (`instruction`, `input` empty): the shape of an instruction record, so test responses score alike."""
    columns = {k: v for k, v in (mapping or {}).items() if k == "messages"}  # turns' keys: read_turn
    records = [
        answered(read_conversation(item, Place(name, where, format, mapping), ending="assistant"))
        for item, where, name in records_of(str(source), cache_dir, SHAPE, columns)
    ]
    if not records:
        raise UserError(f"{source}: no conversations; add at least one like {SHAPE}")
    return records


def answered(messages: list[Message]) -> Record:
    """A whole conversation as its context and last answer (the shape of an instruction record)."""
    context, answer = messages[:-1], messages[-1]
    return {
        "messages": context,
        "instruction": context[-1]["content"],
        "input": "",
        "output": answer["content"],
    }


def whole(record: Mapping[str, Any]) -> list[Message]:
    """The conversation a record of `load_conversations` holds: its context and its answer."""
    return [*record["messages"], {"role": "assistant", "content": record["output"]}]


def read_conversation(item: Any, place: Place, ending: str) -> list[Message]:
    """The record's turns as `{"role", "content"}` messages with our role names, checked."""
    if not isinstance(item, dict):
        raise place.error(f"is {json_kind(item)}, not an object; write each record as {SHAPE}")
    column = next((key for key in ("messages", "conversations") if key in item), None)
    if column is None:
        raise place.error(
            f"has no 'messages' (or 'conversations') field{columns_of(item)}; "
            "name yours with data.fields={messages: COLUMN}"
        )
    turns = item[column]
    if not isinstance(turns, list) or not turns:
        kind = "an empty list" if turns == [] else json_kind(turns)
        raise place.error(f"field {column!r} is {kind}, not a list of turns; write them as {SHAPE}")
    keys = {k: v for k, v in (place.mapping or {}).items() if k in ("role", "content")}
    form = FORMATS[place.format if place.format != "auto" else detected(turns[0], keys)]
    keys = {getattr(form, ours): theirs for ours, theirs in keys.items()}  # this format's key: the file's
    turns = [renamed(turn, keys, place.source, f"{place.where} turn {i}") for i, turn in enumerate(turns)]
    messages = [read_turn(turn, i, form, place) for i, turn in enumerate(turns)]
    check_order(messages, place, ending)
    return messages


def detected(first: Any, keys: Mapping[str, str]) -> Literal["openai", "sharegpt"]:
    """The record's format by its first turn's keys: `from` without `role` is ShareGPT, else OpenAI (what
    read_turn then checks); keys named in data.fields are OpenAI's unless data.format says otherwise."""
    if isinstance(first, dict) and not keys and "from" in first and "role" not in first:
        return "sharegpt"
    return "openai"


def read_turn(turn: Any, index: int, form: TurnFormat, place: Place) -> Message:
    """One turn as a message with our role name; one line for a missing key, unknown role or bad text."""
    at = f"turn {index}"
    if not isinstance(turn, dict):
        raise place.error(f"{at} is {json_kind(turn)}, not an object; write each turn as {SHAPE}")
    for key in (form.role, form.content):
        if key not in turn:
            raise place.error(
                f"{at} has no {key!r} key{columns_of(turn)}; write it, set data.format, or name yours "
                f"with data.fields={{{'role' if key == form.role else 'content'}: KEY}}"
            )
    role, content = turn[form.role], turn[form.content]
    if role not in form.roles:
        raise place.error(f"{at} role {role!r} is not one of {', '.join(form.roles)}; use one of them")
    if not isinstance(content, str):
        raise place.error(f"{at} content is {json_kind(content)}, not a string; make it a string")
    if not content.strip():
        raise place.error(f"{at} ({role}) is empty; write its text or remove the turn")
    return {"role": form.roles[role], "content": content}


def check_order(messages: list[Message], place: Place, ending: str) -> None:
    """An optional leading system message, then user and assistant alternating, ending with `ending`."""
    for i, message in enumerate(messages):
        expected = "user" if (i - (messages[0]["role"] == "system")) % 2 == 0 else "assistant"
        if message["role"] == "system" and i > 0:
            raise place.error(f"turn {i} is a system message after the first turn; move it to the start")
        if message["role"] != expected and message["role"] != "system":
            previous = messages[i - 1]["role"] if i else None
            problem = (
                f"is a second {message['role']} turn in a row"
                if previous == message["role"]
                else f"is an {message['role']} turn before any user turn"
            )
            raise place.error(f"turn {i} {problem}; user and assistant turns alternate, starting with user")
    if not any(m["role"] == "assistant" for m in messages) and ending == "assistant":
        raise place.error("has no assistant turn; add the answer to learn")
    if messages[-1]["role"] != ending:
        what = "an answer to learn" if ending == "assistant" else "the user turn the pair answers"
        last = messages[-1]["role"]
        article = "an" if last == "assistant" else "a"
        raise place.error(f"ends with {article} {last} turn (turn {len(messages) - 1}); end it with {what}")
