"""Conversation records: OpenAI's and ShareGPT's formats read alike, `data.format` and `data.fields`, a
one-line error for each kind of bad file, splits shaped as instruction records, test responses."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from gpt_finetune.data.conversation_datamodule import ConversationDataModule
from gpt_finetune.data.conversation_prompts import prompt_tokens
from gpt_finetune.data.conversations import load_conversations, whole
from gpt_finetune.errors import UserError
from gpt_finetune.evaluation.responses import generate_responses
from gpt_finetune.model import GPT, GPTConfig
from gpt_finetune.tokenizer import END_OF_TEXT, gpt2_tokenizer

OPENAI = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Red."},
    {"role": "user", "content": "Another?"},
    {"role": "assistant", "content": "Blue."},
]
SHAREGPT = [
    {"from": {"user": "human", "assistant": "gpt"}.get(m["role"], m["role"]), "value": m["content"]}
    for m in OPENAI
]
EXPECTED = {"messages": OPENAI[:-1], "instruction": "Another?", "input": "", "output": "Blue."}


def write_jsonl(path: Path, records: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def user_error(call: object, *args: object, **kwargs: object) -> str:
    with pytest.raises(UserError) as caught:
        call(*args, **kwargs)  # type: ignore[operator]
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_openai_and_sharegpt_records_read_alike(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "mixed.jsonl", [{"messages": OPENAI}, {"conversations": SHAREGPT}])
    assert load_conversations(path) == [EXPECTED, EXPECTED]
    array = tmp_path / "sharegpt.json"
    array.write_text(json.dumps([{"id": 7, "conversations": SHAREGPT}]), encoding="utf-8")
    assert load_conversations(array, format="sharegpt") == [EXPECTED]
    assert whole(EXPECTED) == OPENAI


def test_fields_name_the_files_own_keys(tmp_path: Path) -> None:
    turns = [{"speaker": m["role"], "text": m["content"]} for m in OPENAI]
    path = write_jsonl(tmp_path / "own.jsonl", [{"dialog": turns}])
    mapping = {"messages": "dialog", "role": "speaker", "content": "text"}
    assert load_conversations(path, mapping=mapping) == [EXPECTED]
    sharegpt_keys = [{"who": t["from"], "text": t["value"]} for t in SHAREGPT]
    path = write_jsonl(tmp_path / "own-sharegpt.jsonl", [{"chat": sharegpt_keys}])
    mapping = {"messages": "chat", "role": "who", "content": "text"}
    assert load_conversations(path, format="sharegpt", mapping=mapping) == [EXPECTED]


def turns(*pairs: tuple[str, object]) -> dict[str, object]:
    return {"messages": [{"role": role, "content": content} for role, content in pairs]}


BAD = {  # record 1 of each file is bad; (its record, what the one-line error says)
    "two users in a row": (
        turns(("user", "a"), ("user", "b"), ("assistant", "c")),
        "line 2 turn 1 is a second user turn in a row; user and assistant turns alternate",
    ),
    "empty content": (
        turns(("user", "a"), ("assistant", "  ")),
        "line 2 turn 1 (assistant) is empty; write its text",
    ),
    "number content": (
        turns(("user", 3), ("assistant", "b")),
        "line 2 turn 0 content is a number, not a string; make it a string",
    ),
    "unknown role": (
        turns(("user", "a"), ("bot", "b")),
        "line 2 turn 1 role 'bot' is not one of system, user, assistant; use one of them",
    ),
    "no assistant turn": (
        turns(("system", "s"), ("user", "a")),
        "line 2 has no assistant turn; add the answer",
    ),
    "system after the first turn": (
        turns(("user", "a"), ("system", "s"), ("assistant", "b")),
        "line 2 turn 1 is a system message after the first turn; move it to the start",
    ),
    "assistant first": (
        turns(("assistant", "a"), ("user", "b"), ("assistant", "c")),
        "line 2 turn 0 is an assistant turn before any user turn",
    ),
    "ends with a user turn": (
        turns(("user", "a"), ("assistant", "b"), ("user", "c")),
        "line 2 ends with a user turn (turn 2); end it with an answer to learn",
    ),
    "no messages": (
        {"dialog": OPENAI},
        "line 2 has no 'messages' (or 'conversations') field (its columns: dialog); "
        "name yours with data.fields={messages: COLUMN}",
    ),
    "messages not a list": (
        {"messages": "hello"},
        "line 2 field 'messages' is a string, not a list of turns",
    ),
    "no turns": ({"messages": []}, "line 2 field 'messages' is an empty list, not a list of turns"),
    "turn not an object": (
        {"messages": ["hi", {"role": "assistant", "content": "b"}]},
        "line 2 turn 0 is a string, not an object",
    ),
    "sharegpt keys in an openai file": (
        {"messages": [{"role": "user", "content": "a"}, {"from": "gpt", "value": "b"}]},
        "line 2 turn 1 has no 'role' key (its columns: from, value); write it, set data.format",
    ),
    "unknown sharegpt role": (
        {"conversations": [{"from": "human", "value": "a"}, {"from": "bot", "value": "b"}]},
        "line 2 turn 1 role 'bot' is not one of system, human, gpt",
    ),
    "record not an object": (["a"], "line 2 is an array, not an object"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_conversation_is_one_line_naming_file_record_turn_and_fix(tmp_path: Path, case: str) -> None:
    record, expected = BAD[case]
    path = write_jsonl(tmp_path / "chats.jsonl", [{"messages": OPENAI}, record])
    message = user_error(load_conversations, path)
    assert message == f"{path}: {expected}" or message.startswith(f"{path}: {expected}"), message


def test_settings_are_checked_before_any_work() -> None:
    message = user_error(ConversationDataModule, path=None, format="vicuna", train_on="some")
    assert "data.path is not set" in message
    assert "data.format=vicuna is not one of auto, openai, sharegpt" in message
    assert "data.train_on=some is not one of all_assistant, last_assistant" in message
    assert "data.fields: 'text' is not a field of conversation data" in user_error(
        ConversationDataModule, path="x.jsonl", fields={"text": "body"}
    )


def test_splits_hold_the_context_and_test_responses_answer_it(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "chats.jsonl", [{"messages": OPENAI}] * 20)
    data = ConversationDataModule(path=str(path), style="phi3", batch_size=4)
    data.setup("test")
    assert [len(part) for part in data.splits.values()] == [17, 2, 1]
    assert data.splits["test"][0] == EXPECTED
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_size("tiny", context_length=128)).eval()
    responses = generate_responses(model, data.splits["test"], "phi3", max_new_tokens=3)
    tokens = model.generate([prompt_tokens(EXPECTED["messages"], "phi3")], max_new_tokens=3)[0]
    answer = gpt2_tokenizer().decode([t for t in tokens if t != END_OF_TEXT]).strip()
    assert responses[0] == {**EXPECTED, "model_response": answer, "stopped": tokens[-1:] == [END_OF_TEXT]}


def test_two_ranks_share_the_conversations_of_one_global_order(tmp_path: Path) -> None:
    chats = [turns(("user", f"question {i}"), ("assistant", "answer " * (1 + i % 5))) for i in range(30)]
    path = write_jsonl(tmp_path / "chats.jsonl", chats)

    def rank_rows(world: int, rank: int) -> list[tuple[int, ...]]:
        """The conversations (their input ids, padding off) rank `rank` of `world` trains on, in order."""
        data = ConversationDataModule(path=str(path), style="phi3", batch_size=6 // world, train_fraction=0.8)
        data.trainer = SimpleNamespace(world_size=world, global_rank=rank)  # type: ignore[assignment]
        data.setup("fit")
        rows = [row.tolist() for batch in data.train_dataloader() for row in batch["input_ids"]]
        return [tuple(t for t in row if t != END_OF_TEXT) for row in rows]

    one, first, second = rank_rows(1, 0), rank_rows(2, 0), rank_rows(2, 1)
    assert len(one) == 24 and len(set(one)) == 24  # the 24 train conversations, each once
    assert len(first) == len(second) == 12 and not set(first) & set(second)
    for step in range(4):  # each global batch of 6 is the two ranks' batches of 3
        assert sorted(one[6 * step : 6 * step + 6]) == sorted(
            first[3 * step : 3 * step + 3] + second[3 * step : 3 * step + 3]
        )
