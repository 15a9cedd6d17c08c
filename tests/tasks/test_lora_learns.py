"""End to end: LoRA teaches a trained base a new wording and answer format; the base stays bit-identical.

A tiny GPT is first fully trained from random init to repeat lists of words ("Repeat."), then saved with
`save_pretrained`: its facts are the lists of its training split. LoRA (r=8, every block Linear layer) then
tunes it on some of those lists under a new instruction whose answer is the list's first word only, and
is tested on the other lists. The answers are words the base already produces: with the embeddings and
the LM head frozen, adapters on a tiny base cannot teach new output words (the issue's feasibility run:
the loss stays near 6).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from word_lists import distinct_word_lists

from gpt_finetune.data.instruct_datamodule import InstructionDataModule
from gpt_finetune.data.instructions import Record
from gpt_finetune.evaluation.responses import generate_responses
from gpt_finetune.model import GPT
from gpt_finetune.tasks.adapters import adapters_disabled
from gpt_finetune.tasks.instruct import InstructionTuning

STYLE = "phi3"
SEED = 0
NEW_INSTRUCTION = "Say only the first word."
DATA = {"style": STYLE, "seed": SEED, "batch_size": 16, "max_length": 64, "mask_prompt": True}


def data_module(path: Path, records: list[Record], train: float, test: float) -> InstructionDataModule:
    path.write_text(json.dumps(records), encoding="utf-8")
    return InstructionDataModule(path=str(path), train_fraction=train, test_fraction=test, **DATA)


def optimizer(lr: float, warmup: int) -> dict[str, Any]:
    return {"lr": lr, "weight_decay": 0.0, "warmup_steps": warmup, "cosine": True, "fused_adamw": True}


def fit(quiet_trainer, task: InstructionTuning, data: InstructionDataModule, epochs: int) -> None:
    trainer = quiet_trainer(devices=1, max_epochs=epochs, gradient_clip_val=1.0, limit_val_batches=0)
    trainer.fit(task, datamodule=data)


def train_base(quiet_trainer, tmp_path: Path) -> tuple[Path, list[Record]]:
    """Fully train the base to repeat lists; save it; its training split."""
    L.seed_everything(SEED, workers=True)
    lists = distinct_word_lists(600, SEED)
    records: list[Record] = [{"instruction": "Repeat.", "input": t, "output": t} for t in lists]
    data = data_module(tmp_path / "repeat.json", records, train=0.75, test=0.20)  # 450 / 120 / 30
    task = InstructionTuning(
        model={"size": "tiny", "pretrained": False, "context_length": 64},
        prompt_style=STYLE,
        optimizer=optimizer(2e-3, warmup=20),
    )
    # 6 epochs (168 steps) copy about 2 in 3 test lists exactly: enough to start every answer right.
    fit(quiet_trainer, task, data, epochs=6)
    task.model.save_pretrained(tmp_path / "base")
    return tmp_path / "base", data.splits["train"]


def first_word_records(base_train: list[Record]) -> list[Record]:
    """The base's training lists under the new instruction, answered with their first word only."""
    return [
        {"instruction": NEW_INSTRUCTION, "input": r["input"], "output": r["input"].split()[0]}
        for r in base_train
    ]


def exact_match(model: GPT, records: list[Record]) -> float:
    responses = generate_responses(model, records, STYLE, max_new_tokens=8)
    return sum(r["model_response"] == r["output"] for r in responses) / len(responses)


@pytest.mark.slow
def test_lora_learns_a_new_wording_and_format_over_the_base_facts(tmp_path: Path, quiet_trainer) -> None:
    base_dir, base_train = train_base(quiet_trainer, tmp_path)

    L.seed_everything(SEED, workers=True)
    data = data_module(tmp_path / "first.json", first_word_records(base_train), train=0.70, test=0.28)
    task = InstructionTuning(
        model={"size": "tiny", "pretrained": False, "weights": str(base_dir), "context_length": 64},
        prompt_style=STYLE,
        optimizer=optimizer(3e-3, warmup=10),
        lora={"r": 8, "alpha": 16, "targets": "all"},
    )
    fit(quiet_trainer, task, data, epochs=4)

    held_out, seen = data.splits["test"], {r["input"] for r in data.splits["train"]}
    assert len(held_out) == 126 and not seen & {r["input"] for r in held_out}
    assert {r["input"] for r in held_out} <= {r["input"] for r in base_train}  # the same facts
    exact = exact_match(task.model, held_out)
    print(f"LoRA exact match on {len(held_out)} held-out lists: {exact:.1%}")  # shown with pytest -s
    assert exact >= 0.80, f"LoRA exact match {exact:.0%} on held-out lists"
    with adapters_disabled(task.model):  # the base alone repeats the whole list: the format is new to it
        assert exact_match(task.model, held_out) <= 0.20

    base = GPT.from_pretrained(base_dir).state_dict()
    tuned = {k: v for k, v in task.model.state_dict().items() if ".lora_" not in k}
    assert tuned.keys() == base.keys()
    for name, tensor in base.items():
        assert torch.equal(tuned[name], tensor), name
