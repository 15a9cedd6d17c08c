"""LoRA: a zero update changes nothing, merging is exact, only adapters train and are saved, PEFT agrees."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors.torch import save_file

from gpt_finetune.errors import UserError
from gpt_finetune.evaluation.run_dir import load_finetuned
from gpt_finetune.model import GPT, GPTConfig
from gpt_finetune.serving.loading import load_classifier
from gpt_finetune.tasks.adapters import (
    LoRALinear,
    LoRASettings,
    adapted_layers,
    adapters_disabled,
    add_lora,
    merge_lora,
    peft_config,
    peft_state_dict,
    trainable_counts,
)
from gpt_finetune.tasks.classify import Classification
from gpt_finetune.tasks.instruct import InstructionTuning

TOKENS = torch.tensor([[464, 3290, 318, 257, 1332, 13], [40, 588, 11, 995, 0, 50256]])


def tiny(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig.from_size("tiny")).eval()


def randomize_adapters(model: GPT, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in adapted_layers(model):
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=generator) * 0.1)


def test_a_fresh_adapter_leaves_the_logits_unchanged() -> None:
    model = tiny()
    before = model(TOKENS)
    assert add_lora(model, LoRASettings(r=4)) == 4 * model.config.n_layers
    assert torch.equal(model(TOKENS), before)  # B = 0: exactly the base


def test_merged_and_unmerged_agree_and_disabled_is_the_base() -> None:
    model = tiny()
    base = model(TOKENS)
    add_lora(model, LoRASettings(r=8, alpha=16))
    randomize_adapters(model)
    adapted = model(TOKENS)
    assert (adapted - base).abs().max() > 1e-3  # the adapters do something
    with adapters_disabled(model):
        assert torch.equal(model(TOKENS), base)
    merged_count = merge_lora(model)
    assert merged_count == 4 * model.config.n_layers and not list(adapted_layers(model))
    assert (model(TOKENS) - adapted).abs().max() <= 1e-5


@pytest.mark.parametrize(
    ("targets", "layers"),
    [
        ("all", {"c_attn", "c_proj", "c_fc"}),
        (["attn"], {"c_attn"}),
        (["attn_proj", "mlp"], {"c_proj", "c_fc"}),
    ],
)
def test_targets_choose_the_layers(targets: object, layers: set[str]) -> None:
    model = tiny()
    add_lora(model, LoRASettings(r=2, targets=targets))  # type: ignore[arg-type]
    assert {name.rsplit(".", 1)[-1] for name, _ in adapted_layers(model)} == layers
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(".lora_" in n for n in trained)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (LoRASettings(r=0), "task.lora.r=0"),
        (LoRASettings(r=4, dropout=1.5), "task.lora.dropout=1.5"),
        (LoRASettings(r=4, targets=["qkv"]), "task.lora.targets=['qkv']"),
    ],
)
def test_bad_settings_fail_in_one_line(settings: LoRASettings, message: str) -> None:
    with pytest.raises(UserError, match=None) as raised:
        settings.check()
    assert message in str(raised.value)


def tiny_base(tmp_path: Path) -> dict:
    tiny().save_pretrained(tmp_path / "base")
    return {"size": "tiny", "pretrained": False, "weights": str(tmp_path / "base")}


def test_an_instruction_task_trains_only_adapters(tmp_path: Path) -> None:
    task = InstructionTuning(tiny_base(tmp_path), lora={"r": 4})
    trainable, total = trainable_counts(task)
    emb, n_layers = task.model.config.emb_dim, task.model.config.n_layers
    per_block = 4 * (emb + 3 * emb) + 4 * (emb + emb) + 4 * (emb + 4 * emb) + 4 * (4 * emb + emb)
    assert trainable == n_layers * per_block and total > 10 * trainable
    optimizer = task.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    assert sum(p.numel() for group in optimizer.param_groups for p in group["params"]) == trainable
    assert task.hparams.lora == {"r": 4, "alpha": 16.0, "dropout": 0.0, "targets": "all"}


def test_a_classifier_trains_adapters_and_in_full_what_trainable_names(tmp_path: Path) -> None:
    spec = tiny_base(tmp_path)
    head = Classification(spec, labels=["ham", "spam"], trainable="head", lora={"r": 4})
    trained = {n for n, p in head.named_parameters() if p.requires_grad}
    assert {"model.lm_head.weight", "model.lm_head.bias"} <= trained
    assert all(".lora_" in n or n.startswith("model.lm_head") for n in trained)
    block = Classification(spec, labels=["ham", "spam"], trainable="last_block", lora={"r": 4})
    trained = {n for n, p in block.named_parameters() if p.requires_grad}
    last = f"model.transformer.h.{block.model.config.n_layers - 1}."
    assert f"{last}mlp.c_fc.weight" in trained and "model.transformer.ln_f.weight" in trained
    assert not any(n.startswith("model.transformer.h.0.") and ".lora_" not in n for n in trained)
    with pytest.raises(UserError, match=r"task\.trainable=all trains every weight"):
        Classification(spec, labels=["ham", "spam"], trainable="all", lora={"r": 4})


def checkpoint_of(task: InstructionTuning | Classification, path: Path) -> Path:
    """What a Trainer writes: the task's state dict and hyperparameters, through the task's hook."""
    checkpoint = {
        "state_dict": task.state_dict(),
        "hyper_parameters": dict(task.hparams),
        "pytorch-lightning_version": L.__version__,
    }
    task.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return path


def test_a_lora_checkpoint_holds_only_what_trains_and_reloads(tmp_path: Path) -> None:
    task = InstructionTuning(tiny_base(tmp_path), lora={"r": 4})
    randomize_adapters(task.model)
    expected = task.model(TOKENS)
    path = checkpoint_of(task, tmp_path / "lora.ckpt")
    saved = torch.load(path, weights_only=True)["state_dict"]
    assert saved and all(".lora_" in name for name in saved)
    loaded = load_finetuned(path).model
    assert (loaded(TOKENS) - expected).abs().max() == 0


def test_a_lora_classifier_checkpoint_reloads(tmp_path: Path) -> None:
    task = Classification(tiny_base(tmp_path), labels=["ham", "spam"], pooling="last_token", lora={"r": 4})
    randomize_adapters(task.model)
    path = checkpoint_of(task, tmp_path / "lora.ckpt")
    saved = torch.load(path, weights_only=True)["state_dict"]
    assert "model.lm_head.weight" in saved and "model.transformer.wte.weight" not in saved
    texts = ["Free prize! Call now", "see you at noon"]
    expected = task.eval().predict_proba(texts)
    assert torch.allclose(load_classifier(path).predict_proba(texts), expected, atol=0, rtol=0)


def test_a_random_init_base_is_refused() -> None:
    with pytest.raises(UserError, match=r"task\.lora needs a base that loads again"):
        InstructionTuning({"size": "tiny", "pretrained": False}, lora={"r": 4})


def test_a_lora_checkpoint_whose_base_is_gone_says_why(tmp_path: Path) -> None:
    task = InstructionTuning(tiny_base(tmp_path), lora={"r": 4})
    path = checkpoint_of(task, tmp_path / "lora.ckpt")
    (tmp_path / "base" / "model.safetensors").unlink()
    with pytest.raises(UserError, match=r"holds only the adapters: its frozen base loads .*base_weights=DIR"):
        load_finetuned(path)


def test_a_checkpoint_without_the_adapters_is_refused(tmp_path: Path) -> None:
    task = InstructionTuning(tiny_base(tmp_path), lora={"r": 4})
    checkpoint = {"state_dict": {}, "hyper_parameters": dict(task.hparams)}
    with pytest.raises(UserError, match="lacks"):
        task.on_load_checkpoint(checkpoint)


def test_save_pretrained_of_an_adapted_model_writes_its_base(tmp_path: Path) -> None:
    model = tiny()
    base = model(TOKENS)
    add_lora(model, LoRASettings(r=4))
    randomize_adapters(model)
    model.save_pretrained(tmp_path / "out")
    assert torch.equal(GPT.from_pretrained(tmp_path / "out").eval()(TOKENS), base)


def test_peft_loads_our_adapters_onto_the_exported_base(tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    model = tiny()
    settings = LoRASettings(r=4, alpha=8, targets=["attn", "mlp"])
    add_lora(model, settings)
    randomize_adapters(model)
    with torch.no_grad():  # A too, so that a transposed A or B would show
        for _, layer in adapted_layers(model):
            layer.lora_A.add_(0.05)
    ours = model(TOKENS)
    model.save_pretrained(tmp_path / "base")
    adapter_dir = tmp_path / "adapter"
    adapter_dir.mkdir()
    save_file(peft_state_dict(model), str(adapter_dir / "adapter_model.safetensors"))
    config = peft_config(settings, str(tmp_path / "base"))
    (adapter_dir / "adapter_config.json").write_text(json.dumps(config))
    hf_base = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "base")
    hf = peft.PeftModel.from_pretrained(hf_base, adapter_dir).eval()
    with torch.no_grad():
        theirs = hf(TOKENS).logits
    assert (theirs - ours).abs().max() <= 1e-5
    assert all(isinstance(m, LoRALinear) for _, m in adapted_layers(model))
