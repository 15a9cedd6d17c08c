"""An ollama Modelfile for the exported GGUF: its prompt template in the run's style, stop token, settings.

The Go template follows `serving.conversation.render_messages`: with `.Messages` (ollama's chat API) a
system message is its text and a blank line, a user turn is the style's prompt around the content, an
assistant turn is its text and `<|endoftext|>`; without (a bare `.Prompt`, optional `.System`) it is the
one-turn case. It uses no whitespace trimming (`{{-`), so every character outside the actions is literal.
"""

from __future__ import annotations

from pathlib import Path

from gpt_finetune.data.conversation_prompts import END_OF_TURN, TURN_SEPARATOR
from gpt_finetune.errors import UserError
from gpt_finetune.export.chat_template import user_turn
from gpt_finetune.serving.conversation import stop_strings
from gpt_finetune.tokenizer import END_OF_TEXT_STRING

GGUF_NAME = "model.gguf"


def go_template(style: str) -> str:
    """The ollama TEMPLATE text for prompt style `style`."""
    before, after = user_turn(style)
    if "{{" in before + after or '"""' in before + after:
        raise UserError(f"prompt style {style!r} holds '{{{{' or '\"\"\"', which a Modelfile cannot quote")
    return (
        "{{ if .Messages }}"
        "{{ range .Messages }}"
        f'{{{{ if eq .Role "user" }}}}{before}{{{{ .Content }}}}{after}'
        f'{{{{ else }}}}{{{{ .Content }}}}{{{{ if eq .Role "system" }}}}{TURN_SEPARATOR}'
        f"{{{{ else }}}}{END_OF_TURN}{{{{ end }}}}"
        "{{ end }}"
        "{{ end }}"
        "{{ else }}"
        f"{{{{ if .System }}}}{{{{ .System }}}}{TURN_SEPARATOR}{{{{ end }}}}"
        f"{before}{{{{ .Prompt }}}}{after}"
        "{{ end }}"
    )


def modelfile(style: str, context_length: int) -> str:
    """The Modelfile beside `model.gguf`: greedy answers, at most the model's context; stops at EOS and
    where the style opens the next user turn (`conversation.stop_strings`, as chat.py and serve.py do)."""
    stops = [END_OF_TEXT_STRING, *stop_strings(style)]
    if any('"' in stop for stop in stops):
        raise UserError(f"prompt style {style!r} has a stop string with '\"', which a Modelfile cannot quote")
    stop_lines = "".join(f'PARAMETER stop "{stop}"\n' for stop in stops)
    return (
        f"FROM ./{GGUF_NAME}\n"
        f'TEMPLATE """{go_template(style)}"""\n'
        f"{stop_lines}"
        "PARAMETER temperature 0\n"  # greedy, as chat.py and serve.py answer by default
        f"PARAMETER num_ctx {context_length}\n"  # positions past GPT-2's context do not exist
    )


def ollama_commands(name: str, directory: Path) -> list[str]:
    """The two shell lines that register the export with ollama and chat with it."""
    return [f"ollama create {name} -f {directory / 'Modelfile'}", f"ollama run {name}"]
