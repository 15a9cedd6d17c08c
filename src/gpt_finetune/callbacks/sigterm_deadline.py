"""After SIGTERM, every rank of a run ends within a deadline, even one blocked in a collective."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading
from typing import Any

import lightning as L

SIGTERM_EXIT = 143  # 128 + SIGTERM, what a shell reports for a process ended by SIGTERM


class SigtermDeadline(L.Callback):
    """End this process `grace_s` seconds after SIGTERM (exit 143), if the graceful path has not ended it.

    Lightning's SIGTERM handler (stop after the batch, then `last.ckpt` is saved) is Python code, so it runs
    only when the main thread is between bytecodes; a rank blocked in a collective that waits for a hung
    rank never gets there, and neither would the ranks it launched. The C-level handler still writes the
    signal number to the `signal.set_wakeup_fd` pipe: a daemon thread reads it and, when the deadline
    passes, kills the ranks this process launched and exits. A rank that Lightning launched also exits
    when its launcher (rank 0) is gone, e.g. after a collective timeout there, so no rank outlives the job.
    """

    def __init__(self, grace_s: float = 60.0, poll_s: float = 1.0) -> None:
        self.grace_s, self.poll_s = grace_s, poll_s
        self._watch: _Watch | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._watch is None and threading.current_thread() is threading.main_thread():
            self._watch = _Watch(trainer, self.grace_s, self.poll_s)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._watch is not None and self._watch.stop():
            self._watch = None


class _Watch:
    """The wakeup pipe and the daemon thread that reads it (and checks that the launcher still lives)."""

    def __init__(self, trainer: L.Trainer, grace_s: float, poll_s: float) -> None:
        self.grace_s, self.poll_s = grace_s, poll_s
        self.rank = trainer.global_rank
        self.launcher: Any = trainer.strategy.launcher
        # Lightning's launcher starts ranks > 0 as child processes of rank 0 (torchrun / SLURM: none).
        launched_here = self.launcher is not None and trainer.world_size > 1 and trainer.local_rank > 0
        self.parent = os.getppid() if launched_here else None
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.write_fd, False)  # set_wakeup_fd requires it: a signal handler must not block
        self.previous_fd = signal.set_wakeup_fd(self.write_fd)
        self.triggered = threading.Event()
        self.stopped = threading.Event()
        threading.Thread(target=self._run, name="sigterm-deadline", daemon=True).start()

    def stop(self) -> bool:
        """Stop watching, unless SIGTERM came: then the deadline stands. Whether it stopped."""
        if self.triggered.is_set():
            return False
        self.stopped.set()
        with contextlib.suppress(ValueError):  # not the main thread: keep the fd open, the handler writes it
            signal.set_wakeup_fd(self.previous_fd)
            os.close(self.write_fd)
        return True

    def _run(self) -> None:
        while not self.stopped.is_set():
            ready, _, _ = select.select([self.read_fd], [], [], self.poll_s)
            if ready and signal.SIGTERM in os.read(self.read_fd, 64) and not self.stopped.is_set():
                self.triggered.set()
                if not self.stopped.wait(self.grace_s):
                    self._exit(
                        f"still running {self.grace_s:g} s after SIGTERM (a rank hung or blocked in a "
                        "collective?; callbacks.sigterm_deadline.grace_s sets the deadline)",
                        SIGTERM_EXIT,
                    )
            if self.parent is not None and os.getppid() != self.parent:
                self._exit(f"stopping: its launcher (rank 0, pid {self.parent}) has ended", 1)
        os.close(self.read_fd)

    def _exit(self, reason: str, code: int) -> None:
        """Kill the ranks this process launched, say why in one line, exit now (no cleanup can hang)."""
        if self.launcher is not None and hasattr(self.launcher, "kill"):
            with contextlib.suppress(Exception):
                self.launcher.kill(signal.SIGKILL)
        print(f"error: rank {self.rank} {reason}; exiting with {code}", file=sys.stderr, flush=True)
        os._exit(code)
