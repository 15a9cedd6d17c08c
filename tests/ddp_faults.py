"""Test-only callbacks that make one rank of a `train.py` DDP subprocess misbehave (on PYTHONPATH=tests),
and the helpers that start, watch and end such a job.

Injected with `+callbacks.fault._target_=ddp_faults.HangAt +callbacks.fault.marker=PATH ...`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L


class HangAt(L.Callback):
    """Rank `rank` stops responding when training batch `step` starts: it writes its pid to `marker`, then
    sleeps (at most `limit_s`, so that even a failed test leaves nothing running for long)."""

    def __init__(self, marker: str, rank: int = 1, step: int = 2, limit_s: float = 300.0) -> None:
        self.marker, self.rank, self.step, self.limit_s = Path(marker), rank, step, limit_s

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            self.marker.write_text(str(os.getpid()))
            time.sleep(self.limit_s)


class SigtermAt(L.Callback):
    """Rank 0 sends itself SIGTERM when training batch `step` starts (as `timeout` or a scheduler would)."""

    def __init__(self, step: int = 2) -> None:
        self.step = step

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_rank == 0 and trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


ROOT = Path(__file__).resolve().parents[1]


def train_job(log: Path, *overrides: str) -> subprocess.Popen:
    """Start `train.py` (tiny model, 2 CPU ranks) in its own session with these callbacks importable."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    command = [sys.executable, "train.py", "experiment=quickstart", "trainer=ddp_cpu", *overrides]
    with log.open("w") as out:
        return subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def end_job(job: subprocess.Popen) -> None:
    """Kill whatever is left of the job's session (its ranks included), e.g. after a failed assertion."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(job.pid, signal.SIGKILL)
    job.wait(timeout=30)


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, ended but not yet reaped by its new parent, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def wait_for(condition: Callable[[], bool], timeout_s: float) -> bool:
    """Poll `condition` until it holds or `timeout_s` passes; whether it held."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True
