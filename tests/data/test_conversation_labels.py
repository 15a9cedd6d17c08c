"""Golden label masks: a three-turn conversation with a system message learns each assistant turn's tokens
and the end-of-text that closes it, in every prompt style, and never a system or user token."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from gpt_finetune.data.collate import IGNORE_INDEX
from gpt_finetune.data.conversation_datamodule import ConversationDataModule, fit_conversation
from gpt_finetune.data.packing import collate_packed
from gpt_finetune.tokenizer import END_OF_TEXT, gpt2_tokenizer

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Red."},
    {"role": "user", "content": "Another?"},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "And a third?"},
    {"role": "assistant", "content": "Green."},
]
ANSWERS = [[7738, 13, END_OF_TEXT], [14573, 13, END_OF_TEXT], [13719, 13, END_OF_TEXT]]  # Red. Blue. Green.
PREAMBLE = "Below is an instruction that describes a task. " + (
    "Write a response that appropriately completes the request."
)
CONTEXTS = {  # the text before each answer, written out: system + first user turn, then each next user turn
    "alpaca": [
        f"Be brief.\n\n{PREAMBLE}\n\n### Instruction:\nName a colour.\n\n### Response:\n",
        f"{PREAMBLE}\n\n### Instruction:\nAnother?\n\n### Response:\n",
        f"{PREAMBLE}\n\n### Instruction:\nAnd a third?\n\n### Response:\n",
    ],
    "phi3": [
        "Be brief.\n\n<|user|>\nName a colour.\n<|assistant|>:\n",
        "<|user|>\nAnother?\n<|assistant|>:\n",
        "<|user|>\nAnd a third?\n<|assistant|>:\n",
    ],
    "chatml": [
        "Be brief.\n\n<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>user\nAnother?<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>user\nAnd a third?<|im_end|>\n<|im_start|>assistant\n",
    ],
}


def golden(style: str, learned_turns: tuple[int, ...]) -> tuple[list[int], list[int]]:
    """(tokens, targets) written from CONTEXTS and ANSWERS: each target is the next token where that token
    belongs to a learned answer, else ignored."""
    encode = gpt2_tokenizer().encode
    tokens: list[int] = []
    learned: list[bool] = []
    for turn, (context, answer) in enumerate(zip(CONTEXTS[style], ANSWERS, strict=True)):
        tokens += encode(context) + answer
        learned += [False] * len(encode(context)) + [turn in learned_turns] * len(answer)
    targets = [t if keep else IGNORE_INDEX for t, keep in zip(tokens[1:], learned[1:], strict=True)]
    return tokens, targets


def data_module(tmp_path: Path, conversations: list[list[dict[str, str]]], **settings: object):
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in conversations), encoding="utf-8")
    data = ConversationDataModule(path=str(path), train_fraction=0.5, test_fraction=0.25, **settings)
    data.setup("fit")
    return data


@pytest.mark.parametrize("style", sorted(CONTEXTS))
@pytest.mark.parametrize(
    ("train_on", "learned_turns"), [("all_assistant", (0, 1, 2)), ("last_assistant", (2,))]
)
def test_golden_label_mask(tmp_path: Path, style: str, train_on: str, learned_turns: tuple[int, ...]) -> None:
    tokens, targets = golden(style, learned_turns)
    data = data_module(tmp_path, [CONVERSATION] * 4, style=style, train_on=train_on)
    batch = data.collate([data.datasets["train"][0]])
    assert batch["input_ids"][0].tolist() == tokens[:-1]  # the last end-of-text is only a target
    assert batch["targets"][0].tolist() == targets
    learned = [t for t in targets if t != IGNORE_INDEX]
    assert learned == [t for turn in learned_turns for t in ANSWERS[turn]]  # answers and their ends only


def test_a_long_conversation_drops_its_oldest_exchanges_and_keeps_the_system_message() -> None:
    whole = fit_conversation(CONVERSATION, "phi3", "all_assistant", None)
    last_two = [CONVERSATION[0], *CONVERSATION[3:]]  # system, then the second and third exchanges
    two = fit_conversation(last_two, "phi3", "all_assistant", None)
    fitted = fit_conversation(CONVERSATION, "phi3", "all_assistant", len(two.inputs))
    assert len(whole.inputs) > len(two.inputs)
    assert (fitted.inputs, fitted.targets, fitted.dropped, fitted.cut) == (two.inputs, two.targets, 1, False)
    assert gpt2_tokenizer().decode(fitted.inputs).startswith("Be brief.\n\n<|user|>\nAnother?")
    # Too long even as the system message and the last exchange: kept whole here, cut by the collate.
    last = fit_conversation(CONVERSATION, "phi3", "all_assistant", 5)
    assert (last.dropped, last.cut) == (2, True)


def test_max_length_shortening_is_counted_in_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    short = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    with caplog.at_level(logging.WARNING, logger="gpt_finetune.data.conversation_datamodule"):
        data = data_module(tmp_path, [CONVERSATION, short, CONVERSATION, short], style="phi3", max_length=40)
    assert "2 of 4 conversations are longer than max_length=40 tokens" in caplog.text
    assert "0 still cut at max_length" in caplog.text
    assert all(len(inputs) <= 40 for ds in data.datasets.values() for inputs, _ in ds.items)


def test_packed_rows_learn_what_each_conversation_learns_alone(tmp_path: Path) -> None:
    short = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    data = data_module(tmp_path, [CONVERSATION, short] * 4, style="chatml", packing=True, batch_size=1)
    train = data.datasets["train"]
    for row in (train[i] for i in range(len(train))):
        packed = collate_packed([row], max_length=data.hparams.max_length)
        alone = [data.collate([item]) for item in row]
        assert torch.equal(packed["targets"][0], torch.cat([a["targets"][0] for a in alone]))
        assert torch.equal(packed["input_ids"][0], torch.cat([a["input_ids"][0] for a in alone]))
