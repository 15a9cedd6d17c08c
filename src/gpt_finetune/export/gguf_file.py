"""One GGUF file for llama.cpp's `gpt2` architecture, written with the `gguf` package's GGUFWriter.

Names come from `gguf`'s own map for GPT-2 (`transformer.h.0.attn.c_attn` -> `blk.0.attn_qkv`), and the
layout is our `nn.Linear` one, (out, in), which is what llama.cpp's converter makes of Hugging Face's
Conv1D matrices. As that converter does, 1-D tensors (norms, biases) and the position embeddings stay
float32; the other matrices take the chosen type, falling back to f16 where Q8_0's 32-wide blocks do not fit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import gguf
import numpy as np

from gpt_finetune.errors import UserError
from gpt_finetune.export.chat_template import chat_template
from gpt_finetune.serving.loading import UsableModel
from gpt_finetune.tokenizer import END_OF_TEXT, bpe_files, verify

GgufDtype = Literal["f16", "f32", "q8_0"]
FILE_TYPES = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
}
ALWAYS_F32 = ("position_embd.weight",)
Q = gguf.GGMLQuantizationType


def check_gguf_exportable(usable: UsableModel) -> None:
    """Refuse, in one line, what llama.cpp's gpt2 architecture cannot run: a classifier."""
    if usable.kind == "classify":
        raise UserError(
            "format=gguf exports instruction runs only: llama.cpp's gpt2 architecture has no class head; "
            "export this classifier with format=hf"
        )


def write_gguf(usable: UsableModel, path: Path, dtype: GgufDtype = "f16") -> None:
    """Write `usable` (an instruction model) to the GGUF file `path`, tokenizer and chat template included."""
    check_gguf_exportable(usable)
    config = usable.gpt.config
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.GPT2])
    writer.add_name(usable.name)
    writer.add_block_count(config.n_layers)
    writer.add_context_length(config.context_length)
    writer.add_embedding_length(config.emb_dim)
    writer.add_feed_forward_length(4 * config.emb_dim)
    writer.add_head_count(config.n_heads)
    writer.add_layer_norm_eps(config.layer_norm_eps)
    writer.add_file_type(FILE_TYPES[dtype])
    if dtype == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_tokenizer(writer, config.vocab_size)
    writer.add_chat_template(chat_template(usable.prompt_style))
    for name, array in gguf_tensors(usable).items():
        data, qtype = encoded(name, array, dtype)
        writer.add_tensor(name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def gguf_tensors(usable: UsableModel) -> dict[str, np.ndarray]:
    """The network's tensors as float32 arrays under llama.cpp's names; a tied head is left out (llama.cpp
    reuses `token_embd`), missing QKV biases are zeros (llama.cpp's gpt2 graph adds them)."""
    gpt = usable.gpt
    names = gguf.TensorNameMap(gguf.MODEL_ARCH.GPT2, gpt.config.n_layers)
    arrays: dict[str, np.ndarray] = {}
    for name, tensor in gpt.state_dict().items():
        if name == "lm_head.weight" and gpt.config.tie_embeddings:
            continue
        target = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise UserError(f"{name}: no GGUF name for this tensor in llama.cpp's gpt2 architecture")
        arrays[target] = tensor.detach().to("cpu").float().numpy()
    if not gpt.config.qkv_bias:
        for layer in range(gpt.config.n_layers):
            arrays[f"blk.{layer}.attn_qkv.bias"] = np.zeros(3 * gpt.config.emb_dim, dtype=np.float32)
    return arrays


def encoded(name: str, array: np.ndarray, dtype: GgufDtype) -> tuple[np.ndarray, Q]:
    """The array in its stored type: f32 for 1-D and position embeddings, else `dtype` where it fits."""
    if array.ndim <= 1 or name in ALWAYS_F32 or dtype == "f32":
        return array, Q.F32
    if dtype == "q8_0":
        try:
            return gguf.quants.quantize(array, Q.Q8_0), Q.Q8_0
        except gguf.quants.QuantError:  # a width that is not a multiple of 32: f16, as llama.cpp does
            pass
    return array.astype(np.float16), Q.F16


def add_tokenizer(writer: gguf.GGUFWriter, vocab_size: int) -> None:
    """GPT-2's byte-level BPE: tokens in id order, their types, merges, and `<|endoftext|>` as BOS/EOS/pad."""
    files = bpe_files()
    verify(files)
    encoder: dict[str, int] = json.loads(files["encoder.json"].read_text(encoding="utf-8"))
    if vocab_size < len(encoder):
        raise UserError(f"vocab_size={vocab_size} is below GPT-2's {len(encoder)} tokens; cannot export")
    tokens = [token for token, _ in sorted(encoder.items(), key=lambda item: item[1])]
    types = [gguf.TokenType.NORMAL] * len(tokens)
    types[END_OF_TEXT] = gguf.TokenType.CONTROL
    for extra in range(len(tokens), vocab_size):  # rows of a padded embedding no text ever reaches
        tokens.append(f"[PAD{extra}]")
        types.append(gguf.TokenType.USER_DEFINED)
    lines = files["vocab.bpe"].read_text(encoding="utf-8").splitlines()
    merges = [line for line in lines[1:] if line]  # line 0 is the "#version: 0.2" header
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(END_OF_TEXT)
    writer.add_eos_token_id(END_OF_TEXT)
    writer.add_pad_token_id(END_OF_TEXT)
    writer.add_add_bos_token(False)  # prompts are trained without a leading <|endoftext|>
    writer.add_add_eos_token(False)
