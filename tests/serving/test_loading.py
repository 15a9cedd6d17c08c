"""`load_model`: a run's tested checkpoint, a given checkpoint, or a base model; one-line errors otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gpt_finetune.errors import UserError
from gpt_finetune.model import GPT, GPTConfig
from gpt_finetune.serving.loading import load_model


def test_a_run_dir_loads_its_tested_checkpoint_with_its_prompt_style(quickstart_run: Path) -> None:
    used = load_model(run_dir=str(quickstart_run), device="cpu")
    tested = json.loads((quickstart_run / "metrics.json").read_text())["tested_checkpoint"]
    assert used.kind == "instruct" and used.checkpoint is not None
    assert used.checkpoint.name == Path(tested).name
    assert used.prompt_style == used.config["data"]["style"] == used.config["task"]["prompt_style"]
    assert used.name == quickstart_run.name and used.run_dir == quickstart_run.resolve()
    assert used.metrics["tested_checkpoint"] == tested
    assert not used.gpt.training


def test_ckpt_path_loads_that_checkpoint_and_finds_its_run(quickstart_run: Path) -> None:
    last = quickstart_run / "checkpoints" / "last.ckpt"
    used = load_model(ckpt_path=str(last), device="cpu", prompt_style="phi3")
    assert used.checkpoint == last and used.run_dir == quickstart_run.resolve()
    assert used.prompt_style == "phi3"  # an explicit style wins over the checkpoint's
    state = torch.load(last, map_location="cpu", weights_only=True)["state_dict"]
    assert torch.equal(used.gpt.lm_head.weight, state["model.lm_head.weight"])


def test_a_classification_run_loads_as_a_classifier(classify_run: Path) -> None:
    used = load_model(run_dir=str(classify_run), device="cpu")
    assert used.kind == "classify" and used.classifier is not None
    assert used.labels == ["ham", "spam"]
    assert used.classifier.predict_proba(["Free prize! Call now"]).shape == (1, 2)


def test_a_base_model_from_local_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    GPT(GPTConfig.from_size("tiny")).save_pretrained(tmp_path / "base")
    spec = {"size": "tiny", "pretrained": False, "weights": str(tmp_path / "base")}
    used = load_model(model=spec, device="cpu")
    assert used.kind == "instruct" and used.prompt_style == "alpaca" and used.name == "base"
    assert used.checkpoint is None and used.run_dir is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "give run_dir=RUN, ckpt_path=FILE.ckpt, or a base model"),
        ({"run_dir": "/no/such/run"}, "run_dir=/no/such/run: no such directory"),
        ({"ckpt_path": "/no/such.ckpt"}, "ckpt_path=/no/such.ckpt: no such checkpoint file"),
        ({"model": {"size": "tiny"}, "prompt_style": "vicuna"}, "unknown prompt style 'vicuna'"),
        ({"device": "tpu9"}, "unknown device 'tpu9'"),
    ],
)
def test_bad_sources_fail_in_one_line(kwargs: dict, message: str) -> None:
    with pytest.raises(UserError) as raised:
        load_model(**kwargs)
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_a_run_without_checkpoints_and_a_file_that_is_no_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    with pytest.raises(UserError, match=r"no checkpoints/\*\.ckpt"):
        load_model(run_dir=str(tmp_path / "run"))
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read the checkpoint"):
        load_model(ckpt_path=str(garbage))
    torch.save({"state_dict": {}}, tmp_path / "bare.ckpt")
    with pytest.raises(UserError, match=r"not a train\.py checkpoint"):
        load_model(ckpt_path=str(tmp_path / "bare.ckpt"))


def test_a_lora_run_loads_merged_unless_asked_not_to(tmp_path: Path) -> None:
    from gpt_finetune.tasks.adapters import adapted_layers
    from gpt_finetune.tasks.instruct import InstructionTuning

    torch.manual_seed(0)
    GPT(GPTConfig.from_size("tiny")).save_pretrained(tmp_path / "base")
    spec = {"size": "tiny", "pretrained": False, "weights": str(tmp_path / "base")}
    task = InstructionTuning(spec, lora={"r": 4})
    with torch.no_grad():
        for _, layer in adapted_layers(task.model):
            layer.lora_B.normal_(std=0.1)
    tokens = torch.tensor([[464, 3290, 318, 257]])
    expected = task.model.eval()(tokens)
    checkpoint = {"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams)}
    task.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "lora.ckpt")
    merged = load_model(ckpt_path=str(tmp_path / "lora.ckpt"), device="cpu")
    assert not list(adapted_layers(merged.gpt)) and merged.lora["r"] == 4
    assert (merged.gpt(tokens) - expected).abs().max() <= 1e-5
    apart = load_model(ckpt_path=str(tmp_path / "lora.ckpt"), device="cpu", merge=False)
    assert len(list(adapted_layers(apart.gpt))) == 4 * apart.gpt.config.n_layers
    assert torch.equal(apart.gpt(tokens), expected)


def test_a_lora_run_whose_base_moved_loads_with_base_weights(tmp_path: Path) -> None:
    from gpt_finetune.errors import UserError as Error
    from gpt_finetune.tasks.instruct import InstructionTuning

    torch.manual_seed(0)
    GPT(GPTConfig.from_size("tiny")).save_pretrained(tmp_path / "base")
    spec = {"size": "tiny", "pretrained": False, "weights": str(tmp_path / "base")}
    task = InstructionTuning(spec, lora={"r": 4})
    checkpoint = {"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams)}
    task.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "lora.ckpt")
    (tmp_path / "base").rename(tmp_path / "moved")
    with pytest.raises(Error, match="base_weights=DIR"):
        load_model(ckpt_path=str(tmp_path / "lora.ckpt"), device="cpu")
    used = load_model(
        ckpt_path=str(tmp_path / "lora.ckpt"), device="cpu", base_weights=str(tmp_path / "moved")
    )
    tokens = torch.tensor([[464, 3290, 318]])
    assert torch.equal(used.gpt(tokens), task.model.eval()(tokens))
