"""Benchmark rows timed in turns, and the lines about the machine that every such benchmark prints.

Each row runs in its own spawned process; all are alive at once and take their timed steps in turns (row 1
step 1, row 2 step 1, ...), so that load from other programs on the machine falls on all rows alike. A row's
worker, `worker(row, *args, conn)`, sends one message once built, then answers each go (`None`) with one timed
step's figures, then sends one last message.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass
class RowRun:
    """What a row's worker sent: once built, once per timed step, and at the end."""

    first: Any
    steps: list[Any]
    last: Any


def run_in_turns(
    worker: Callable[..., None], rows: Sequence[Any], args: tuple[Any, ...], steps: int, show: bool = False
) -> list[RowRun]:
    """Run `worker(row, *args, conn)` for every row, `steps` timed steps each, in turns; `show` prints the
    rounds as they finish."""
    ctx = mp.get_context("spawn")
    conns, procs = [], []
    for row in rows:
        parent, child = ctx.Pipe()
        procs.append(ctx.Process(target=worker, args=(row, *args, child), daemon=True))
        procs[-1].start()
        conns.append(parent)
    runs = [RowRun(conn.recv(), [], None) for conn in conns]
    if show:
        print("timed rounds done:", end="", flush=True)
    for i in range(steps):
        for conn, run in zip(conns, runs, strict=True):
            conn.send(None)
            run.steps.append(conn.recv())
        if show:
            print(f" {i + 1}", end="", flush=True)
    if show:
        print()
    for conn, proc, run in zip(conns, procs, runs, strict=True):
        run.last = conn.recv()
        proc.join()
    return runs


def native_bf16() -> str:
    """Which bf16 instructions this CPU has, from torch and /proc/cpuinfo."""
    flags: set[str] = set()
    with contextlib.suppress(OSError):
        flags = set(Path("/proc/cpuinfo").read_text().split())
    avx = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: "avx512_bf16" in flags)()
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: "amx_bf16" in flags)()
    return f"avx512_bf16 {'yes' if avx else 'no'}, amx_bf16 {'yes' if amx else 'no'}"


def machine_line(threads: int) -> str:
    return f"torch {torch.__version__}, {threads} CPU threads, native bf16: {native_bf16()}"


@contextlib.contextmanager
def load_reported() -> Iterator[None]:
    """Print the load average before and after the rows ran (other programs slow every row alike)."""
    load = os.getloadavg()[0]
    yield
    print(f"load average before / after: {load:.1f} / {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)\n")
