"""`python predict.py run_dir=RUN text=...`: classify texts with a trained classification run."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from omegaconf import DictConfig

from gpt_finetune.config import register_resolvers
from gpt_finetune.devices import resolve_device
from gpt_finetune.errors import UserError, run_command
from gpt_finetune.evaluation.run_dir import find_checkpoint
from gpt_finetune.serving.loading import load_classifier

log = logging.getLogger(__name__)


def classifier_checkpoint(run_dir: str | None, checkpoint: str | None = None) -> Path:
    """`checkpoint` if given, else the run's tested checkpoint (as `evaluate.py` finds it)."""
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise UserError(f"checkpoint={checkpoint}: no such file; pass a .ckpt written by train.py")
        return path
    if run_dir is None:
        raise UserError("pass run_dir=RUN (the output folder of a train.py run) or checkpoint=PATH")
    found = find_checkpoint(Path(run_dir).expanduser())
    if found is None:
        raise UserError(
            f"run_dir={run_dir}: no checkpoints/*.ckpt; pass the output folder of a train.py run "
            "or checkpoint=PATH"
        )
    return found


def read_texts(text: str | None, file: str | None) -> list[str]:
    """The texts to classify: `text`, or the non-empty lines of `file` (exactly one of them)."""
    if (text is None) == (file is None):
        raise UserError('give exactly one of text="..." or file=PATH (one text per line)')
    if text is not None:
        if not str(text).strip():
            raise UserError('text is empty; pass the text to classify: text="..."')
        return [str(text)]
    assert file is not None  # exactly one of the two
    path = Path(file).expanduser()
    if not path.is_file():
        raise UserError(f"file={file}: no such file; pass a text file with one text per line")
    texts = [line for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    if not texts:
        raise UserError(f"file={file}: no texts; write one text per line")
    return texts


def predict(cfg: DictConfig) -> list[tuple[str, float, str]]:
    """(label, probability, text) for each text of `cfg.text` / `cfg.file`, printed one per line."""
    texts = read_texts(cfg.text, cfg.file)
    device = resolve_device(cfg.device)
    task = load_classifier(classifier_checkpoint(cfg.run_dir, cfg.checkpoint), device)
    probs = task.predict_proba(texts, batch_size=cfg.batch_size)
    results = []
    for text, row in zip(texts, probs, strict=True):
        best = int(row.argmax())
        results.append((task.labels[best], float(row[best]), text))
        print(f"{task.labels[best]}\t{float(row[best]):.4f}\t{text}")
    return results


def literal_text_argv(argv: list[str], *keys: str) -> list[str]:
    """`KEY=...` arguments for each of `keys` (default `text`) quoted for Hydra: commas, quotes, `!` or
    `${` in the value reach the command verbatim."""
    prefixes = tuple(f"{key}=" for key in keys or ("text",))
    quoted: list[str] = []
    for arg in argv:
        if arg.startswith(prefixes):
            key, _, value = arg.partition("=")
            value = re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", value)
            value = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, value)  # Hydra: \ before a quote
            arg = f"{key}='" + value.replace("'", "\\'") + "'"
        quoted.append(arg)
    return quoted


def main(cfg: DictConfig) -> None:
    """Entry point for `predict.py`: user errors as one line on stderr and exit code 2."""
    register_resolvers()
    run_command(predict, cfg)
