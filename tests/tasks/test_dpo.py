"""DPO: the loss against the paper's formulas and hand-checked numbers, the response log-probabilities, the
task at step 0 (ln 2, no margin) for every kind of reference, and precomputed = frozen reference."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from gpt_finetune.data.collate import collate_instructions
from gpt_finetune.data.preference_datamodule import PreferenceDataModule
from gpt_finetune.errors import UserError
from gpt_finetune.model import GPT
from gpt_finetune.tasks.dpo import PreferenceTuning, rebuild_task
from gpt_finetune.tasks.dpo_loss import dpo_loss, reduce_logps, response_logps

TINY = {"size": "tiny", "pretrained": False, "context_length": 64}


def test_hand_checked_numbers() -> None:
    # h = (-1 - -1.5) - (-2 - -1.5) = 1, beta * h = 0.1: loss = ln(1 + e^-0.1) = 0.6443967.
    result = dpo_loss(*(torch.tensor([v]) for v in (-1.0, -2.0, -1.5, -1.5)), beta=0.1)
    assert result.losses.item() == pytest.approx(0.6443967, abs=1e-6)
    assert result.chosen_rewards.item() == pytest.approx(0.05, abs=1e-7)
    assert result.rejected_rewards.item() == pytest.approx(-0.05, abs=1e-7)
    assert result.margins.item() == pytest.approx(0.1, abs=1e-7)
    assert result.accuracy.item() == 1.0
    # Conservative DPO, eps 0.1: 0.9 * ln(1 + e^-0.1) + 0.1 * ln(1 + e^0.1) = 0.5799570 + 0.0744397.
    smoothed = dpo_loss(*(torch.tensor([v]) for v in (-1.0, -2.0, -1.5, -1.5)), beta=0.1, label_smoothing=0.1)
    assert smoothed.losses.item() == pytest.approx(0.6543967, abs=1e-6)


def paper_loss(pc: float, pr: float, rc: float, rr: float, beta: float, eps: float) -> float:
    """The paper's L_DPO (and cDPO) for one pair, in plain floats."""
    logit = beta * ((pc - rc) - (pr - rr))
    sigmoid = 1 / (1 + math.exp(-logit))
    return -(1 - eps) * math.log(sigmoid) - eps * math.log(1 - sigmoid)


@pytest.mark.parametrize(("beta", "eps"), [(0.1, 0.0), (0.5, 0.0), (0.1, 0.2), (1.0, 0.45)])
def test_equals_the_papers_formulas_on_random_log_probabilities(beta: float, eps: float) -> None:
    generator = torch.Generator().manual_seed(0)
    logps = -torch.rand(4, 16, generator=generator, dtype=torch.float64) * 10
    result = dpo_loss(*logps, beta=beta, label_smoothing=eps)
    for i in range(16):
        pc, pr, rc, rr = (float(logps[k, i]) for k in range(4))
        assert result.losses[i].item() == pytest.approx(paper_loss(pc, pr, rc, rr, beta, eps), abs=1e-9)
        assert result.chosen_rewards[i].item() == pytest.approx(beta * (pc - rc), abs=1e-9)
        assert result.rejected_rewards[i].item() == pytest.approx(beta * (pr - rr), abs=1e-9)


def test_equal_policy_and_reference_give_ln2_and_no_margin() -> None:
    logps = -torch.rand(2, 8) * 30
    result = dpo_loss(logps[0], logps[1], logps[0], logps[1], beta=0.3)
    assert torch.allclose(result.losses, torch.full((8,), math.log(2)))
    assert torch.equal(result.margins, torch.zeros(8)) and result.accuracy.sum() == 0


def test_response_logps_are_the_log_softmax_of_the_learned_targets(tiny_model: GPT) -> None:
    batch = collate_instructions([[5, 6, 7, 8, 9], [10, 11, 12]], prompt_lengths=[3, 2])
    sums, counts = response_logps(tiny_model, batch["input_ids"], batch["targets"])
    logps = F.log_softmax(tiny_model(batch["input_ids"]).float(), dim=-1)
    for row in range(2):
        learned = [(t, int(target)) for t, target in enumerate(batch["targets"][row]) if target != -100]
        assert counts[row].item() == len(learned)  # row 0: 8, 9, eot; row 1: 12, eot
        expected = sum(logps[row, t, target].item() for t, target in learned)
        assert sums[row].item() == pytest.approx(expected, abs=1e-5)
    assert counts.tolist() == [3, 2]
    assert torch.equal(reduce_logps(sums, counts, "sum"), sums)
    assert torch.allclose(reduce_logps(sums, counts, "mean"), sums / torch.tensor([3.0, 2.0]))


