"""A finished `train.py` run directory: where its checkpoint is, its fine-tuned model, its test records."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from gpt_finetune.config import plain_dict
from gpt_finetune.data.instructions import Record
from gpt_finetune.errors import UserError
from gpt_finetune.model import GPT

log = logging.getLogger(__name__)


@dataclass
class Finetuned:
    """A fine-tuned GPT, the prompt style it was trained with, and what its checkpoint says about its data."""

    model: GPT
    prompt_style: str
    data: dict[str, Any]
    global_step: int
    pairs: bool = False  # trained on preference pairs (DPO): `data` describes a PreferenceDataModule


def locate(run_dir: str | None, ckpt_path: str | None) -> tuple[Path, Path | None]:
    """The directory to read and write (a run dir, or the one holding `ckpt_path`) and the checkpoint."""
    if ckpt_path is not None:
        ckpt = Path(ckpt_path).expanduser()
        if not ckpt.is_file():
            raise UserError(f"ckpt_path={ckpt_path}: no such checkpoint file")
        default_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
        folder = Path(run_dir).expanduser() if run_dir is not None else default_dir
    elif run_dir is not None:
        folder = Path(run_dir).expanduser()
        ckpt = None
    else:
        raise UserError("nothing to evaluate; give run_dir=outputs/runs/<run> or ckpt_path=<file.ckpt>")
    if not folder.is_dir():
        raise UserError(f"run_dir={run_dir}: no such directory; give the output folder of a train.py run")
    return folder.resolve(), ckpt if ckpt is not None else find_checkpoint(folder)


def find_checkpoint(run_dir: Path) -> Path | None:
    """The run's tested checkpoint (named in metrics.json, else `best-*.ckpt`), else last.ckpt, else None."""
    folder = run_dir / "checkpoints"
    metrics = run_dir / "metrics.json"
    if metrics.is_file():
        saved = json.loads(metrics.read_text(encoding="utf-8"))
        named = saved.get("tested_checkpoint") or saved.get("best_checkpoint")  # test_on: last or best
        # The run dir may have moved since training: look for the file name in its checkpoints/ too.
        for candidate in (Path(named), folder / Path(named).name) if named else ():
            if candidate.is_file():
                return candidate
    best = sorted(folder.glob("best-*.ckpt"), key=lambda p: p.stat().st_mtime)
    if best:
        return best[-1]
    last = folder / "last.ckpt"
    return last if last.is_file() else None


def run_config(run_dir: Path) -> dict[str, Any]:
    """The run's resolved `config.yaml` as a dict; {} when the run has none."""
    path = run_dir / "config.yaml"
    return plain_dict(OmegaConf.load(path)) if path.is_file() else {}


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A train.py checkpoint's contents (tensors memory-mapped, read as they are used); one line when the
    file is truncated, not a checkpoint, or not loadable weights-only."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:
        raise UserError(
            f"{path}: cannot read the checkpoint ({type(error).__name__}); pass a .ckpt written by train.py"
        ) from None
    if not isinstance(saved, dict):
        raise UserError(f"{path}: not a train.py checkpoint; pass a .ckpt written by train.py")
    return saved


def load_finetuned(
    ckpt: Path,
    device: str | torch.device = "cpu",
    base_weights: str | None = None,
    checkpoint: dict[str, Any] | None = None,
) -> Finetuned:
    """The GPT in a Lightning instruction-tuning checkpoint, built from its saved spec without downloads;
    `checkpoint`: its contents when already read."""
    from gpt_finetune.tasks.dpo import rebuild_task

    checkpoint = checkpoint if checkpoint is not None else read_checkpoint(ckpt)
    hparams = checkpoint.get("hyper_parameters", {})
    model = rebuild_task(checkpoint, str(ckpt), base_weights).model.to(device).eval()
    data = checkpoint.get("datamodule_hyper_parameters", {})
    step = int(checkpoint.get("global_step", 0))
    return Finetuned(model, hparams["prompt_style"], dict(data), step, pairs="beta" in hparams)


def test_records(data: dict[str, Any], source: Path, pairs: bool = False) -> list[Record]:
    """The test split the run was tested on, rebuilt from the data settings saved in its checkpoint
    (preference pairs, their `output` the chosen response, when `pairs`; conversations, when the settings
    have `train_on`)."""
    from gpt_finetune.data.conversation_datamodule import ConversationDataModule
    from gpt_finetune.data.instruct_datamodule import InstructionDataModule
    from gpt_finetune.data.preference_datamodule import PreferenceDataModule

    if "path" not in data:
        raise UserError(
            f"{source}: the checkpoint does not record its data path; cannot rebuild the test split"
        )
    if pairs:
        datamodule: InstructionDataModule | PreferenceDataModule = PreferenceDataModule(**data)
    elif "train_on" in data:
        datamodule = ConversationDataModule(**data)
    else:
        datamodule = InstructionDataModule(**data)
    datamodule.prepare_data()
    datamodule.setup("test")
    return datamodule.splits["test"]
