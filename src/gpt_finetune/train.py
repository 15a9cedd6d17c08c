"""`run(cfg)`: seed, instantiate, fit, test with the best checkpoint, write the run's artifacts."""

from __future__ import annotations

import logging
import re
import resource
import sys
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException
from omegaconf import DictConfig, OmegaConf

from gpt_finetune.artifacts import write_json, write_text
from gpt_finetune.checkpointing import LastCheckpoint
from gpt_finetune.errors import UserError

log = logging.getLogger(__name__)
PRECISIONS = ("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true", "64")


def bundled_path(name: str) -> str:
    """Absolute path of a data file shipped inside the package (`${bundled:sample_instructions.json}`)."""
    path = resources.files("gpt_finetune.data") / name
    if not path.is_file():
        raise UserError(f"no bundled data file {name!r} in gpt_finetune/data")
    return str(path)


if not OmegaConf.has_resolver("bundled"):
    OmegaConf.register_new_resolver("bundled", bundled_path)


def main(cfg: DictConfig) -> float | None:
    """Entry point for `train.py`: `run`, with user-kind failures as one line on stderr.

    A single run then exits with code 2; a job of a multirun writes the line to `error.txt` in its run dir
    and returns NaN (a failed trial to sweepers), so the sweep goes on.
    """
    try:
        return run(cfg)
    except SIGTERMException:
        print(
            f"error: stopped by SIGTERM; resume with: python train.py resume={cfg.output_dir}",
            file=sys.stderr,
        )
        raise SystemExit(143) from None
    except Exception as error:
        message = user_failure(error)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        if not in_multirun():
            raise SystemExit(2) from None
        write_text(Path(cfg.output_dir) / "error.txt", f"{message}\n")
        return float("nan")