def write_pairs(folder: Path, n: int = 24) -> Path:
    words = ("red", "blue", "green", "cat", "dog", "sun")
    records = [
        {
            "instruction": "Repeat.",
            "input": words[i % 6],
            "chosen": f"{words[i % 6]} Thank you.",
            "rejected": words[i % 6],
        }
        for i in range(n)
    ]
    path = folder / "pairs.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def data(path: Path) -> PreferenceDataModule:
    return PreferenceDataModule(
        path=str(path), style="phi3", batch_size=4, max_length=64, train_fraction=0.5, test_fraction=0.25
    )


class Losses(L.Callback):
    """Every training step's loss, as logged."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def on_train_batch_end(self, trainer: L.Trainer, *_: object) -> None:
        self.values.append(float(trainer.callback_metrics["train/loss"]))


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"reference": "precomputed"},
        {"logprob_reduction": "sum", "label_smoothing": 0.1},
        {"lora": {"r": 4}},
    ],
    ids=["frozen", "precomputed", "sum-smoothed", "lora-adapters-off"],
)
def test_step_zero_loss_is_ln2_with_no_margin(
    tmp_path: Path, quiet_trainer, tiny_base: Path, settings: dict
) -> None:
    model = {"size": "tiny", "pretrained": False, "weights": str(tiny_base)} if "lora" in settings else TINY
    task = PreferenceTuning(model, prompt_style="phi3", **settings)
    metrics = quiet_trainer(devices=1).validate(task, datamodule=data(write_pairs(tmp_path)), verbose=False)[
        0
    ]
    assert metrics["val/loss"] == pytest.approx(math.log(2), abs=1e-6)
    for name in ("val/rewards/chosen", "val/rewards/rejected", "val/rewards/margins", "val/rewards/accuracy"):
        assert metrics[name] == pytest.approx(0.0, abs=1e-6), name
    assert metrics["val/logps/chosen"] < 0 and metrics["val/logps/rejected"] < 0


def test_lora_reference_after_training_is_the_base_model_not_the_policy(
    tmp_path: Path, quiet_trainer, tiny_base: Path
) -> None:
    """With adapters, the reference is the policy with them off: after a few steps (adapters no longer zero),
    it must still give the saved base model's log-probabilities, and the policy must have moved away."""
    model = {"size": "tiny", "pretrained": False, "weights": str(tiny_base)}
    L.seed_everything(0)
    task = PreferenceTuning(model, "phi3", lora={"r": 4}, optimizer={"lr": 3e-2, "weight_decay": 0.0})
    datamodule = data(write_pairs(tmp_path))
    quiet_trainer(devices=1, max_steps=4, limit_val_batches=0).fit(task, datamodule=datamodule)
    batch = next(iter(datamodule.dataloader("val")))
    task.eval()
    reference = task._reference(batch, "val")
    base = GPT.from_pretrained(tiny_base).eval()
    with torch.no_grad():
        expected = response_logps(base, batch["input_ids"], batch["targets"])
        policy, _ = response_logps(task.model, batch["input_ids"], batch["targets"])
    assert torch.allclose(reference[0], expected[0], atol=1e-4) and torch.equal(reference[1], expected[1])
    assert (policy - reference[0]).abs().max() > 1e-2  # the adapters changed the policy: margins are real
    metrics = quiet_trainer(devices=1).validate(task, datamodule=datamodule, verbose=False)[0]
    assert abs(metrics["val/rewards/margins"]) > 1e-4 and metrics["val/loss"] != pytest.approx(math.log(2))


def test_nll_weight_adds_the_chosen_per_token_nll(tmp_path: Path, quiet_trainer) -> None:
    path = write_pairs(tmp_path)
    plain = quiet_trainer(devices=1).validate(
        PreferenceTuning(TINY, "phi3"), datamodule=data(path), verbose=False
    )[0]
    torch.manual_seed(0)
    weighted_task = PreferenceTuning(TINY, "phi3", nll_weight=0.5)
    torch.manual_seed(0)
    plain_task = PreferenceTuning(TINY, "phi3")
    weighted = quiet_trainer(devices=1).validate(weighted_task, datamodule=data(path), verbose=False)[0]
    reference = quiet_trainer(devices=1).validate(plain_task, datamodule=data(path), verbose=False)[0]
    assert weighted["val/loss"] == pytest.approx(reference["val/loss"] + 0.5 * reference["val/nll"], abs=1e-5)
    assert plain["val/nll"] > 0


