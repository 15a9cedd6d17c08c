"""GPT-2 weights in the Hugging Face layout (`config.json` + `model.safetensors`): Hub, directory or file.

Only safetensors are read, so no downloaded file is ever unpickled. `read_pretrained` reads a checkpoint
before any model exists; `load_weights` and `save_pretrained` take a built `GPT`. `GPT.from_pretrained` and
`GPT.save_pretrained` call them, so this module imports the network for type checking only.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from gpt_finetune.artifacts import atomic_path, write_json
from gpt_finetune.errors import UserError
from gpt_finetune.model.config import HUB_IDS, SIZES, GPTConfig

if TYPE_CHECKING:
    from gpt_finetune.model.gpt import GPT

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
# Hugging Face stores these as Conv1D (in, out) matrices; nn.Linear wants (out, in).
CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Non-persistent causal-mask buffers that old checkpoints carry.
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")


def read_pretrained(name_or_path: str | Path) -> tuple[GPTConfig, dict[str, torch.Tensor]]:
    """The config and Hugging Face-named tensors of a Hub id, directory or .safetensors file."""
    weights, config_file = _locate(str(name_or_path))
    if config_file is not None:
        config = GPTConfig.from_hf(_read_json(config_file), str(name_or_path))
    else:
        config = _config_from_shapes(weights)
    return config, load_file(weights)


def load_weights(model: GPT, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Copy Hugging Face-named tensors into `model`, name for name; one-line errors on any mismatch.

    An untied model loading a tied checkpoint (no `lm_head.weight`) starts its head as a copy of `wte`.
    """
    ours = model.state_dict()
    loaded: set[str] = set()
    with torch.no_grad():
        for key, tensor in tensors.items():
            if key.endswith(IGNORED_SUFFIXES):
                continue
            name = key if key.startswith("transformer.") or key == "lm_head.weight" else f"transformer.{key}"
            if name not in ours:
                raise UserError(f"{source}: unexpected tensor {key!r}; is this a GPT-2 checkpoint?")
            transposed = name.endswith(CONV1D_SUFFIXES)
            expected = tuple(ours[name].shape)[:: -1 if transposed else 1]  # in the file's layout
            if tuple(tensor.shape) != expected:
                raise UserError(
                    f"{source}: tensor {key!r} has shape {tuple(tensor.shape)}, "
                    f"the model expects {expected}; check the model size"
                )
            if transposed:
                tensor = tensor.t()
            if name == "lm_head.weight" and model.config.tie_embeddings:
                wte = tensors.get("transformer.wte.weight", tensors.get("wte.weight"))
                if wte is not None and not torch.equal(tensor, wte):  # no wte at all: reported as missing
                    raise UserError(
                        f"{source}: lm_head.weight differs from wte; load with tie_embeddings=false"
                    )
                continue
            ours[name].copy_(tensor)
            loaded.add(name)
        if not model.config.tie_embeddings and "lm_head.weight" not in loaded:
            ours["lm_head.weight"].copy_(ours["transformer.wte.weight"])
    missing = sorted(set(ours) - loaded - {"lm_head.weight"})
    if missing:
        raise UserError(f"{source}: missing tensor {missing[0]!r} ({len(missing)} missing in all)")


def save_pretrained(model: GPT, directory: str | Path) -> Path:
    """Write `config.json` and `model.safetensors` that transformers' GPT2LMHeadModel and GPT load.

    LoRA adapters (`lora_A`, `lora_B`) are left out, so an adapted model writes its base: merge them
    first (`tasks.adapters.merge_lora`) to write the fine-tuned weights.
    """
    directory = Path(directory)
    tensors = {}
    for name, tensor in model.state_dict().items():
        if (name == "lm_head.weight" and model.config.tie_embeddings) or ".lora_" in name:
            continue
        tensor = tensor.detach().to("cpu", torch.float32)
        tensors[name] = (tensor.t() if name.endswith(CONV1D_SUFFIXES) else tensor).contiguous().clone()
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    write_json(directory / CONFIG_NAME, model.config.to_hf())
    return directory


def _locate(name: str) -> tuple[Path, Path | None]:
    """(weights file, config.json or None) for a directory, a .safetensors file or a Hub size name."""
    path = Path(name).expanduser()
    if path.is_dir():
        weights = path / WEIGHTS_NAME
        if not weights.is_file():
            raise UserError(f"{path}: no {WEIGHTS_NAME} in this directory; save one with GPT.save_pretrained")
        config = path / CONFIG_NAME
        return weights, config if config.is_file() else None
    if path.is_file():
        if path.suffix != ".safetensors":
            raise UserError(f"{path}: only .safetensors weights are read (never pickles); convert the file")
        config = path.parent / CONFIG_NAME
        return path, config if config.is_file() else None
    if name in HUB_IDS or name.startswith("openai-community/"):
        return _download(HUB_IDS.get(name, name))
    if "/" in name or name.endswith(".safetensors"):
        raise UserError(f"{name}: no such file or directory; pass a model directory or a .safetensors file")
    valid = ", ".join(["gpt2", *(s for s in SIZES if s != "tiny")])
    raise UserError(f"unknown model {name!r}; pretrained sizes: {valid}, or a local path")


def _download(repo_id: str) -> tuple[Path, Path]:
    """Fetch (or find in the Hub cache) a Hub repo's weights and config; one line when impossible."""
    from huggingface_hub import hf_hub_download

    try:
        config = hf_hub_download(repo_id, CONFIG_NAME)
        weights = hf_hub_download(repo_id, WEIGHTS_NAME)
    except Exception as error:  # offline, no cache, HTTP errors: all end the same way for the user
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(
            f"cannot get {repo_id} weights from the Hugging Face Hub and none are cached ({reason}); "
            "pass a local directory or .safetensors file (model.weights=PATH) "
            "or train from random init (model.pretrained=false)"
        ) from None
    return Path(weights), Path(config)


def _config_from_shapes(weights: Path) -> GPTConfig:
    """Infer the shape of a bare .safetensors file from its tensors (no config.json beside it)."""
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        keys = list(f.keys())
        prefix = "transformer." if any(k.startswith("transformer.") for k in keys) else ""
        vocab, emb = f.get_slice(f"{prefix}wte.weight").get_shape()
        context = f.get_slice(f"{prefix}wpe.weight").get_shape()[0]
    layers = 1 + max(int(m.group(1)) for k in keys if (m := re.match(r"(?:transformer\.)?h\.(\d+)\.", k)))
    heads = {width: n_heads for _, n_heads, width in SIZES.values()}.get(emb)
    if heads is None:
        raise UserError(
            f"{weights}: cannot infer the number of heads for width {emb}; add a config.json beside it"
        )
    return GPTConfig(vocab_size=vocab, context_length=context, emb_dim=emb, n_layers=layers, n_heads=heads)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"{path}: unreadable config ({error}); write a valid GPT-2 config.json") from None