def user_failure(error: BaseException | None) -> str | None:
    """The one-line message of a failure the user can fix, found in `error` or what it wraps (Hydra's
    instantiate wraps what a constructor raises): our UserError, Lightning's settings checks, CUDA OOM, a
    collective that timed out."""
    while error is not None:
        if isinstance(error, UserError):
            return str(error)
        if isinstance(error, MisconfigurationException):
            return " ".join(str(error).split())
        if isinstance(error, torch.cuda.OutOfMemoryError):
            return (
                f"CUDA out of memory ({' '.join(str(error).split())[:160]}); lower data.batch_size "
                "(trainer.accumulate_grad_batches keeps the effective batch), or set "
                "model.gradient_checkpointing=true or trainer.precision=bf16-mixed"
            )
        if isinstance(error, torch.distributed.DistError) or "Timed out waiting" in str(error):
            return (
                f"a collective operation between the ranks failed ({' '.join(str(error).split())[:160]}): "
                "a rank hung or died, see its train_ddp_process_<rank>.log; if a step legitimately takes "
                "longer, raise trainer.strategy.timeout.minutes"
            )
        error = error.__cause__
    return None


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def run(cfg: DictConfig) -> float | None:
    """Train and test one configuration; returns the monitored metric (for sweepers)."""
    started = time.perf_counter()
    if cfg.get("resume") is not None:
        cfg = resumed_config(cfg)
    check_config(cfg)
    out = Path(cfg.output_dir)
    write_text(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    L.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate(cfg.data, _convert_="all")
    task = instantiate(cfg.task, _convert_="all")
    check_fits(cfg, task)
    loggers = [instantiate(c) for c in cfg.logger.values() if c is not None]
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    if not loggers:  # a learning-rate monitor has nowhere to write
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    trainer.fit(task, datamodule=datamodule, ckpt_path=cfg.ckpt_path, weights_only=True)
    validate_if_never_validated(trainer, task, datamodule, cfg.monitor)
    # Logged metrics hold what callbacks logged directly (throughput, MFU); callback metrics the task's.
    logged = {**trainer.logged_metrics, **trainer.callback_metrics}
    fit_metrics = {k: float(v) for k, v in logged.items() if k.startswith(("train/", "val/"))}
    checkpoint = next(
        (c for c in callbacks if isinstance(c, ModelCheckpoint) and c.monitor == cfg.monitor), None
    )
    best = checkpoint.best_model_path if checkpoint is not None and checkpoint.best_model_path else None
    best_score = monitored_value(trainer, checkpoint, cfg.monitor)

    # Testing restores the tested weights; callbacks write the task's test artifacts (responses, predictions).
    test_on = cfg.get("test_on", "best")
    tested = best if test_on == "best" else None  # None: the final weights, still in memory
    last = next((c.path for c in callbacks if isinstance(c, LastCheckpoint) and c.path.is_file()), None)
    steps, epochs = trainer.global_step, trainer.current_epoch
    tester = trainer
    if isinstance(trainer.strategy, FSDPStrategy):
        # Lightning does not wrap a task that FSDP has wrapped again: a fresh task and Trainer test.
        tested = tested or (str(last) if last is not None else None)
        if tested is None:
            raise UserError("testing under FSDP reads a checkpoint; keep callbacks.end_checkpoint")
        task = instantiate(cfg.task, _convert_="all")
        tester = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    tester.test(task, datamodule=datamodule, ckpt_path=tested, weights_only=True)
    test_metrics = {k: v.tolist() for k, v in tester.callback_metrics.items() if k.startswith("test/")}
    metrics: dict[str, Any] = {
        **fit_metrics,
        f"best_{cfg.monitor}": best_score,
        **test_metrics,
        "best_checkpoint": best,
        "test_on": test_on,
        "tested_checkpoint": tested or (str(last) if last is not None else None),
        "global_step": steps,
        "epochs": epochs,
        "records": {name: len(part) for name, part in datamodule.splits.items()},
        "seconds": time.perf_counter() - started,
        "peak_memory_gib": peak_memory_gib(trainer.strategy.root_device),
    }
    if trainer.is_global_zero:
        write_json(out / "metrics.json", metrics)
        log.info("wrote %s", out / "metrics.json")
    return best_score


def validate_if_never_validated(
    trainer: L.Trainer, task: L.LightningModule, datamodule: L.LightningDataModule, monitor: str
) -> None:
    """A run that ended before its first validation validates its final weights once, so that it reports
    (and returns to sweepers) a monitored value."""
    if monitor in trainer.callback_metrics or not trainer.limit_val_batches:
        return
    log.warning("training ended before its first validation; validating the final weights for %s", monitor)
    trainer.validate(task, datamodule=datamodule, verbose=False, weights_only=True)


def resumed_config(cfg: DictConfig) -> DictConfig:
    """The interrupted run's own config, its last checkpoint as `ckpt_path`, plus `key=value` overrides.

    Every key override applies (`+`, `++` and `~` too), also to the keys that the config derives from it
    (`generate.top_k` also sets `callbacks.test_responses.top_k`); group choices (`trainer=cpu`) are fixed by
    the run and refused in one line.
    """
    run_dir = Path(cfg.resume)
    last, saved = run_dir / "checkpoints" / "last.ckpt", run_dir / "config.yaml"
    if not last.is_file() or not saved.is_file():
        raise UserError(f"{run_dir}: nothing to resume (needs config.yaml and checkpoints/last.ckpt)")
    resumed = OmegaConf.load(saved)
    if HydraConfig.initialized():
        groups = set(HydraConfig.get().runtime.choices)
        derived = derived_keys(OmegaConf.to_container(cfg, resolve=False))
        for override in OverridesParser.create().parse_overrides(list(HydraConfig.get().overrides.task)):
            key = override.key_or_group
            if key == "resume":
                continue
            if key in groups:
                raise UserError(
                    f"resume keeps the run's config groups; {override.input_line} would replace the group "
                    f"'{key}': set its keys instead (e.g. {key}.<key>=value), or start a new run from the "
                    f"checkpoint: python train.py ckpt_path={last} {override.input_line}"
                )
            apply_override(resumed, override, key)
            for target, source in derived:
                if key == source or key.startswith(f"{source}."):
                    path = target + key[len(source) :]
                    if OmegaConf.select(resumed, path.rpartition(".")[0]) is not None:  # still configured
                        apply_override(resumed, override, path)
    resumed.ckpt_path, resumed.resume = str(last), None
    log.info("resuming %s from %s", run_dir, last)
    return resumed


def apply_override(config: DictConfig, override: Override, key: str) -> None:
    """Set (or with `~key` delete) `key` in `config` as a Hydra command-line override would."""
    if override.is_delete():
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(config, parent) if parent else config
        if node is not None and leaf in node:
            del node[leaf]
        return
    OmegaConf.update(config, key, override.value(), merge=False, force_add=True)


def derived_keys(raw: Any, path: str = "") -> list[tuple[str, str]]:
    """(key, source) for every config value that is exactly `${source}`, e.g. (`task.model`, `model`)."""
    if isinstance(raw, dict):
        return [pair for k, v in raw.items() for pair in derived_keys(v, f"{path}.{k}" if path else str(k))]
    match = re.fullmatch(r"\$\{([\w.]+)\}", raw) if isinstance(raw, str) else None
    return [(path, match.group(1))] if match is not None else []


def monitored_value(trainer: L.Trainer, checkpoint: ModelCheckpoint | None, monitor: str) -> float:
    """The best checkpoint's score, or without checkpointing the monitored metric's last value."""
    if checkpoint is not None and checkpoint.best_model_score is not None:
        return float(checkpoint.best_model_score)
    last = trainer.callback_metrics.get(monitor)
    if last is None:
        log.warning("no %s was logged: returning NaN as the monitored value; check monitor=", monitor)
        return float("nan")
    return float(last)


def peak_memory_gib(device: torch.device) -> float:
    """Peak accelerator memory allocated by this process, or its peak resident memory on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def check_config(cfg: DictConfig) -> None:
    """Fail before any work on settings that cannot run; all problems in one line."""
    problems = []
    precision = str(cfg.trainer.get("precision", "32-true"))
    if precision not in PRECISIONS:
        problems.append(f"trainer.precision={precision} is not one of {', '.join(PRECISIONS)}")
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        problems.append(f"trainer.accelerator={accelerator} but no CUDA device is available; use trainer=cpu")
    elif precision.startswith("16") and not on_gpu:
        problems.append(f"trainer.precision={precision} needs a GPU; on a CPU use bf16-mixed or 32-true")
    clips = (cfg.trainer.get("gradient_clip_val") or 0) > 0
    if precision in ("16-mixed", "16") and cfg.task.get("fused_adamw") is True and clips:
        # A fused AdamW unscales the GradScaler's gradients inside its step, after clipping's turn.
        problems.append(
            "task.fused_adamw=true cannot clip 16-mixed gradients (trainer.gradient_clip_val); "
            "set task.fused_adamw=null (unfused when clipping) or use trainer.precision=bf16-mixed"
        )
    if cfg.data.get("batch_size", 1) < 1:
        problems.append(f"data.batch_size={cfg.data.batch_size} must be >= 1")
    if cfg.get("test_on", "best") not in ("best", "last"):
        problems.append(f"test_on={cfg.test_on} is not one of best, last")
    mismatch = task_data_mismatch(cfg)
    if mismatch is not None:
        problems.append(mismatch)
    if problems:
        raise UserError("; ".join(problems))


@dataclass(frozen=True)
class DataKind:
    """A kind of data, the task that trains on it and a recipe that pairs the two."""

    name: str
    task: str
    recipe: str


# The data key a task's config reads (`${data.style}`, `${data.labels}`) -> the kind of data that has it.
DATA_KINDS = {
    "style": DataKind("instruction", "task=instruct", "experiment=quickstart"),
    "labels": DataKind("classification", "task=classify", "experiment=spam-quickstart"),
}


def task_data_mismatch(cfg: DictConfig) -> str | None:
    """The task reads a key the data config lacks (`task=instruct data=spam`): the mismatch and the fix."""
    task = OmegaConf.to_container(cfg.task, resolve=False)
    reads = (re.fullmatch(r"\$\{data\.(\w+)\}", v) for v in task.values() if isinstance(v, str))
    missing = [m.group(1) for m in reads if m is not None and m.group(1) not in cfg.data]
    if not missing:
        return None
    key, task_choice, data_choice = missing[0], chosen("task", cfg), chosen("data", cfg)
    needed = DATA_KINDS.get(key)
    found = next((kind for marker, kind in DATA_KINDS.items() if marker in cfg.data), None)
    if needed is None or found is None:
        return f"{task_choice} reads data.{key}, which {data_choice} lacks; add it or choose other data"
    return (
        f"{data_choice} holds {found.name} data but {task_choice} needs {needed.name} data (data.{key}); "
        f"use {found.task} (or {found.recipe})"
    )


def chosen(group: str, cfg: DictConfig) -> str:
    """`group=choice` as given to Hydra, or `group._target_=...` where Hydra did not compose the config."""
    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    if choices.get(group) is not None:
        return f"{group}={choices[group]}"
    return f"{group}._target_={cfg[group].get('_target_')}"


def check_fits(cfg: DictConfig, task: L.LightningModule) -> None:
    """The data's max_length must fit the model's context window."""
    context = task.model.config.context_length
    max_length = cfg.data.get("max_length")
    if max_length is not None and max_length > context:
        raise UserError(
            f"data.max_length={max_length} exceeds model context {context}; lower data.max_length"
        )
