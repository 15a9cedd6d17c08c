"""Chat messages rendered as the prompt a run was trained on, and decoded text cut at stop strings.

A conversation is an optional leading system message, then user and assistant turns alternating and
ending with a user turn. Each user turn is rendered with the prompt style as an instruction with no
input; an assistant turn is the text that followed it; turns are joined by a blank line, and the system
message, when given, comes first, followed by a blank line. One user message is exactly the prompt the
model was trained on (`format_prompt({"instruction": content})`). `export/` writes the same rule as a
Jinja chat template; a test holds the two equal.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from gpt_finetune.data.prompts import prompt_style
from gpt_finetune.errors import UserError

TURN_SEPARATOR = "\n\n"
ROLES = ("system", "user", "assistant")


def check_messages(messages: Sequence[Mapping[str, object]]) -> None:
    """Raise a one-line UserError unless `messages` is a conversation `render_messages` can render."""
    if not messages:
        raise UserError("messages is empty; send at least one user message")
    for i, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise UserError(f"messages[{i}].role={role!r}; use one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise UserError(f"messages[{i}].content must be a string")
        if role == "system" and i != 0:
            raise UserError(f"messages[{i}]: a system message may only come first")
    turns = [m["role"] for m in messages if m["role"] != "system"]
    for i, role in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            raise UserError(f"turn {i} is {role!r}, expected {expected!r}: user and assistant alternate")
    if not turns or turns[-1] != "user":
        raise UserError("the last message must be a user message (the one to answer)")
    if not str(messages[-1]["content"]).strip():
        raise UserError("the last user message is empty; send a question or an instruction")


def render_messages(messages: Sequence[Mapping[str, object]], style: str) -> str:
    """The prompt text for `messages` in prompt style `style`, ending where the answer begins."""
    check_messages(messages)
    render = prompt_style(style)
    parts: list[str] = []
    for message in messages:
        content = str(message["content"])
        if message["role"] == "user":
            parts.append(render(content, ""))
        else:  # system (first) or assistant: its text, then a blank line before the next turn
            parts.append(content + TURN_SEPARATOR)
    return "".join(parts)


def stop_strings(style: str) -> list[str]:
    """Where an answer ends in `style`: the first and last lines of a user turn's opening (alpaca's
    preamble line and `### Instruction:`), the text a model writes when it starts the next turn itself.
    chat.py, the server's chat completions and the exported Modelfile's `PARAMETER stop` all use these."""
    opening = prompt_style(style)("\0", "").split("\0")[0]
    lines = [line.strip() for line in opening.splitlines() if line.strip()]
    return list(dict.fromkeys([lines[0], lines[-1]])) if lines else []


def cut_at_stop(text: str, stops: Iterable[str]) -> tuple[str, bool]:
    """`text` up to the first of `stops` (excluded), and whether one was found."""
    positions = [text.find(stop) for stop in stops if stop and stop in text]
    if not positions:
        return text, False
    return text[: min(positions)], True


def stop_prefix_held(text: str, stops: Iterable[str]) -> int:
    """How many trailing characters of `text` could begin a stop string (hold them back when streaming)."""
    held = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:n]):
                held = max(held, n)
                break
    return held
