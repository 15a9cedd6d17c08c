"""Conversations rendered as the text and tokens a run trains on and answers from: the one rule.

The rule, which training, chat.py, serve.py, the exported chat template and the Modelfile
follow (tests hold them equal): a conversation is an optional leading system message, then user and
assistant turns alternating. The system message is its text and a blank line; a user turn is the prompt
style's prompt around its content (an instruction with no input), ending where the answer begins; an
assistant turn is its text and `<|endoftext|>`, so a model learns to end every turn. A prompt ends with a
user turn; one user message is exactly the prompt instruction data trains on
(`format_prompt({"instruction": content})`).

As tokens, the text is encoded in pieces: the context since the last turn's end (system and user text) is
one piece, each assistant text another, and each turn's end the single token 50256. A prompt is then
token for token the start of the training example it begins (text that spells `<|endoftext|>` stays text).
`export/` writes the same rule as a Jinja chat template and a Go template; `serving/conversation.py`
hands it to chat.py and serve.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from gpt_finetune.data.prompts import prompt_style
from gpt_finetune.errors import UserError
from gpt_finetune.tokenizer import END_OF_TEXT, END_OF_TEXT_STRING, gpt2_tokenizer

TURN_SEPARATOR = "\n\n"  # after the system message
END_OF_TURN = END_OF_TEXT_STRING  # after each assistant turn
ROLES = ("system", "user", "assistant")
TrainOn = Literal["all_assistant", "last_assistant"]
TRAIN_ON: tuple[TrainOn, ...] = ("all_assistant", "last_assistant")


def check_messages(messages: Sequence[Mapping[str, object]], ending: str = "user") -> None:
    """Raise a one-line UserError unless `messages` is a conversation `render_messages` can render (one
    that ends with a user turn; with `ending="assistant"`, a whole conversation to train on)."""
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
    if ending == "assistant":
        if not turns or turns[-1] != "assistant":
            raise UserError("the last message must be an assistant message (the answer to learn)")
        return
    if not turns or turns[-1] != "user":
        raise UserError("the last message must be a user message (the one to answer)")
    if not str(messages[-1]["content"]).strip():
        raise UserError("the last user message is empty; send a question or an instruction")


@dataclass(frozen=True)
class Piece:
    """A stretch of a rendered conversation: context (system and user text), or an assistant's text,
    which the end of its turn follows."""

    text: str
    answer: bool


def pieces(messages: Sequence[Mapping[str, object]], style: str) -> list[Piece]:
    """The rendered conversation in pieces (see the module docstring); `messages` already checked."""
    render = prompt_style(style)
    found: list[Piece] = []
    context = ""
    for message in messages:
        content = str(message["content"])
        if message["role"] == "system":
            context += content + TURN_SEPARATOR
        elif message["role"] == "user":
            context += render(content, "")
        else:
            found += [Piece(context, answer=False), Piece(content, answer=True)]
            context = ""
    return [*found, Piece(context, answer=False)] if context else found


def joined(found: Sequence[Piece]) -> str:
    return "".join(piece.text + (END_OF_TURN if piece.answer else "") for piece in found)


def render_messages(messages: Sequence[Mapping[str, object]], style: str) -> str:
    """The prompt text for `messages` in prompt style `style`, ending where the answer begins."""
    check_messages(messages)
    return joined(pieces(messages, style))


def render_conversation(messages: Sequence[Mapping[str, object]], style: str) -> str:
    """A whole conversation, ending with an assistant turn, as the text trained on."""
    check_messages(messages, ending="assistant")
    return joined(pieces(messages, style))


def prompt_tokens(messages: Sequence[Mapping[str, object]], style: str) -> list[int]:
    """`render_messages` as tokens: what a model answering `messages` reads."""
    check_messages(messages)
    return conversation_tokens(pieces(messages, style), "all_assistant")[0]


def training_tokens(
    messages: Sequence[Mapping[str, object]], style: str, train_on: TrainOn = "all_assistant"
) -> tuple[list[int], list[bool]]:
    """(tokens, learned) of a whole conversation: the tokens of each assistant turn's text and of the
    end-of-text after it are learned (`last_assistant`: the last turn's only); system and user tokens
    never are."""
    check_messages(messages, ending="assistant")
    return conversation_tokens(pieces(messages, style), train_on)


def conversation_tokens(found: Sequence[Piece], train_on: TrainOn) -> tuple[list[int], list[bool]]:
    """The pieces encoded one by one, an end-of-text token after each answer, and which tokens are learned."""
    tokenizer = gpt2_tokenizer()
    last_answer = max((i for i, piece in enumerate(found) if piece.answer), default=-1)
    tokens: list[int] = []
    learned: list[bool] = []
    for i, piece in enumerate(found):
        ids = tokenizer.encode(piece.text, disallowed_special=())
        if piece.answer:
            ids.append(END_OF_TEXT)
        tokens += ids
        learned += [piece.answer and (train_on == "all_assistant" or i == last_answer)] * len(ids)
    return tokens, learned
