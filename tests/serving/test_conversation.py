"""Chat messages become the run's training prompt; bad conversations are refused in one line."""

from __future__ import annotations

import pytest

from gpt_finetune.data.prompts import PROMPT_STYLES, format_prompt
from gpt_finetune.errors import UserError
from gpt_finetune.serving.conversation import cut_at_stop, render_messages, stop_prefix_held


@pytest.mark.parametrize("style", sorted(PROMPT_STYLES))
def test_one_user_message_is_the_training_prompt(style: str) -> None:
    text = 'Rewrite the sentence: it rains, "a lot".'
    expected = format_prompt({"instruction": text, "input": ""}, style)
    assert render_messages([{"role": "user", "content": text}], style) == expected


def test_alpaca_conversation_golden() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Red."},
        {"role": "user", "content": "Another?"},
    ]
    preamble = (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request."
    )
    assert render_messages(messages, "alpaca") == (
        "Be brief.\n\n"
        f"{preamble}\n\n### Instruction:\nName a colour.\n\n### Response:\nRed.<|endoftext|>"
        f"{preamble}\n\n### Instruction:\nAnother?\n\n### Response:\n"
    )


def test_phi3_conversation_golden() -> None:
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "2+2?"},
    ]
    assert render_messages(messages, "phi3") == (
        "<|user|>\nHi\n<|assistant|>:\nHello.<|endoftext|><|user|>\n2+2?\n<|assistant|>:\n"
    )


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ([], "messages is empty"),
        ([{"role": "robot", "content": "x"}], "messages[0].role='robot'"),
        ([{"role": "user", "content": 3}], "messages[0].content must be a string"),
        ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "only come first"),
        ([{"role": "assistant", "content": "a"}], "turn 0 is 'assistant'"),
        ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "turn 1 is 'user'"),
        ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "last message"),
        ([{"role": "system", "content": "s"}], "last message"),
        ([{"role": "user", "content": "  "}], "last user message is empty"),
    ],
)
def test_bad_conversations_are_refused_in_one_line(messages: list, message: str) -> None:
    with pytest.raises(UserError, match=None) as raised:
        render_messages(messages, "alpaca")
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_unknown_style_is_refused() -> None:
    with pytest.raises(UserError, match="unknown prompt style 'vicuna'"):
        render_messages([{"role": "user", "content": "a"}], "vicuna")


def test_stop_strings() -> None:
    assert cut_at_stop("answer ### more ## x", ["##", "###"]) == ("answer ", True)
    assert cut_at_stop("answer", ["###"]) == ("answer", False)
    assert cut_at_stop("answer", [""]) == ("answer", False)
    assert stop_prefix_held("the end #", ["###"]) == 1
    assert stop_prefix_held("the end ##", ["###", "#!"]) == 2
    assert stop_prefix_held("the end", ["###"]) == 0
