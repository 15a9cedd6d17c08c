"""The ollama Modelfile: its Go TEMPLATE, rendered for a conversation, is exactly `render_messages`.

ollama runs the template with Go's text/template; `render_go` below implements the part of it the
Modelfile uses (fields, `if` / `else` / `end`, `range`, `eq`), and refuses anything else.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from gpt_finetune.data.prompts import PROMPT_STYLES
from gpt_finetune.export.modelfile import modelfile, ollama_commands
from gpt_finetune.serving.conversation import render_messages

ACTION = re.compile(r"{{(.*?)}}", re.DOTALL)
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Red."},
    {"role": "user", "content": 'And "another" one?\n(é)'},
]


def render_go(template: str, data: dict[str, Any]) -> str:
    """`template` executed on `data` as Go's text/template would, for fields, if/else/end, range and eq."""
    pieces = ACTION.split(template)  # text, action, text, action, ...
    out, _ = _run(pieces, 0, [data])
    return out


def _value(expression: str, scopes: list[dict[str, Any]]) -> Any:
    words = expression.split()
    if words[0] == "eq":
        return _value(words[1], scopes) == words[2].strip('"')
    assert len(words) == 1 and words[0].startswith("."), f"unsupported expression {expression!r}"
    return scopes[-1].get(words[0][1:], "")


def _run(pieces: list[str], i: int, scopes: list[dict[str, Any]], active: bool = True) -> tuple[str, int]:
    """Execute from `pieces[i]` to the matching end/else; return (output, index after it)."""
    out = []
    while i < len(pieces):
        if i % 2 == 0:
            out.append(pieces[i] if active else "")
            i += 1
            continue
        action = pieces[i].strip()
        assert not pieces[i].startswith("-") and not pieces[i].endswith("-"), "no whitespace trimming"
        if action in ("end", "else") or action.startswith("else "):
            return "".join(out), i
        if action.startswith(("if ", "range ")):
            keyword, expression = action.split(" ", 1)
            if keyword == "if":
                taken = active and bool(_value(expression, scopes))
                body, i = _run(pieces, i + 1, scopes, taken)
                out.append(body)
                if pieces[i].strip() == "else":
                    body, i = _run(pieces, i + 1, scopes, active and not taken)
                    out.append(body)
            else:
                items = _value(expression, scopes) if active else []
                start = i + 1
                _, i = _run(pieces, start, scopes, False)  # find the end
                for item in items:
                    body, _ = _run(pieces, start, [*scopes, item], True)
                    out.append(body)
            assert pieces[i].strip() == "end", f"expected end, got {pieces[i]!r}"
            i += 1
            continue
        out.append(str(_value(action, scopes)) if active else "")
        i += 1
    return "".join(out), i


def template_of(text: str) -> str:
    found = re.search(r'^TEMPLATE """(.*?)"""$', text, re.DOTALL | re.MULTILINE)
    assert found is not None
    return found.group(1)


@pytest.mark.parametrize("style", sorted(PROMPT_STYLES))
def test_template_renders_the_chat_conversation_as_render_messages(style: str) -> None:
    template = template_of(modelfile(style, 1024))
    messages = [{"Role": m["role"], "Content": m["content"]} for m in CONVERSATION]
    assert render_go(template, {"Messages": messages}) == render_messages(CONVERSATION, style)
    one_turn = CONVERSATION[1:2]
    assert render_go(template, {"Messages": [{"Role": "user", "Content": one_turn[0]["content"]}]}) == (
        render_messages(one_turn, style)
    )


@pytest.mark.parametrize("style", sorted(PROMPT_STYLES))
def test_template_renders_a_bare_prompt_with_and_without_a_system_message(style: str) -> None:
    template = template_of(modelfile(style, 1024))
    system, user = CONVERSATION[0], CONVERSATION[3]
    assert render_go(template, {"Prompt": user["content"]}) == render_messages([user], style)
    assert render_go(template, {"Prompt": user["content"], "System": system["content"]}) == (
        render_messages([system, user], style)
    )


ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)
STOP_LINES = {  # end-of-text, and where the style opens the next user turn (as chat.py and serve.py stop)
    "alpaca": ["<|endoftext|>", ALPACA_PREAMBLE, "### Instruction:"],
    "phi3": ["<|endoftext|>", "<|user|>"],
    "chatml": ["<|endoftext|>", "<|im_start|>user"],
}


@pytest.mark.parametrize("style", sorted(STOP_LINES))
def test_modelfile_points_at_the_gguf_and_stops_where_chat_and_serve_stop(style: str) -> None:
    lines = modelfile(style, 512).splitlines()
    assert lines[0] == "FROM ./model.gguf"
    assert [line for line in lines if line.startswith("PARAMETER stop ")] == [
        f'PARAMETER stop "{stop}"' for stop in STOP_LINES[style]
    ]
    assert "PARAMETER num_ctx 512" in lines
    assert "PARAMETER temperature 0" in lines


def test_ollama_commands_create_then_run() -> None:
    assert ollama_commands("my-run", Path("/x/out")) == [
        "ollama create my-run -f /x/out/Modelfile",
        "ollama run my-run",
    ]
