"""Preference pairs after a conversation: `{"messages", "chosen", "rejected"}` or TRL's conversational shape,
rendered by the conversation rule; a batch learns each answer and its end-of-text, never the turns before."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpt_finetune.data.collate import IGNORE_INDEX
from gpt_finetune.data.conversation_prompts import prompt_tokens
from gpt_finetune.data.preference_datamodule import PreferenceDataModule, load_pairs
from gpt_finetune.errors import UserError
from gpt_finetune.tokenizer import END_OF_TEXT, gpt2_tokenizer

PROMPT = [
    {"role": "system", "content": "Be polite."},
    {"role": "user", "content": "My word is moon."},
    {"role": "assistant", "content": "Noted."},
    {"role": "user", "content": "Repeat my word."},
]
CHOSEN, REJECTED = "moon. Thank you.", "moon."
RECORD = {
    "messages": PROMPT,
    "instruction": "Repeat my word.",
    "input": "",
    "chosen": CHOSEN,
    "rejected": REJECTED,
}


def write_pairs(path: Path, records: list[object]) -> Path:
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def test_messages_and_trl_shapes_read_alike(tmp_path: Path) -> None:
    trl = {
        "prompt": PROMPT,
        "chosen": [{"role": "assistant", "content": CHOSEN}],
        "rejected": [{"role": "assistant", "content": REJECTED}],
    }
    ours = {"messages": PROMPT, "chosen": CHOSEN, "rejected": REJECTED}
    book = {"instruction": "Add.", "input": "2 + 2", "chosen": "It is 4.", "rejected": "4."}
    records = load_pairs(write_pairs(tmp_path / "pairs.json", [ours, trl, book]))
    assert records[0] == records[1] == {**RECORD, "output": CHOSEN}
    assert records[2] == {**book, "output": "It is 4."}  # instruction pairs in the same file


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (
            {"messages": PROMPT[:3], "chosen": "a", "rejected": "b"},
            "record 0 ends with an assistant turn (turn 2)",
        ),
        ({"messages": PROMPT, "chosen": "a"}, "record 0 field 'rejected' is missing, not a string"),
        (
            {"prompt": PROMPT, "chosen": [{"role": "user", "content": "a"}], "rejected": "b"},
            "record 0 field 'chosen' is an array, not a string",
        ),
        (
            {"messages": [{"role": "user", "content": ""}], "chosen": "a", "rejected": "b"},
            "record 0 turn 0 (user) is empty",
        ),
    ],
)
def test_bad_conversational_pairs_are_one_line(tmp_path: Path, record: dict, message: str) -> None:
    path = write_pairs(tmp_path / "pairs.json", [record])
    with pytest.raises(UserError) as caught:
        load_pairs(path)
    assert str(caught.value).startswith(f"{path}: {message}"), str(caught.value)


def test_a_batch_learns_each_answer_and_its_end_of_text_after_a_multi_turn_prompt(tmp_path: Path) -> None:
    path = write_pairs(
        tmp_path / "pairs.json", [{"messages": PROMPT, "chosen": CHOSEN, "rejected": REJECTED}] * 20
    )
    data = PreferenceDataModule(path=str(path), style="chatml", batch_size=2)
    data.setup("fit")
    prompt = prompt_tokens(PROMPT, "chatml")
    assert END_OF_TEXT in prompt  # the earlier answer's end: the collate must not keep that one
    _, chosen, rejected, prompt_length = data.datasets["train"][0]
    encode = gpt2_tokenizer().encode
    assert (chosen, rejected, prompt_length) == (
        prompt + encode(CHOSEN),
        prompt + encode(REJECTED),
        len(prompt),
    )
    batch = data.collate([data.datasets["train"][0]])
    for row, answer in zip(batch["targets"].tolist(), (CHOSEN, REJECTED), strict=True):
        assert [t for t in row if t != IGNORE_INDEX] == [*encode(answer), END_OF_TEXT]
