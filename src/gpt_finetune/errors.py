"""Failures shown to users as a single line without a traceback, and the wrapper every command runs in."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar, overload

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig

from gpt_finetune.artifacts import write_text

T = TypeVar("T")


class UserError(Exception):
    """A problem with the user's input or setup; the message says what and how to fix it."""


@overload
def run_command(command: Callable[[DictConfig], T], cfg: DictConfig, job_dir: None = None) -> T: ...
@overload
def run_command(command: Callable[[DictConfig], T], cfg: DictConfig, job_dir: str) -> T | float: ...
def run_command(command: Callable[[DictConfig], T], cfg: DictConfig, job_dir: str | None = None) -> T | float:
    """`command(cfg)`, a failure the user can fix shown as one `error:` line on stderr and exit code 2.

    In a multirun job (`job_dir` given) the line goes to `<job_dir>/error.txt` instead and NaN is returned
    (a failed trial to sweepers), so the sweep goes on.
    """
    try:
        return command(cfg)
    except Exception as error:
        message = user_failure(error)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        if job_dir is None or not in_multirun():
            raise SystemExit(2) from None
        write_text(Path(job_dir) / "error.txt", f"{message}\n")
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
