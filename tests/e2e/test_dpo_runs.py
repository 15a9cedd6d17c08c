"""`train.py task=dpo data=preferences init_from=RUN` as a user runs it: from the quickstart's instruction
run to a DPO run whose metrics, TensorBoard scalars, checkpoints and before / after responses are complete,
that evaluate.py and the serving loader read; LoRA DPO; an interrupted precomputed-reference run resumes
to the uninterrupted weights."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gpt_finetune.config import bundled_path
from gpt_finetune.serving.loading import load_model

COURTESY = " Thank you."
SHORT = ("trainer=cpu", "trainer.max_epochs=1", "++trainer.max_steps=6", "trainer.val_check_interval=3")
NAMES = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracy")


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled sample's 120 instructions as pairs: chosen = output + a courteous sentence."""
    records = json.loads(Path(bundled_path("sample_instructions.json")).read_text(encoding="utf-8"))
    pairs = [{**r, "chosen": r["output"] + COURTESY, "rejected": r["output"]} for r in records]
    path = tmp_path_factory.mktemp("pairs") / "pairs.json"
    path.write_text(json.dumps(pairs), encoding="utf-8")
    return path


def dpo(pairs: Path, init_from: Path, run_dir: Path, *overrides: str) -> tuple[str, ...]:
    return (
        "task=dpo",
        "data=preferences",
        f"data.path={pairs}",
        f"init_from={init_from}",
        f"hydra.run.dir={run_dir}",
        *overrides,
    )


def scalars(run_dir: Path) -> dict[str, list[float]]:
    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.mark.slow
def test_dpo_run_from_an_instruction_run(
    tmp_path: Path, command_in_process, quickstart_run: Path, pairs: Path
) -> None:
    run_dir = tmp_path / "dpo"  # train and evaluate in-process: their command lines are tested elsewhere
    done = command_in_process(
        "train", *dpo(pairs, quickstart_run, run_dir, *SHORT, "generate.max_new_tokens=8")
    )
    assert done.returncode == 0, done.stderr[-3000:]

    # The policy is the instruction run's model and prompt style, no download.
    config = (run_dir / "config.yaml").read_text()
    sft = torch.load(sorted((quickstart_run / "checkpoints").glob("best-*.ckpt"))[0], weights_only=True)
    assert "init_from: " + str(quickstart_run.resolve() / "checkpoints") in config
    assert "style: alpaca" in config and "pretrained: false" in config

    metrics = json.loads((run_dir / "metrics.json").read_text())
    for name in (*NAMES, "logps/chosen", "logps/rejected"):
        assert f"test/{name}" in metrics and f"val/{name}" in metrics, name
    assert metrics["global_step"] == 6 and "best_val/loss" in metrics
    logged = scalars(run_dir)
    for stage in ("train", "val"):
        for name in (*NAMES, "logps/chosen", "logps/rejected", "nll"):
            assert f"{stage}/{name}" in logged, f"{stage}/{name}"
    assert len(logged["val/logps/chosen"]) == 2 and len(logged["train/rewards/margins"]) == 6

    # The checkpoint holds the policy alone (the frozen reference is rebuilt from init_from).
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert set(saved["state_dict"]) == set(sft["state_dict"])

    # Test responses, with the instruction model's beside them; `output` is the chosen response.
    responses = json.loads((run_dir / "test_responses.json").read_text())
    assert len(responses) == metrics["records"]["test"] == 12
    assert all(r["output"] == r["chosen"] and "reference_response" in r for r in responses)

    evaluated = command_in_process("evaluate", f"run_dir={run_dir}", "regenerate=true")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "Before (starting model)" not in (run_dir / "report.html").read_text()  # regenerated: policy only
    assert json.loads((run_dir / "response_metrics.json").read_text())["records"] == 12

    usable = load_model(run_dir=str(run_dir), device="cpu")
    assert usable.kind == "instruct" and usable.prompt_style == "alpaca"
    assert torch.equal(usable.gpt.lm_head.weight, saved["state_dict"]["model.lm_head.weight"])


@pytest.mark.slow
def test_lora_dpo_saves_adapters_and_loads_back_on_its_instruction_model(
    tmp_path: Path, command_in_process, quickstart_run: Path, pairs: Path
) -> None:
    run_dir = tmp_path / "lora"
    done = command_in_process(
        "train", *dpo(pairs, quickstart_run, run_dir, *SHORT, "task.lora.r=4", "generate.max_new_tokens=8")
    )
    assert done.returncode == 0, done.stderr[-3000:]
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert saved and all(".lora_" in name for name in saved)
    responses = json.loads((run_dir / "test_responses.json").read_text())
    assert all("reference_response" in r for r in responses)  # the adapters-off base answered too

    usable = load_model(run_dir=str(run_dir), device="cpu")  # base: init_from's model, adapters merged
    start = load_model(run_dir=str(quickstart_run), device="cpu")
    moved = [n for n, p in usable.gpt.named_parameters() if not torch.equal(p, start.gpt.get_parameter(n))]
    assert moved and all(n.endswith(".weight") and ".h." in n for n in moved)


