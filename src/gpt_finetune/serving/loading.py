"""The model a command uses: a run's tested checkpoint, a given checkpoint, or a base GPT-2.

`chat.py`, `serve.py` and `export.py` all take `run_dir=RUN`, `ckpt_path=FILE.ckpt`, or a base model
(`model=gpt2-medium`, `model.weights=DIR`). A checkpoint brings its task (instruction or classification),
prompt style, labels and pooling; a base model is an instruction model in `prompt_style` (default alpaca).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from omegaconf import DictConfig

from gpt_finetune.config import plain_dict
from gpt_finetune.data.prompts import prompt_style as check_style
from gpt_finetune.devices import resolve_device
from gpt_finetune.errors import UserError
from gpt_finetune.evaluation.run_dir import find_checkpoint, load_finetuned, read_checkpoint, run_config
from gpt_finetune.model import GPT
from gpt_finetune.model.build import build_gpt
from gpt_finetune.tasks.adapters import merge_lora
from gpt_finetune.tasks.base import rebuild_spec
from gpt_finetune.tasks.classify import Classification

Kind = Literal["instruct", "classify"]


@dataclass
class UsableModel:
    """A model ready to answer: its task kind and what it was trained with, and where it came from.

    `gpt` is the backbone (for classification, with the class head as `lm_head`); `classifier` wraps it
    with pooling and input format. `name` is the model id clients see (the run folder's name, or the size).
    """

    kind: Kind
    gpt: GPT
    prompt_style: str
    name: str
    source: str
    classifier: Classification | None = None
    labels: list[str] = field(default_factory=list)
    run_dir: Path | None = None
    checkpoint: Path | None = None
    spec: dict[str, Any] = field(default_factory=dict)
    lora: dict[str, Any] = field(default_factory=dict)  # the run's task.lora (r None: no adapters)
    data: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.gpt.parameters()).device


def checkpoint_kind(hparams: dict[str, Any], path: Path) -> Kind:
    """Which task wrote a checkpoint, from its saved hyperparameters; a one-line error otherwise."""
    if "labels" in hparams and "model" in hparams:
        return "classify"
    if "prompt_style" in hparams and "model" in hparams:
        return "instruct"
    raise UserError(f"{path}: not a train.py checkpoint (no model spec, prompt style or labels)")


def load_checkpoint(
    path: Path,
    device: torch.device,
    run_dir: Path | None,
    style: str | None = None,
    base_weights: str | None = None,
) -> UsableModel:
    """The model in a train.py checkpoint, built from its saved spec with no download (a LoRA run's base
    from its source, or `base_weights`)."""
    saved = read_checkpoint(path)  # read once: the model is built from these contents
    hparams = dict(saved.get("hyper_parameters", {}))
    kind = checkpoint_kind(hparams, path)
    folder = run_dir if run_dir is not None else _run_dir_of(path)
    common: dict[str, Any] = {
        "name": folder.name if folder is not None else path.stem,
        "source": str(path),
        "run_dir": folder,
        "checkpoint": path,
        "spec": dict(hparams["model"]),
        "lora": dict(hparams.get("lora") or {}),
        "data": dict(saved.get("datamodule_hyper_parameters", {})),
        "metrics": _metrics(folder),
        "config": run_config(folder) if folder is not None else {},
    }
    if kind == "classify":
        classifier = load_classifier(path, device, base_weights, checkpoint=saved)
        return UsableModel(
            "classify",
            classifier.model,
            style or "alpaca",
            classifier=classifier,
            labels=list(classifier.labels),
            **common,
        )
    finetuned = load_finetuned(path, device, base_weights, checkpoint=saved)
    return UsableModel("instruct", finetuned.model, style or finetuned.prompt_style, **common)


def load_classifier(
    path: Path,
    device: str | torch.device = "cpu",
    base_weights: str | None = None,
    checkpoint: dict[str, Any] | None = None,
) -> Classification:
    """The classifier in `path`, built from its saved spec with no weight download (weights_only load);
    `checkpoint`: its contents when already read."""
    saved = checkpoint if checkpoint is not None else read_checkpoint(path)
    hparams = saved.get("hyper_parameters", {})
    if "labels" not in hparams or "model" not in hparams:
        raise UserError(f"{path}: not a classification checkpoint (no labels); train with task=classify")
    task = Classification(**{**hparams, "model": rebuild_spec(hparams, base_weights)})
    task.on_load_checkpoint(saved)  # a LoRA checkpoint: the frozen base filled in
    task.load_state_dict(saved["state_dict"])
    return task.to(device).eval()


def load_model(
    run_dir: str | None = None,
    ckpt_path: str | None = None,
    model: dict[str, Any] | None = None,
    prompt_style: str | None = None,
    device: str | torch.device = "auto",
    merge: bool = True,
    base_weights: str | None = None,
) -> UsableModel:
    """The model `run_dir` / `ckpt_path` / the base `model` spec names, on `device`, in eval mode.

    `prompt_style` (when given) overrides the checkpoint's; a base model uses it, or alpaca. A LoRA
    run's adapters are merged into its weights (one plain GPT-2, as fast as the base), unless `merge` is
    false (`export.py merge=false` writes them apart); `lora` holds the run's LoRA settings either way.
    `base_weights` is where a LoRA run's frozen base is now, if it moved since training.
    """
    used = _load(run_dir, ckpt_path, model, prompt_style, device, base_weights)
    if merge:
        merge_lora(used.gpt)
    return used


DECODE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def check_decode_dtype(dtype: str) -> None:
    """A one-line error unless `dtype` names a decoding dtype (chat.py and serve.py `dtype=`)."""
    if dtype not in DECODE_DTYPES:
        raise UserError(f"dtype={dtype}: use {' or '.join(DECODE_DTYPES)}")


def cast_for_decoding(usable: UsableModel, dtype: str) -> None:
    """Answer with the weights in `dtype`: bf16 halves the bytes a decoding step reads (faster where the
    hardware has bf16 arithmetic); greedy text drifts from fp32's after some tokens (the generation
    benchmark measures it). Classifiers stay in fp32."""
    check_decode_dtype(dtype)
    if dtype != "fp32" and usable.kind == "instruct":
        usable.gpt.to(DECODE_DTYPES[dtype])


def load_configured(cfg: DictConfig, device: str | None = None, merge: bool = True) -> UsableModel:
    """`load_model` with the keys chat.py, serve.py and export.py share: run_dir, ckpt_path, model,
    prompt_style, base_weights and device (`device` overrides the config's)."""
    return load_model(
        cfg.run_dir,
        cfg.ckpt_path,
        model=plain_dict(cfg.model),
        prompt_style=cfg.prompt_style,
        device=device if device is not None else cfg.device,
        merge=merge,
        base_weights=cfg.base_weights,
    )


def _load(
    run_dir: str | None,
    ckpt_path: str | None,
    model: dict[str, Any] | None,
    prompt_style: str | None,
    device: str | torch.device,
    base_weights: str | None = None,
) -> UsableModel:
    if prompt_style is not None:
        check_style(prompt_style)
    target = resolve_device(device)
    if ckpt_path is not None:
        path = Path(ckpt_path).expanduser()
        if not path.is_file():
            raise UserError(
                f"ckpt_path={ckpt_path}: no such checkpoint file; pass a .ckpt written by train.py"
            )
        folder = Path(run_dir).expanduser().resolve() if run_dir is not None else None
        return load_checkpoint(path, target, folder, prompt_style, base_weights)
    if run_dir is not None:
        folder = Path(run_dir).expanduser()
        if not folder.is_dir():
            raise UserError(f"run_dir={run_dir}: no such directory; give the output folder of a train.py run")
        found = find_checkpoint(folder)
        if found is None:
            raise UserError(
                f"run_dir={run_dir}: no checkpoints/*.ckpt; give the output folder of a train.py run"
            )
        return load_checkpoint(found, target, folder.resolve(), prompt_style, base_weights)
    if model is None:
        raise UserError("give run_dir=RUN, ckpt_path=FILE.ckpt, or a base model (model=gpt2-medium)")
    gpt = build_gpt(**model).to(target).eval()
    name = Path(model["weights"]).name if model.get("weights") else str(model.get("size", "gpt2"))
    return UsableModel(
        "instruct",
        gpt,
        prompt_style or "alpaca",
        name=name,
        source=str(model.get("weights") or name),
        spec=dict(model),
    )


def _run_dir_of(checkpoint: Path) -> Path | None:
    """The run folder a checkpoint sits in (`RUN/checkpoints/x.ckpt` -> RUN), if it looks like one."""
    parent = checkpoint.resolve().parent
    folder = parent.parent if parent.name == "checkpoints" else parent
    return folder if (folder / "config.yaml").is_file() or (folder / "metrics.json").is_file() else None


def _metrics(run_dir: Path | None) -> dict[str, Any]:
    path = run_dir / "metrics.json" if run_dir is not None else None
    if path is None or not path.is_file():
        return {}
    return dict(json.loads(path.read_text(encoding="utf-8")))
