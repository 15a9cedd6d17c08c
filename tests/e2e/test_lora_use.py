"""A LoRA run is used as any other: evaluate.py regenerates with it, chat.py answers as its merged model does,
predict.py classifies with a LoRA classifier's checkpoint. The commands run in-process (`command_in_process`):
what is tested is what they do with a LoRA run; their command lines are tested as processes elsewhere."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gpt_finetune.serving.loading import load_model
from gpt_finetune.tokenizer import END_OF_TEXT, gpt2_tokenizer

SHORT = (
    "trainer.max_epochs=1",
    "++trainer.max_steps=4",
    "trainer.val_check_interval=4",
    "logger=none",
)


@pytest.mark.slow
def test_evaluate_and_chat_use_a_lora_instruction_run(
    tmp_path: Path, command_in_process, tiny_base: Path
) -> None:
    run = tmp_path / "run"
    done = command_in_process(
        "train", "experiment=quickstart", *SHORT, "generate.max_new_tokens=4", f"model.weights={tiny_base}",
        "task.lora.r=4", f"hydra.run.dir={run}",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    evaluated = command_in_process(
        "evaluate", f"run_dir={run}", "regenerate=true", "generate.max_new_tokens=4"
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert json.loads((run / "response_metrics.json").read_text())

    prompt = "Name a colour."
    chat = command_in_process("chat", f"run_dir={run}", f"prompt={prompt}", "generate.max_new_tokens=6")
    assert chat.returncode == 0, chat.stderr[-3000:]
    used = load_model(run_dir=str(run), device="cpu")
    tokenizer = gpt2_tokenizer()
    ids = tokenizer.encode(
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        f"request.\n\n### Instruction:\n{prompt}\n\n### Response:\n"
    )
    tokens = [t for t in used.gpt.generate([ids], max_new_tokens=6)[0] if t != END_OF_TEXT]
    assert chat.stdout.rstrip("\n") == tokenizer.decode(tokens).rstrip("\n")


@pytest.mark.slow
def test_predict_uses_a_lora_classifier(tmp_path: Path, command_in_process, tiny_base: Path) -> None:
    run = tmp_path / "spam"
    done = command_in_process(
        "train", "experiment=spam-quickstart", *SHORT, f"model.weights={tiny_base}", "task.lora.r=4",
        "task.trainable=head", f"hydra.run.dir={run}",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(".lora_" in n or n.startswith("model.lm_head") for n in saved)
    predicted = command_in_process("predict", f"run_dir={run}", "text=Free prize! Call now")
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    label, probability, text = predicted.stdout.strip().split("\t")
    used = load_model(run_dir=str(run), device="cpu")
    assert used.classifier is not None
    expected = used.classifier.predict_proba([text])[0]
    assert label in ("ham", "spam") and float(probability) == pytest.approx(float(expected.max()), abs=1e-4)