@pytest.mark.slow
def test_interrupted_precomputed_run_resumes_to_the_uninterrupted_weights(
    tmp_path: Path, run_train, command_in_process, quickstart_run: Path, pairs: Path
) -> None:
    """The cut run is a process (SIGKILL); the whole and the resumed runs run in-process."""
    run = (
        "trainer=cpu",
        "trainer.max_epochs=2",  # 12 batches an epoch (102 pairs, batches of 8)
        "task.reference=precomputed",
        "generate.enabled=false",
        "callbacks.validation_samples=null",
        "callbacks.last_checkpoint.every_n_train_steps=10",
    )
    whole = command_in_process("train", *dpo(pairs, quickstart_run, tmp_path / "whole", *run))
    assert whole.returncode == 0, whole.stderr[-3000:]
    interrupt = (
        "+callbacks.interrupt._target_=train_interrupts.SignalAt",
        "+callbacks.interrupt.epoch=1",
        "+callbacks.interrupt.batch=9",
        "+callbacks.interrupt.signum=SIGKILL",
    )
    stopped = run_train(*dpo(pairs, quickstart_run, tmp_path / "cut", *run, *interrupt))
    assert stopped.returncode != 0
    last = torch.load(tmp_path / "cut" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 20 and set(last["reference_logps"]) == {"train", "val", "test"}

    resumed = command_in_process("train", f"resume={tmp_path / 'cut'}", "++callbacks.interrupt=null")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected = torch.load(tmp_path / "whole" / "checkpoints" / "last.ckpt", weights_only=True)
    got = torch.load(tmp_path / "cut" / "checkpoints" / "last.ckpt", weights_only=True)
    for name, tensor in expected["state_dict"].items():
        assert torch.equal(tensor, got["state_dict"][name]), name
    whole_metrics = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    cut_metrics = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    for key in ("global_step", "best_val/loss", "test/loss", "test/rewards/margins"):
        assert whole_metrics[key] == cut_metrics[key], key


@pytest.mark.slow
def test_ddp_dpo_matches_one_process_on_an_uneven_split(
    tmp_path: Path, run_train, command_in_process, quickstart_run: Path, pairs: Path
) -> None:
    """102 train pairs: 12 global batches of 8 and 6 left over; two ranks of 4 see one process's batches
    of 8 and log the mean over both. The precomputed reference is computed on each rank. (The one-process
    run runs in-process; the two ranks are processes.)"""
    common = (
        "trainer.max_epochs=1",
        "++trainer.max_steps=5",
        "trainer.val_check_interval=5",
        "task.reference=precomputed",
        "optimizer.lr=1e-3",
        "generate.enabled=false",
        "callbacks.validation_samples=null",
    )
    one = command_in_process(
        "train", *dpo(pairs, quickstart_run, tmp_path / "one", *common, "trainer=cpu", "data.batch_size=8")
    )
    assert one.returncode == 0, one.stderr[-3000:]
    two = run_train(
        *dpo(pairs, quickstart_run, tmp_path / "two", *common, "trainer=ddp_cpu", "data.batch_size=4"),
        timeout=600,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    single, ddp = scalars(tmp_path / "one"), scalars(tmp_path / "two")
    assert len(single["train/loss"]) == len(ddp["train/loss"]) == 5
    assert single["train/loss"][0] == pytest.approx(math.log(2), abs=1e-6)  # step 0
    assert single["train/loss"][-1] < single["train/loss"][0] - 0.01  # it trains
    for name in ("train/loss", "train/rewards/margins", "train/logps/chosen", "val/loss"):
        for a, b in zip(single[name], ddp[name], strict=True):
            assert abs(a - b) <= 1e-4, name


@pytest.mark.slow
def test_bf16_with_clipping_starts_at_ln2_and_trains(
    tmp_path: Path, command_in_process, quickstart_run: Path, pairs: Path
) -> None:
    overrides = ("trainer.precision=bf16-mixed", "trainer.gradient_clip_val=1.0", "optimizer.lr=1e-3")
    done = command_in_process(
        "train", *dpo(pairs, quickstart_run, tmp_path / "bf16", *SHORT, *overrides, "generate.enabled=false")
    )
    assert done.returncode == 0, done.stderr[-3000:]
    losses = scalars(tmp_path / "bf16")["train/loss"]
    assert losses[0] == pytest.approx(math.log(2), abs=1e-6)  # policy and reference under the same autocast
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
