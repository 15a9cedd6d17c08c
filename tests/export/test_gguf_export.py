"""format=gguf: transformers' GGUF loader (and llama.cpp, where llama_cpp is installed) computes our logits;
the file carries llama.cpp's gpt2 metadata and tokenizer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from hf_compat import DTYPE_ARG
from transformers import AutoModelForCausalLM, AutoTokenizer

from gpt_finetune.export.chat_template import chat_template
from gpt_finetune.export.gguf_file import gguf_tensors, write_gguf
from gpt_finetune.serving.loading import UsableModel
from gpt_finetune.tokenizer import gpt2_tokenizer

MakeUsable = Callable[..., UsableModel]
TEXT = "Below is an instruction.\n\n### Instruction:\nSay hello in French, count to 3.\n\n### Response:\n"
# The interpreter with llama-cpp-python to check the file with: this one, or LLAMA_PYTHON=path (a separate
# build); the test skips when neither imports llama_cpp (CI has none).
LLAMA_PYTHON = os.environ.get("LLAMA_PYTHON", sys.executable)
LLAMA_GREEDY = """
import json, os, sys
import llama_cpp

path, prompt, steps = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
threads = int(os.environ.get("OMP_NUM_THREADS", 2))  # a pytest worker's share of the cores
llm = llama_cpp.Llama(model_path=path, n_ctx=256, n_threads=threads, logits_all=True, verbose=False)
llm.eval(prompt)
logits = [[float(x) for x in row] for row in llm.scores[: llm.n_tokens]]
tokens = []
for _ in range(steps):
    tokens.append(int(llm.scores[llm.n_tokens - 1].argmax()))
    llm.eval([tokens[-1]])
text = "Hello there, what's up? naïve café 1234567"
encoded = llm.tokenize(text.encode(), add_bos=False, special=False)
print(json.dumps({"logits": logits, "tokens": tokens, "encoded": encoded, "text": text}))
"""


@pytest.fixture(scope="module")
def usable(make_usable: MakeUsable) -> UsableModel:
    return make_usable("phi3", seed=1)


@pytest.fixture(scope="module")
def gguf_files(usable: UsableModel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The model written once per dtype."""
    folder = tmp_path_factory.mktemp("gguf")
    files = {}
    for dtype in ("f32", "f16", "q8_0"):
        files[dtype] = folder / dtype / "model.gguf"
        files[dtype].parent.mkdir()
        write_gguf(usable, files[dtype], dtype)  # type: ignore[arg-type]
    return files


def prompt_ids() -> torch.Tensor:
    return torch.tensor([gpt2_tokenizer().encode(TEXT)])


@pytest.mark.slow
@pytest.mark.parametrize(("dtype", "tolerance"), [("f32", 1e-5), ("f16", 1e-3)])
def test_transformers_loads_the_gguf_with_our_logits(
    usable: UsableModel, gguf_files: dict[str, Path], dtype: str, tolerance: float
) -> None:
    path = gguf_files[dtype]
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, **{DTYPE_ARG: torch.float32}
    ).eval()
    assert not model.config.tie_word_embeddings  # our untied head travelled as output.weight
    ids = prompt_ids()
    with torch.no_grad():
        ours = usable.gpt(ids)
        assert (model(ids).logits - ours).abs().max() <= tolerance
    assert len(set(ours.argmax(-1)[0].tolist())) > 2  # logits that differ position to position


def test_a_tied_head_travels_as_the_token_embedding_and_reads_back(
    make_usable: MakeUsable, tmp_path: Path
) -> None:
    """No `output.weight`: llama.cpp (transformers where llama_cpp is missing: slower, it parses the whole
    vocabulary twice) reuses `token_embd` as the head and computes our logits."""
    tied = make_usable("alpaca", seed=2, tie_embeddings=True)
    assert "token_embd.weight" in gguf_tensors(tied) and "output.weight" not in gguf_tensors(tied)
    path = tmp_path / "model.gguf"
    write_gguf(tied, path, "f32")
    ids = prompt_ids()
    with torch.no_grad():
        ours = tied.gpt(ids)
    if llama_cpp_found():
        result = llama_greedy(path, ids, 12)
        assert (torch.tensor(result["logits"]) - ours[0]).abs().max() <= 1e-3
        assert result["tokens"] == tied.gpt.generate(ids, max_new_tokens=12, eos_id=None)[0]
        return
    model = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, **{DTYPE_ARG: torch.float32})
    assert model.config.tie_word_embeddings
    with torch.no_grad():
        assert (model.eval()(ids).logits - ours).abs().max() <= 1e-5


