"""Loading and saving weights, including every one-line error path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from gpt_finetune.errors import UserError
from gpt_finetune.model import GPT, GPTConfig


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_save_and_reload_is_exact(tiny_model: GPT, tmp_path: Path) -> None:
    tiny_model.save_pretrained(tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", "model.safetensors"]
    back = GPT.from_pretrained(tmp_path / "out")
    assert back.config == tiny_model.config
    for (name, a), b in zip(tiny_model.state_dict().items(), back.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_untie_on_load_copies_the_embedding(tiny_model: GPT, tmp_path: Path) -> None:
    tiny_model.save_pretrained(tmp_path / "out")
    untied = GPT.from_pretrained(tmp_path / "out", tie_embeddings=False)
    assert untied.lm_head.weight is not untied.transformer.wte.weight
    assert torch.equal(untied.lm_head.weight, untied.transformer.wte.weight)


def test_unknown_size_lists_the_valid_ones() -> None:
    with pytest.raises(UserError) as error:
        GPT.from_pretrained("gpt2-huge")
    assert "gpt2-medium" in one_line(error) and "gpt2-xl" in one_line(error)
    with pytest.raises(UserError, match="unknown model size 'gpt3'"):
        GPTConfig.from_size("gpt3")


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"no model\.safetensors") as error:
        GPT.from_pretrained(tmp_path)
    one_line(error)
    with pytest.raises(UserError, match="no such file"):
        GPT.from_pretrained(tmp_path / "nope" / "model.safetensors")


def test_pickles_are_refused(tmp_path: Path, tiny_model: GPT) -> None:
    torch.save(tiny_model.state_dict(), tmp_path / "model.bin")
    with pytest.raises(UserError, match=r"only \.safetensors"):
        GPT.from_pretrained(tmp_path / "model.bin")


def test_wrong_shape_names_the_tensor(tiny_model: GPT, tmp_path: Path) -> None:
    tiny_model.save_pretrained(tmp_path / "out")
    tensors = load_file(tmp_path / "out" / "model.safetensors")
    tensors["transformer.h.1.mlp.c_fc.weight"] = torch.zeros(64, 100)
    save_file(tensors, tmp_path / "out" / "model.safetensors")
    with pytest.raises(UserError, match=r"'transformer.h.1.mlp.c_fc.weight' has shape \(64, 100\)") as error:
        GPT.from_pretrained(tmp_path / "out")
    one_line(error)


def test_missing_tensor_is_named(tiny_model: GPT, tmp_path: Path) -> None:
    tiny_model.save_pretrained(tmp_path / "out")
    tensors = load_file(tmp_path / "out" / "model.safetensors")
    del tensors["transformer.ln_f.bias"]
    save_file(tensors, tmp_path / "out" / "model.safetensors")
    with pytest.raises(UserError, match=r"missing tensor 'transformer\.ln_f\.bias'"):
        GPT.from_pretrained(tmp_path / "out")


HUB_SNIPPET = """
import sys
from gpt_finetune.errors import UserError
from gpt_finetune.model import GPT
try:
    model = GPT.from_pretrained(sys.argv[1])
except UserError as e:
    print("ERROR", e)
else:
    print("LOADED", model.config.n_layers, model.config.emb_dim)
"""


def run_hub(name: str, hf_home: Path) -> str:
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", HUB_SNIPPET, name], env=env, capture_output=True, text=True, timeout=120
    )
    return done.stdout.strip()


@pytest.mark.slow
def test_offline_without_cache_says_how_to_fix(tmp_path: Path) -> None:
    out = run_hub("gpt2-medium", tmp_path / "hf")
    assert out.startswith("ERROR cannot get openai-community/gpt2-medium")
    assert "model.pretrained=false" in out and "model.weights=PATH" in out


@pytest.mark.slow
def test_hub_name_is_served_from_the_cache_offline(tiny_model: GPT, tmp_path: Path) -> None:
    """A Hub cache laid out as huggingface_hub writes it serves `gpt2` with HF_HUB_OFFLINE=1."""
    repo = tmp_path / "hf" / "hub" / "models--openai-community--gpt2"
    commit = "0" * 40
    tiny_model.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    assert run_hub("gpt2", tmp_path / "hf") == "LOADED 2 64"
