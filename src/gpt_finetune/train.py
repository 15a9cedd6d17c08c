"""`python train.py`: seed, instantiate, fit, test the best (or last) weights, write the run's artifacts."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import Logger
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from gpt_finetune.artifacts import write_json, write_text
from gpt_finetune.callbacks.checkpointing import LastCheckpoint
from gpt_finetune.config import check_config, check_fits, register_resolvers, resumed_config
from gpt_finetune.console import quiet_lightning
from gpt_finetune.devices import peak_memory_gib
from gpt_finetune.errors import UserError, run_command
from gpt_finetune.evaluation.run_dir import find_checkpoint
from gpt_finetune.loggers.build import build_loggers
from gpt_finetune.loggers.records import close_loggers, log_config, log_results

log = logging.getLogger(__name__)


def main(cfg: DictConfig) -> float | None:
    """Entry point for `train.py`: `run` inside `run_command` (user-kind failures as one line; in a sweep,
    the job's `error.txt`), and SIGTERM as exit code 143 with the resume command."""
    register_resolvers()
    try:
        return run_command(run, cfg, job_dir=cfg.output_dir)
    except SIGTERMException:
        print(
            f"error: stopped by SIGTERM; resume with: python train.py resume={cfg.output_dir}",
            file=sys.stderr,
        )
        raise SystemExit(143) from None


def run(cfg: DictConfig) -> float:
    """Train and test one configuration; returns the monitored metric (for sweepers)."""
    started = time.perf_counter()
    quiet_lightning()
    if cfg.get("resume") is not None:
        cfg = resumed_config(cfg)
    check_config(cfg)
    apply_init_from(cfg)
    loggers = build_loggers(cfg.logger)  # before any work: a tracker whose library is missing is one line
    write_text(Path(cfg.output_dir) / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    try:
        log_config(loggers, cfg)
        best_score = train_and_test(cfg, loggers, started)
    except BaseException:
        close_loggers(loggers, failed=True)
        raise
    close_loggers(loggers, failed=False)
    return best_score


def train_and_test(cfg: DictConfig, loggers: list[Logger], started: float) -> float:
    """Fit, test the best (or last) weights, write metrics.json and record the results in the loggers."""
    out = Path(cfg.output_dir)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data, _convert_="all")
    task = instantiate(cfg.task, _convert_="all")
    check_fits(cfg, task)
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
    last = next((str(c.path) for c in callbacks if isinstance(c, LastCheckpoint) and c.path.is_file()), None)
    tested = best if test_on == "best" else None  # None: the final weights, still in memory
    steps, epochs = trainer.global_step, trainer.current_epoch
    tester = trainer
    if isinstance(trainer.strategy, FSDPStrategy):
        tester, task, tested = fsdp_tester(cfg, callbacks, loggers, tested or last)
    tester.test(task, datamodule=datamodule, ckpt_path=tested, weights_only=True)
    test_metrics = {k: v.tolist() for k, v in tester.callback_metrics.items() if k.startswith("test/")}
    metrics: dict[str, Any] = {
        **fit_metrics,
        f"best_{cfg.monitor}": best_score,
        **test_metrics,
        "best_checkpoint": best,
        "test_on": test_on,
        "tested_checkpoint": tested or last,
        "global_step": steps,
        "epochs": epochs,
        "records": {name: len(part) for name, part in datamodule.splits.items()},
        "seconds": time.perf_counter() - started,
        "peak_memory_gib": peak_memory_gib(trainer.strategy.root_device),
    }
    if trainer.is_global_zero:
        write_json(out / "metrics.json", metrics)
        log.info("wrote %s", out / "metrics.json")
        log_results(loggers, cfg, metrics, [out / "config.yaml", out / "metrics.json"])
    return best_score


def apply_init_from(cfg: DictConfig) -> None:
    """`init_from=RUN_DIR | FILE.ckpt`: the instruction run's tested checkpoint becomes `init_from`, its
    model spec `model` (no download: the checkpoint has every weight) and its prompt style `data.style`."""
    source = cfg.get("init_from")
    if source is None:
        return
    path = Path(str(source)).expanduser()
    checkpoint = path if path.is_file() else find_checkpoint(path) if path.is_dir() else None
    if checkpoint is None:
        raise UserError(
            f"init_from={source}: no such run dir or checkpoint; give the output folder of a train.py "
            "instruction run (or its .ckpt)"
        )
    try:
        hparams = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)["hyper_parameters"]
    except Exception:  # truncated, not a checkpoint: one line, no trace
        raise UserError(f"init_from={source}: cannot read {checkpoint}; give a train.py run") from None
    if "prompt_style" not in hparams or "model" not in hparams:
        raise UserError(f"init_from={source}: {checkpoint} is not an instruction run's checkpoint")
    cfg.model = {**hparams["model"], "pretrained": False, "weights": None}
    cfg.data.style = hparams["prompt_style"]
    cfg.init_from = str(checkpoint.resolve())
    log.info("init_from: %s (prompt style %s)", checkpoint, hparams["prompt_style"])


def fsdp_tester(
    cfg: DictConfig, callbacks: list[L.Callback], loggers: list[Logger], checkpoint: str | None
) -> tuple[L.Trainer, L.LightningModule, str]:
    """A fresh Trainer and task to test `checkpoint` (FSDP does not wrap a task it has wrapped already)."""
    if checkpoint is None:
        raise UserError("testing under FSDP reads a checkpoint; keep callbacks.end_checkpoint")
    tester = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    return tester, instantiate(cfg.task, _convert_="all"), checkpoint


def validate_if_never_validated(
    trainer: L.Trainer, task: L.LightningModule, datamodule: L.LightningDataModule, monitor: str
) -> None:
    """A run that ended before its first validation validates its final weights once, so that it reports
    (and returns to sweepers) a monitored value."""
    if monitor in trainer.callback_metrics or not trainer.limit_val_batches:
        return
    log.warning("training ended before its first validation; validating the final weights for %s", monitor)
    trainer.validate(task, datamodule=datamodule, verbose=False, weights_only=True)


def monitored_value(trainer: L.Trainer, checkpoint: ModelCheckpoint | None, monitor: str) -> float:
    """The best checkpoint's score, or without checkpointing the monitored metric's last value."""
    if checkpoint is not None and checkpoint.best_model_score is not None:
        return float(checkpoint.best_model_score)
    last = trainer.callback_metrics.get(monitor)
    if last is None:
        log.warning("no %s was logged: returning NaN as the monitored value; check monitor=", monitor)
        return float("nan")
    return float(last)
