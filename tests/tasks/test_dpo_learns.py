"""End to end: a tiny GPT instruction-tuned to repeat a word, then DPO-tuned on pairs whose chosen answer
adds a courteous sentence, learns the style and keeps the content with README's recommended settings
(DPO + NLL on chosen, summed log-probabilities); plain `mean` DPO collapses, and its logs show it."""

from __future__ import annotations

import json
import random
from pathlib import Path

import lightning as L
import pytest
from word_lists import WORDS

from gpt_finetune.data.instruct_datamodule import InstructionDataModule
from gpt_finetune.data.preference_datamodule import PreferenceDataModule
from gpt_finetune.evaluation.responses import generate_responses
from gpt_finetune.tasks.dpo import PreferenceTuning
from gpt_finetune.tasks.instruct import InstructionTuning

STYLE = "phi3"
COURTESY = " Thank you."
MODEL = {"size": "tiny", "pretrained": False, "context_length": 64}
INSTRUCTIONS = ("Repeat.", "Say it.", "Echo.", "Copy.")


def records(n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    words = [rng.choice(WORDS) for _ in range(n)]
    return [{"instruction": rng.choice(INSTRUCTIONS), "input": w, "output": w} for w in words]


def shares(responses: list[dict[str, object]]) -> tuple[float, float]:
    """(share with the courteous sentence at the end, share that starts with the input word)."""
    styled = sum(str(r["model_response"]).endswith(COURTESY.strip()) for r in responses)
    content = sum(str(r["model_response"]).split()[:1] == [r["input"]] for r in responses)
    return styled / len(responses), content / len(responses)


# Under `pytest -n 2` these tests run on one worker, so that `instruction_run` trains once.
pytestmark = pytest.mark.xdist_group("test_dpo_learns")


@pytest.fixture(scope="module")
def instruction_run(tmp_path_factory: pytest.TempPathFactory, quiet_trainer) -> tuple[Path, Path]:
    """(the instruction-tuned checkpoint, the preference pairs file) of the same 400 records."""
    folder = tmp_path_factory.mktemp("dpo")
    data = records(400, seed=0)
    (folder / "sft.json").write_text(json.dumps(data), encoding="utf-8")
    pairs = [{**r, "chosen": r["output"] + COURTESY, "rejected": r["output"]} for r in data]
    (folder / "pairs.json").write_text(json.dumps(pairs), encoding="utf-8")
    L.seed_everything(0)
    sft_data = InstructionDataModule(
        path=str(folder / "sft.json"), style=STYLE, batch_size=16, max_length=64, mask_prompt=True
    )
    task = InstructionTuning(MODEL, STYLE, optimizer={"lr": 3e-3, "weight_decay": 0.0, "warmup_steps": 5})
    trainer = quiet_trainer(devices=1, max_epochs=12, limit_val_batches=0)
    trainer.fit(task, datamodule=sft_data)
    trainer.save_checkpoint(folder / "sft.ckpt")
    return folder / "sft.ckpt", folder / "pairs.json"


class ValidationLog(L.Callback):
    """`val/...` metrics after every validation, the step-0 one first."""

    def __init__(self) -> None:
        self.history: list[dict[str, float]] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        self.history.append({k: float(v) for k, v in metrics.items() if k.startswith("val/")})


def preference_tune(
    instruction_run: tuple[Path, Path], quiet_trainer, epochs: int, lr: float, **settings: object
) -> tuple[PreferenceTuning, PreferenceDataModule, ValidationLog]:
    checkpoint, pairs = instruction_run
    L.seed_everything(0)
    data = PreferenceDataModule(path=str(pairs), style=STYLE, batch_size=8, max_length=64)
    task = PreferenceTuning(
        MODEL, STYLE, optimizer={"lr": lr, "weight_decay": 0.0}, init_from=str(checkpoint), **settings
    )
    log = ValidationLog()
    trainer = quiet_trainer(devices=1, max_epochs=epochs, val_check_interval=10, callbacks=[log])
    trainer.validate(task, datamodule=data, verbose=False)  # step 0
    trainer.fit(task, datamodule=data)
    return task, data, log


def answers(model: object, data: PreferenceDataModule) -> list[dict[str, object]]:
    return generate_responses(model, data.splits["test"], STYLE, max_new_tokens=12)


@pytest.mark.slow
def test_dpo_with_nll_learns_the_style_and_keeps_the_content(instruction_run, quiet_trainer) -> None:
    task, data, log = preference_tune(
        instruction_run, quiet_trainer, epochs=4, lr=1e-3, nll_weight=1.0, logprob_reduction="sum"
    )
    assert task.reference_model is not None
    before_style, before_content = shares(answers(task.reference_model, data))  # the instruction model
    after_style, after_content = shares(answers(task.model, data))
    assert before_style == 0.0 and before_content >= 0.9  # it learned the task, not the style
    assert after_style >= 0.9
    assert after_content >= before_content - 0.10
    assert log.history[0]["val/loss"] > log.history[-1]["val/loss"]
    assert log.history[-1]["val/rewards/accuracy"] >= 0.9


@pytest.mark.slow
def test_a_collapse_shows_in_the_chosen_logps(instruction_run, quiet_trainer) -> None:
    plain, data, plain_log = preference_tune(instruction_run, quiet_trainer, epochs=2, lr=1e-3)
    _, _, kept_log = preference_tune(instruction_run, quiet_trainer, epochs=2, lr=1e-3, nll_weight=1.0)
    plain_chosen = [m["val/logps/chosen"] for m in plain_log.history]
    kept_chosen = [m["val/logps/chosen"] for m in kept_log.history]
    # Plain mean DPO "wins": reward accuracy 1, the rejected answers pushed far down ...
    assert plain_log.history[-1]["val/rewards/accuracy"] == 1.0
    assert plain_log.history[-1]["val/logps/rejected"] < plain_log.history[0]["val/logps/rejected"] - 10
    # ... while the chosen ones fall from their peak, and the content is gone.
    assert plain_chosen[-1] < max(plain_chosen) - 0.5
    assert shares(answers(plain.model, data))[1] <= 0.5
    # With the chosen NLL in the loss, the chosen log-probabilities keep rising.
    assert kept_chosen[-1] == max(kept_chosen) and kept_chosen[-1] > kept_chosen[0] + 5