@pytest.mark.slow
def test_transformers_reads_the_gguf_tokenizer_and_chat_template(gguf_files: dict[str, Path]) -> None:
    path = gguf_files["f16"]
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    text = TEXT + " naïve café, 1234567 tokens!\n\n  spaces"
    assert tokenizer(text)["input_ids"] == gpt2_tokenizer().encode(text)
    assert tokenizer.eos_token_id == 50256
    assert tokenizer.chat_template == chat_template("phi3")


def test_gguf_holds_llama_cpp_gpt2_metadata_and_q8_0_matrices(
    usable: UsableModel, gguf_files: dict[str, Path]
) -> None:
    reader = gguf.GGUFReader(gguf_files["q8_0"])

    def field(key: str) -> object:
        return reader.fields[key].contents()

    config = usable.gpt.config
    assert field("general.architecture") == "gpt2"
    assert field("gpt2.context_length") == config.context_length
    assert field("gpt2.block_count") == config.n_layers
    assert field("gpt2.embedding_length") == config.emb_dim
    assert field("gpt2.feed_forward_length") == 4 * config.emb_dim
    assert field("gpt2.attention.head_count") == config.n_heads
    assert field("general.file_type") == gguf.LlamaFileType.MOSTLY_Q8_0
    assert field("tokenizer.ggml.model") == "gpt2"
    assert field("tokenizer.ggml.pre") == "gpt-2"
    assert field("tokenizer.ggml.eos_token_id") == field("tokenizer.ggml.bos_token_id") == 50256
    assert len(field("tokenizer.ggml.tokens")) == 50257  # type: ignore[arg-type]
    assert len(field("tokenizer.ggml.merges")) == 50000  # type: ignore[arg-type]
    types = {t.name: t.tensor_type for t in reader.tensors}
    expected = {f"blk.{i}.{name}" for i in range(config.n_layers) for name in gguf_block_names()}
    assert set(types) == expected | {
        "token_embd.weight",
        "position_embd.weight",
        "output_norm.weight",
        "output_norm.bias",
        "output.weight",
    }
    Q = gguf.GGMLQuantizationType
    assert types["blk.0.attn_qkv.weight"] == types["token_embd.weight"] == types["output.weight"] == Q.Q8_0
    assert (
        types["position_embd.weight"] == types["blk.0.attn_qkv.bias"] == types["output_norm.weight"] == Q.F32
    )
    # Dequantized, the Q8_0 matrices are the model's to within 8-bit rounding of each 32-wide block.
    token_embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
    dequantized = gguf.quants.dequantize(token_embd.data, Q.Q8_0)
    original = usable.gpt.transformer.wte.weight.detach().numpy()
    assert dequantized.shape == original.shape
    assert np.abs(dequantized - original).max() <= np.abs(original).max() / 127


def gguf_block_names() -> list[str]:
    names = ["attn_norm", "attn_qkv", "attn_output", "ffn_norm", "ffn_up", "ffn_down"]
    return [f"{name}.{kind}" for name in names for kind in ("weight", "bias")]


def llama_cpp_found() -> bool:
    """Whether LLAMA_PYTHON imports llama_cpp (CI installs the wheel from ../shared/wheels when present)."""
    found = subprocess.run([LLAMA_PYTHON, "-c", "import llama_cpp"], capture_output=True, check=False)
    return found.returncode == 0


def llama_greedy(path: Path, ids: torch.Tensor, steps: int) -> dict:
    """llama.cpp's logits at every prompt position and its `steps` greedy tokens for the GGUF at `path`."""
    done = subprocess.run(
        [LLAMA_PYTHON, "-c", LLAMA_GREEDY, str(path), json.dumps(ids[0].tolist()), str(steps)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_llama_cpp_runs_the_gguf_with_our_logits_and_greedy_tokens(
    usable: UsableModel, gguf_files: dict[str, Path]
) -> None:
    if not llama_cpp_found():
        pytest.skip(f"llama_cpp is not importable by {LLAMA_PYTHON}; set LLAMA_PYTHON to one that has it")
    ids = prompt_ids()
    result = llama_greedy(gguf_files["f32"], ids, 12)
    with torch.no_grad():
        ours = usable.gpt(ids)[0]
    assert (torch.tensor(result["logits"]) - ours).abs().max() <= 1e-3  # every prompt position
    assert result["tokens"] == usable.gpt.generate(ids, max_new_tokens=12, eos_id=None)[0]
    assert result["encoded"] == gpt2_tokenizer().encode(result["text"])
