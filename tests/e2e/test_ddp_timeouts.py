"""A hung rank does not hang a job: a collective timeout ends it, SIGTERM ends it within seconds, and no rank
outlives it (Lightning's SIGTERM handler alone never runs in a rank blocked in a collective)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ddp_faults import alive, end_job, train_job, wait_for

HANG = ("+callbacks.fault._target_=ddp_faults.HangAt", "+callbacks.fault.rank=1", "+callbacks.fault.step=2")
COMMON = ("callbacks=default", "generate.enabled=false", "trainer.max_steps=6")


def hung_rank(job: subprocess.Popen, marker: Path, log: Path) -> int:
    """The pid of the rank that hung, once it has (the job must still run)."""
    if not wait_for(lambda: marker.exists() or job.poll() is not None, 180) or not marker.exists():
        pytest.fail(f"no rank hung (exit {job.poll()}): {log.read_text()[-3000:]}")
    return int(marker.read_text())


@pytest.mark.slow
def test_a_collective_timeout_ends_a_job_whose_rank_hangs(tmp_path: Path) -> None:
    log, marker = tmp_path / "log.txt", tmp_path / "hung.pid"
    job = train_job(
        log,
        *COMMON,
        *HANG,
        f"+callbacks.fault.marker={marker}",
        "trainer.strategy.timeout.minutes=0.25",  # 15 s
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    try:
        hung = hung_rank(job, marker, log)
        try:
            code = job.wait(timeout=90)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"still running 90 s after rank 1 hung, with a 15 s collective timeout: {log.read_text()}"
            )
        assert code == 2
        text = log.read_text()
        errors = [line for line in text.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "Timed out" in errors[0]
        assert "trainer.strategy.timeout.minutes" in errors[0]
        assert "Traceback" not in text
        assert wait_for(lambda: not alive(hung), 10), "the hung rank outlived the job"
    finally:
        end_job(job)


@pytest.mark.slow
def test_sigterm_ends_a_job_whose_rank_hangs_within_seconds(tmp_path: Path) -> None:
    log, marker = tmp_path / "log.txt", tmp_path / "hung.pid"
    job = train_job(
        log,
        *COMMON,
        *HANG,
        f"+callbacks.fault.marker={marker}",
        "callbacks.sigterm_deadline.grace_s=3",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    try:
        hung = hung_rank(job, marker, log)
        time.sleep(1)  # rank 0 now waits for rank 1 in the step's gradient all-reduce
        job.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        try:
            code = job.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running 60 s after SIGTERM: {log.read_text()[-3000:]}")
        took = time.monotonic() - sent
        assert code == 143, log.read_text()[-3000:]
        assert took < 15, f"SIGTERM took {took:.1f} s to end the job"
        assert "error: rank 0 still running 3 s after SIGTERM" in log.read_text()
        assert wait_for(lambda: not alive(hung), 10), "the hung rank outlived the job"
    finally:
        end_job(job)


BLOCKED = """
import signal, sys, time
from types import SimpleNamespace
from gpt_finetune.callbacks.sigterm_deadline import SigtermDeadline
flag = []
signal.signal(signal.SIGTERM, lambda *_: flag.append(1))  # like Lightning's: only sets a flag
trainer = SimpleNamespace(global_rank=0, local_rank=0, world_size=1, strategy=SimpleNamespace(launcher=None))
SigtermDeadline(grace_s=1, poll_s=0.1).setup(trainer, None, "fit")
print("ready", flush=True)
time.sleep(60)  # nothing here looks at the flag, as in a rank blocked in a collective
"""


def test_sigterm_deadline_ends_a_process_that_never_checks_the_flag() -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", BLOCKED], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout.readline() == "ready\n", process.stderr.read()
        process.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        code = process.wait(timeout=30)
        assert code == 143 and time.monotonic() - sent < 10
        assert process.stderr.read().splitlines() == [
            "error: rank 0 still running 1 s after SIGTERM (a rank hung or blocked in a collective?; "
            "callbacks.sigterm_deadline.grace_s sets the deadline); exiting with 143"
        ]
    finally:
        process.kill()
        process.wait()
