"""End to end: DPO on preference pairs after a multi-turn conversation learns the chosen style, as
test_dpo_learns does for instruction pairs, with its machinery: a tiny GPT tuned on conversations (a system
message, an exchange, then "repeat this word"), then DPO-tuned on pairs whose prompt is such a conversation
(its earlier answer's end-of-text inside) and whose chosen answer adds a courteous sentence."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import pytest
import torch
from test_dpo_learns import COURTESY, MODEL, STYLE, answers, preference_tune, records

from gpt_finetune.data.conversation_datamodule import ConversationDataModule
from gpt_finetune.tasks.instruct import InstructionTuning


def context(record: dict[str, str]) -> list[dict[str, str]]:
    """The conversation before the answer: a system message, an exchange, the instruction and its word."""
    return [
        {"role": "system", "content": "You repeat words."},
        {"role": "user", "content": "Hi."},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": f"{record['instruction']}\n{record['input']}"},
    ]


def shares(responses: list[dict[str, object]]) -> tuple[float, float]:
    """(share ending with the courteous sentence, share starting with the word: the rejected answer)."""
    styled = sum(str(r["model_response"]).endswith(COURTESY.strip()) for r in responses)
    content = sum(str(r["model_response"]).split()[:1] == [r["rejected"]] for r in responses)
    return styled / len(responses), content / len(responses)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """A 64-wide model trains as fast on one thread, and far faster on a CPU that other jobs share."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def conversation_run(tmp_path: Path, quiet_trainer, one_thread: None) -> tuple[Path, Path]:
    """(a checkpoint tuned on 400 conversations, the conversational preference pairs of the same ones)."""
    data = records(400, seed=0)
    chats = [{"messages": [*context(r), {"role": "assistant", "content": r["output"]}]} for r in data]
    (tmp_path / "chats.jsonl").write_text("".join(json.dumps(c) + "\n" for c in chats), encoding="utf-8")
    pairs = [
        {"messages": context(r), "chosen": r["output"] + COURTESY, "rejected": r["output"]} for r in data
    ]
    (tmp_path / "pairs.json").write_text(json.dumps(pairs), encoding="utf-8")
    L.seed_everything(0)
    sft_data = ConversationDataModule(  # the last answer learned, as the instruction run's mask_prompt
        path=str(tmp_path / "chats.jsonl"),
        style=STYLE,
        batch_size=16,
        max_length=64,
        train_on="last_assistant",
    )
    task = InstructionTuning(MODEL, STYLE, optimizer={"lr": 3e-3, "weight_decay": 0.0, "warmup_steps": 5})
    trainer = quiet_trainer(devices=1, max_epochs=12, limit_val_batches=0)
    trainer.fit(task, datamodule=sft_data)
    trainer.save_checkpoint(tmp_path / "sft.ckpt")
    return tmp_path / "sft.ckpt", tmp_path / "pairs.json"


@pytest.mark.slow
def test_dpo_on_conversational_pairs_learns_the_style_and_keeps_the_content(
    conversation_run, quiet_trainer
) -> None:
    task, data, log = preference_tune(
        conversation_run, quiet_trainer, epochs=4, lr=1e-3, nll_weight=1.0, logprob_reduction="sum"
    )
    assert all("messages" in record for record in data.splits["test"])  # answered as conversations
    assert task.reference_model is not None
    before_style, before_content = shares(answers(task.reference_model, data))  # the conversation model
    after_style, after_content = shares(answers(task.model, data))
    assert before_style == 0.0 and before_content >= 0.9
    assert after_style >= 0.9
    assert after_content >= before_content - 0.10
    assert log.history[0]["val/loss"] > log.history[-1]["val/loss"]
    assert log.history[-1]["val/rewards/accuracy"] >= 0.9
