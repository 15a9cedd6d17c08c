"""Numerical parity with transformers.GPT2LMHeadModel (random weights, fp32)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from gpt_finetune.model import GPT, GPTConfig

transformers = pytest.importorskip("transformers")

SHAPES = {
    "tiny": GPTConfig.from_size("tiny", context_length=64),
    "gpt2-small": GPTConfig.from_size("gpt2-small"),
}


def perturb_(model: torch.nn.Module) -> None:
    """Random LayerNorm and bias values too, so every tensor's orientation is exercised."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                param.normal_(0.0, 0.1).add_(1.0 if name.endswith("weight") else 0.0)


def hf_twin(model: GPT, tmp_path) -> transformers.GPT2LMHeadModel:
    model.save_pretrained(tmp_path / "ckpt")
    return transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "ckpt").eval()


# gpt2-small (124M, random weights) in the end-to-end tier: building and saving it is most of its time.
SHAPE_PARAMS = [pytest.param(name, marks=[pytest.mark.slow] if name != "tiny" else []) for name in SHAPES]


@pytest.mark.parametrize("shape", SHAPE_PARAMS)
def test_logits_match_transformers(shape: str, tmp_path) -> None:
    torch.manual_seed(0)
    model = GPT(SHAPES[shape]).eval()
    perturb_(model)
    hf = hf_twin(model, tmp_path)
    ids = torch.randint(0, 50257, (2, 48))
    with torch.no_grad():
        ours, theirs = model(ids), hf(ids).logits
    assert ours.shape == (2, 48, 50257)
    assert (ours - theirs).abs().max().item() <= 1e-4


@pytest.mark.parametrize("shape", SHAPE_PARAMS)
def test_greedy_generation_matches_transformers(shape: str, tmp_path) -> None:
    torch.manual_seed(1)
    model = GPT(SHAPES[shape]).eval()
    hf = hf_twin(model, tmp_path)
    prompt = torch.randint(0, 50257, (1, 7))
    ours = model.generate(prompt, max_new_tokens=20, eos_id=None)[0]
    with torch.no_grad():
        theirs = hf.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=20,
            min_new_tokens=20,
            do_sample=False,
            pad_token_id=50256,
        )[0, 7:].tolist()
    assert ours == theirs


def test_transformers_checkpoint_loads_both_key_layouts(tmp_path) -> None:
    """HF's own save (keys `transformer.*`) and OpenAI's Hub file (bare keys) load to the same logits."""
    torch.manual_seed(2)
    hf_config = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=2, n_positions=64)
    hf = transformers.GPT2LMHeadModel(hf_config).eval()
    hf.save_pretrained(tmp_path / "hf")
    ours = GPT.from_pretrained(tmp_path / "hf").eval()
    bare = {
        k.removeprefix("transformer."): v for k, v in load_file(tmp_path / "hf" / "model.safetensors").items()
    }
    save_file(bare, tmp_path / "bare.safetensors")
    from_bare = GPT.from_pretrained(tmp_path / "bare.safetensors").eval()
    ids = torch.randint(0, 50257, (1, 16))
    with torch.no_grad():
        expected = hf(ids).logits
        assert (ours(ids) - expected).abs().max().item() <= 1e-4
        assert (from_bare(ids) - expected).abs().max().item() <= 1e-4


def test_untied_head_round_trips_through_transformers(tmp_path) -> None:
    torch.manual_seed(3)
    model = GPT(GPTConfig.from_size("tiny", tie_embeddings=False)).eval()
    with torch.no_grad():
        model.lm_head.weight.add_(0.5)  # make the head really differ from the embedding
    hf = hf_twin(model, tmp_path)
    assert not hf.config.tie_word_embeddings
    back = GPT.from_pretrained(tmp_path / "ckpt").eval()
    ids = torch.randint(0, 50257, (1, 12))
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max().item() <= 1e-4
        assert torch.equal(model(ids), back(ids))
