"""A Hugging Face model directory: `GPT2LMHeadModel` (instruction runs) or `GPT2ForSequenceClassification`.

Classification maps onto Hugging Face only with `last_token` pooling: its model pools the rightmost token
that is not `pad_token_id`, and with `<|endoftext|>` as the pad id that is our last real token (texts are
encoded with no special tokens, so a real text never holds id 50256). Its `score` layer has no bias; ours
has one, which is folded into the final LayerNorm's bias (see `fold_head_bias`).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import save_file

from gpt_finetune.artifacts import write_json, write_text
from gpt_finetune.errors import UserError
from gpt_finetune.export.chat_template import chat_template
from gpt_finetune.export.model_card import model_card
from gpt_finetune.model.weights import CONFIG_NAME, CONV1D_SUFFIXES, WEIGHTS_NAME
from gpt_finetune.serving.loading import UsableModel
from gpt_finetune.tokenizer import END_OF_TEXT, END_OF_TEXT_STRING, bpe_files, verify

HfDtype = Literal["f32", "f16", "bf16"]
HF_DTYPES: dict[str, torch.dtype] = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
EXPORTED_POOLING = "last_token"


def check_exportable(usable: UsableModel) -> None:
    """Refuse, in one line, a classifier whose pooling Hugging Face's model does not compute."""
    if usable.classifier is None:
        return
    pooling = usable.classifier.hparams.pooling
    if pooling != EXPORTED_POOLING:
        raise UserError(
            f"this run pools with task.pooling={pooling}, which GPT2ForSequenceClassification cannot "
            f"compute (it reads the last non-pad token); train with task.pooling={EXPORTED_POOLING} to export"
        )


def write_hf(usable: UsableModel, directory: Path, dtype: HfDtype = "f32", location: str = ".") -> list[Path]:
    """Write the model, config, tokenizer and model card into `directory` (named `location` in the card)."""
    check_exportable(usable)
    gpt = usable.gpt
    context = gpt.config.context_length
    name = str(HF_DTYPES[dtype]).removeprefix("torch.")
    config: dict[str, Any] = {**gpt.config.to_hf(), "dtype": name, "torch_dtype": name}  # new and old key
    tensors = backbone_tensors(usable)
    if usable.kind == "classify":
        assert usable.classifier is not None  # a classify UsableModel always carries its classifier
        tensors["score.weight"], tensors["transformer.ln_f.bias"] = fold_head_bias(
            gpt.lm_head.weight, gpt.lm_head.bias, tensors["transformer.ln_f.bias"]
        )
        config |= {
            "architectures": ["GPT2ForSequenceClassification"],
            "id2label": dict(enumerate(usable.labels)),
            "label2id": {label: i for i, label in enumerate(usable.labels)},
            "pad_token_id": END_OF_TEXT,
            "problem_type": "single_label_classification",
        }
        limits = (usable.classifier.input_format.get(key) for key in ("max_length", "width"))
        max_length = min([context, *(limit for limit in limits if limit is not None)])  # as in training
    else:
        config["pad_token_id"] = END_OF_TEXT
        max_length = context
        write_json(
            directory / "generation_config.json",
            {
                "bos_token_id": END_OF_TEXT,
                "eos_token_id": END_OF_TEXT,
                "pad_token_id": END_OF_TEXT,
                "max_length": context,
                "do_sample": False,  # greedy, as chat.py and serve.py answer by default
            },
        )
    target = HF_DTYPES[dtype]
    save_file(
        {name: t.to(target).contiguous() for name, t in tensors.items()},
        str(directory / WEIGHTS_NAME),
        metadata={"format": "pt"},
    )
    write_json(directory / CONFIG_NAME, config)
    template = chat_template(usable.prompt_style) if usable.kind == "instruct" else None
    write_tokenizer(directory, max_length, template)
    write_text(directory / "README.md", model_card(usable, dtype, location))
    return sorted(directory.iterdir())


def backbone_tensors(usable: UsableModel) -> dict[str, torch.Tensor]:
    """The network's tensors in float32 with Hugging Face's names and Conv1D (in, out) layout.

    A tied head is left out (Hugging Face ties it again); a classifier's head is left out (see
    `fold_head_bias`); a network built without QKV biases gets zero ones, which GPT-2 always has. LoRA
    adapters still apart (`merge=false`) are left out too: this is their base, `peft_adapter` writes them.
    """
    gpt = usable.gpt
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in gpt.state_dict().items():
        if name.startswith("lm_head.") and (usable.kind == "classify" or gpt.config.tie_embeddings):
            continue
        if ".lora_" in name:
            continue
        tensor = tensor.detach().to("cpu", torch.float32)
        tensors[name] = (tensor.t() if name.endswith(CONV1D_SUFFIXES) else tensor).contiguous().clone()
    if not gpt.config.qkv_bias:
        for layer in range(gpt.config.n_layers):
            tensors[f"transformer.h.{layer}.attn.c_attn.bias"] = torch.zeros(3 * gpt.config.emb_dim)
    return tensors


def fold_head_bias(
    weight: torch.Tensor, bias: torch.Tensor | None, ln_bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(score weight, final-norm bias) so that `W (h + shift) == W h + b`: a bias-free head equal to ours.

    `shift = pinv(W) b` is exact while the rows of W are independent (classes <= width, a trained head);
    only the head reads the final norm's output, so moving the bias there changes nothing else.
    """
    w = weight.detach().to("cpu", torch.float64)
    b = torch.zeros(w.shape[0], dtype=torch.float64) if bias is None else bias.detach().cpu().double()
    shift = torch.linalg.pinv(w) @ b
    if (w @ shift - b).abs().max() > 1e-9 * (1.0 + b.abs().max()):
        raise UserError(
            f"the class head ({w.shape[0]} classes, width {w.shape[1]}) has dependent rows, so its bias "
            "cannot be folded into GPT2ForSequenceClassification's bias-free score layer"
        )
    return w.float(), (ln_bias.double() + shift).float()


def write_tokenizer(directory: Path, max_length: int, template: str | None) -> None:
    """GPT-2's BPE files (vocab.json, merges.txt) and a tokenizer config with the chat template."""
    files = bpe_files()
    verify(files)
    shutil.copyfile(files["encoder.json"], directory / "vocab.json")  # the same file under HF's name
    shutil.copyfile(files["vocab.bpe"], directory / "merges.txt")
    special = {"content": END_OF_TEXT_STRING, "lstrip": False, "rstrip": False, "normalized": True}
    config: dict[str, Any] = {
        "tokenizer_class": "GPT2Tokenizer",
        "add_prefix_space": False,
        "add_bos_token": False,
        "bos_token": END_OF_TEXT_STRING,
        "eos_token": END_OF_TEXT_STRING,
        "unk_token": END_OF_TEXT_STRING,
        "pad_token": END_OF_TEXT_STRING,
        "padding_side": "right",
        "model_max_length": max_length,
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": {str(END_OF_TEXT): {**special, "single_word": False, "special": True}},
    }
    if template is not None:
        config["chat_template"] = template
    write_json(directory / "tokenizer_config.json", config)