def test_precomputed_reference_trains_exactly_as_the_frozen_copy(tmp_path: Path, quiet_trainer) -> None:
    path = write_pairs(tmp_path, 48)
    runs = {}
    for reference in ("frozen", "precomputed"):
        L.seed_everything(0)
        task = PreferenceTuning(
            TINY, "phi3", reference=reference, optimizer={"lr": 1e-2, "weight_decay": 0.0}
        )
        losses = Losses()
        quiet_trainer(devices=1, max_epochs=2, limit_val_batches=0, callbacks=[losses]).fit(
            task, datamodule=data(path)
        )
        runs[reference] = (losses.values, task)
    frozen, precomputed = runs["frozen"][0], runs["precomputed"][0]
    assert len(frozen) == 12 and frozen[-1] < frozen[0] - 0.05  # it trains, away from ln 2
    assert frozen == pytest.approx(precomputed, abs=1e-5)
    # Only the frozen reference holds a second copy of the weights.
    assert runs["frozen"][1].reference_model is not None and runs["precomputed"][1].reference_model is None
    assert set(runs["precomputed"][1].reference_logps) == {"train", "val", "test"}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"beta": 0.0}, "task.beta=0.0 must be > 0"),
        ({"label_smoothing": 0.5}, "task.label_smoothing=0.5 must lie in [0, 0.5)"),
        ({"logprob_reduction": "max"}, "task.logprob_reduction=max is not one of mean, sum"),
        (
            {"reference": "copy", "nll_weight": -1},
            "task.nll_weight=-1 must be >= 0; task.reference=copy is not one of frozen, precomputed",
        ),
    ],
)
def test_settings_that_cannot_train_fail_in_one_line(settings: dict, message: str) -> None:
    with pytest.raises(UserError, match=None) as error:
        PreferenceTuning(TINY, **settings)
    assert str(error.value) == message


def test_resume_without_a_precomputed_reference_after_training_is_refused(
    tmp_path: Path, quiet_trainer
) -> None:
    path = write_pairs(tmp_path)
    trainer = quiet_trainer(devices=1, max_steps=1, limit_val_batches=0)
    trainer.fit(PreferenceTuning(TINY, "phi3"), datamodule=data(path))
    trainer.save_checkpoint(tmp_path / "frozen.ckpt")  # no precomputed reference in it
    resumed = quiet_trainer(devices=1, max_steps=2, limit_val_batches=0)
    with pytest.raises(UserError, match="holds no precomputed reference and the policy has trained"):
        resumed.fit(
            PreferenceTuning(TINY, "phi3", reference="precomputed"),
            datamodule=data(path),
            ckpt_path=tmp_path / "frozen.ckpt",
            weights_only=True,
        )


@pytest.mark.slow
def test_compiled_log_probabilities_train_as_eager(tmp_path: Path, quiet_trainer) -> None:
    path = write_pairs(tmp_path, 48)
    runs = []
    for compile in (False, True):
        L.seed_everything(0)
        task = PreferenceTuning(TINY, "phi3", compile=compile, optimizer={"lr": 1e-2, "weight_decay": 0.0})
        losses = Losses()
        quiet_trainer(devices=1, max_epochs=1, limit_val_batches=0, callbacks=[losses]).fit(
            task, datamodule=data(path)
        )
        runs.append(losses.values)
    eager, compiled = runs
    assert len(eager) == 6 and eager[1] != pytest.approx(eager[0], abs=1e-3)
    assert compiled == pytest.approx(eager, abs=1e-4)


def test_a_dpo_checkpoint_of_an_earlier_version_still_loads() -> None:
    """Older DPO runs saved `head_on_targets_only` (which had no effect there): their policy still loads."""
    torch.manual_seed(0)
    task = PreferenceTuning(TINY, "phi3")
    checkpoint = {
        "state_dict": task.state_dict(),
        "hyper_parameters": {**task.hparams, "head_on_targets_only": True},
    }
    rebuilt = rebuild_task(checkpoint, "old.ckpt")
    assert isinstance(rebuilt, PreferenceTuning) and rebuilt.hparams.prompt_style == "phi3"
    assert all(
        torch.equal(a, b)
        for a, b in zip(rebuilt.model.state_dict().values(), task.model.state_dict().values(), strict=True)
    )
