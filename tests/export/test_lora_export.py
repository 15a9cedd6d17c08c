"""A LoRA run exports merged (plain GPT-2 weights) or, with merge=false, as its base + a PEFT adapter."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import DictConfig

from gpt_finetune.errors import UserError
from gpt_finetune.export.command import export
from gpt_finetune.model import GPT, GPTConfig
from gpt_finetune.tasks.adapters import adapted_layers
from gpt_finetune.tasks.instruct import InstructionTuning

Compose = Callable[..., DictConfig]
TOKENS = torch.tensor([[464, 3290, 318, 257, 1332, 13, 40, 588]])


@pytest.fixture
def lora_checkpoint(tmp_path: Path) -> tuple[Path, torch.Tensor]:
    """A LoRA instruction checkpoint (adapters on attn and mlp, B non-zero) and its model's logits."""
    torch.manual_seed(0)
    GPT(GPTConfig.from_size("tiny", tie_embeddings=False)).save_pretrained(tmp_path / "base")
    spec = {"size": "tiny", "pretrained": False, "weights": str(tmp_path / "base")}
    task = InstructionTuning(spec, lora={"r": 4, "alpha": 8, "targets": ["attn", "mlp"]})
    with torch.no_grad():
        for _, layer in adapted_layers(task.model):
            layer.lora_B.normal_(std=0.2)
    expected = task.model.eval()(TOKENS)
    checkpoint = {
        "state_dict": task.state_dict(),
        "hyper_parameters": dict(task.hparams),
        "pytorch-lightning_version": L.__version__,
    }
    task.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "lora.ckpt")
    return tmp_path / "lora.ckpt", expected


def test_merged_export_loads_in_transformers_with_our_logits(
    lora_checkpoint: tuple[Path, torch.Tensor], export_config: Compose, tmp_path: Path
) -> None:
    transformers = pytest.importorskip("transformers")
    path, expected = lora_checkpoint
    out = export(export_config(f"ckpt_path={path}", f"out={tmp_path / 'merged'}"))
    assert not (out / "adapter").exists()
    assert "| LoRA | r=4, alpha=8" in (out / "README.md").read_text()
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        assert (hf(TOKENS).logits - expected).abs().max() <= 1e-4


def test_unmerged_export_is_the_base_plus_a_peft_adapter(
    lora_checkpoint: tuple[Path, torch.Tensor], export_config: Compose, tmp_path: Path
) -> None:
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    path, expected = lora_checkpoint
    out = export(export_config(f"ckpt_path={path}", f"out={tmp_path / 'apart'}", "merge=false"))
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8 and config["peft_type"] == "LORA"
    base = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    base_logits = GPT.from_pretrained(tmp_path / "base").eval()(TOKENS)
    with torch.no_grad():
        assert (base(TOKENS).logits - base_logits).abs().max() <= 1e-4  # out/ holds the base itself
        adapted = peft.PeftModel.from_pretrained(base, out / "adapter").eval()
        assert (adapted(TOKENS).logits - expected).abs().max() <= 1e-5


def test_merge_false_needs_a_lora_run_and_the_hf_format(
    lora_checkpoint: tuple[Path, torch.Tensor], export_config: Compose, tmp_path: Path
) -> None:
    path, _ = lora_checkpoint
    with pytest.raises(UserError, match="merge=false writes PEFT adapters beside a format=hf export"):
        export(export_config(f"ckpt_path={path}", f"out={tmp_path / 'g'}", "merge=false", "format=gguf"))
    with pytest.raises(UserError, match="this run has none"):
        export(export_config("model=tiny", f"out={tmp_path / 'b'}", "merge=false"))
    assert not (tmp_path / "g").exists() and not (tmp_path / "b").exists()
