"""End to end: a tiny GPT trained from random init learns a small instruction task and when to stop.

The answer names the category of the noun in the input ("Classify: small dog" -> "It is an animal."). Test
inputs are adjective-noun pairs never seen in training, so the model must read the input, answer in the
trained format and end with end-of-text: formatting, masking, end-of-text learning and generation must agree.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import lightning as L
import pytest

from gpt_finetune.data.instruct_datamodule import InstructionDataModule
from gpt_finetune.evaluation.responses import generate_responses
from gpt_finetune.tasks.instruct import InstructionTuning

CATEGORIES = {
    "an animal": ["dog", "cat", "horse", "bird", "fish"],
    "a color": ["red", "blue", "green", "yellow", "black"],
    "a fruit": ["apple", "banana", "orange", "lemon", "grape"],
    "a tool": ["hammer", "knife", "saw", "drill", "rope"],
}
ADJECTIVES = ["small", "big", "old", "new", "nice", "odd", "fine", "cold", "warm", "dry", "wet", "soft"]


def write_task(path: Path, seed: int) -> Path:
    """Every adjective-noun pair once, shuffled; the output depends only on the noun's category."""
    records = [
        {"instruction": "Classify the thing.", "input": f"{adjective} {noun}", "output": f"It is {category}."}
        for category, nouns in CATEGORIES.items()
        for noun in nouns
        for adjective in ADJECTIVES
    ]
    random.Random(seed).shuffle(records)
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


@pytest.mark.slow
def test_tiny_model_learns_the_task_and_stops(tmp_path: Path) -> None:
    L.seed_everything(0, workers=True)
    data = InstructionDataModule(
        path=str(write_task(tmp_path / "task.json", seed=0)),
        style="alpaca",
        train_fraction=0.75,
        test_fraction=0.20,
        batch_size=16,
        mask_prompt=True,  # learn only the response: a mask hiding its first token or end-of-text would fail
    )
    task = InstructionTuning(
        model={"size": "tiny", "pretrained": False, "context_length": 128},
        lr=1e-2,
        weight_decay=0.0,
        warmup_steps=20,
        cosine=True,
    )
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=40,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(task, datamodule=data)

    responses = generate_responses(task.model, data.splits["test"], "alpaca", max_new_tokens=12)
    assert len(responses) == 48
    assert not {r["input"] for r in data.splits["train"]} & {r["input"] for r in responses}
    exact = sum(r["model_response"] == r["output"] for r in responses) / len(responses)
    stopped = sum(bool(r["stopped"]) for r in responses) / len(responses)
    misses = [(r["input"], r["model_response"]) for r in responses if r["model_response"] != r["output"]]
    assert exact >= 0.90, f"exact match {exact:.0%}; misses: {misses[:5]}"
    assert stopped >= 0.90, f"only {stopped:.0%} of responses ended with end-of-text"
