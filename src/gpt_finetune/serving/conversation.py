"""What chat.py and serve.py take from the conversation rule (`data/conversation_prompts.py`: training,
chat.py, serve.py, the exported chat template and the Modelfile render a conversation alike), and decoded
text cut at stop strings.
"""

from __future__ import annotations

from collections.abc import Iterable

from gpt_finetune.data.conversation_prompts import (
    END_OF_TURN,
    ROLES,
    TURN_SEPARATOR,
    check_messages,
    prompt_tokens,
    render_conversation,
    render_messages,
)
from gpt_finetune.data.prompts import prompt_style

__all__ = [
    "END_OF_TURN",
    "ROLES",
    "TURN_SEPARATOR",
    "check_messages",
    "cut_at_stop",
    "prompt_tokens",
    "render_conversation",
    "render_messages",
    "stop_prefix_held",
    "stop_strings",
]


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
