"""The run's prompt style as a Jinja chat template, the rule of `serving.conversation.render_messages`.

A user turn is the style's prompt around the content (instruction, empty input); the text before and
after the content comes from rendering the style itself, so the template cannot drift from `prompts.py`.
"""

from __future__ import annotations

import json

from gpt_finetune.data.conversation_prompts import END_OF_TURN, TURN_SEPARATOR
from gpt_finetune.data.prompts import prompt_style

_MARK = "\x00content\x00"  # stands for the content while the style is rendered; no style contains it


def user_turn(style: str) -> tuple[str, str]:
    """(text before, text after) the content of a user turn in `style`; the latter begins the answer."""
    before, after = prompt_style(style)(_MARK, "").split(_MARK)
    return before, after


def _literal(text: str) -> str:
    """`text` as a Jinja string literal (Jinja reads JSON's escapes: \\n, \\", \\uXXXX)."""
    return json.dumps(text)


def chat_template(style: str) -> str:
    """A Jinja template that renders exactly what `render_messages(messages, style)` returns.

    With `add_generation_prompt=false` a conversation ending in a user turn stops before the text that
    begins the answer (alpaca's `### Response:`); `true` adds it, as `render_messages` always does; one
    ending with an assistant turn (a training example) is `render_conversation`'s text, ending with
    `<|endoftext|>`. Unknown roles, a system message after the first and turns out of order raise, as
    `render_messages` refuses them.
    """
    before, after = user_turn(style)
    separator, end_of_turn = _literal(TURN_SEPARATOR), _literal(END_OF_TURN)
    return (
        "{%- set turns = namespace(count=0) -%}"
        "{%- for message in messages -%}"
        "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
        "{{ raise_exception('roles are system, user and assistant') }}"
        "{%- elif message['role'] == 'system' -%}"
        "{%- if not loop.first -%}{{ raise_exception('a system message may only come first') }}{%- endif -%}"
        "{{ message['content'] + " + separator + " }}"
        "{%- elif (message['role'] == 'user') != (turns.count % 2 == 0) -%}"
        "{{ raise_exception('user and assistant turns alternate, starting with user') }}"
        "{%- elif message['role'] == 'user' -%}"
        "{{ " + _literal(before) + " + message['content'] }}"
        "{%- if not loop.last or add_generation_prompt -%}{{ " + _literal(after) + " }}{%- endif -%}"
        "{%- else -%}"
        "{{ message['content'] + " + end_of_turn + " }}"
        "{%- endif -%}"
        "{%- if message['role'] != 'system' -%}{%- set turns.count = turns.count + 1 -%}{%- endif -%}"
        "{%- endfor -%}"
    )
