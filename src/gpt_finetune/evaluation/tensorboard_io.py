"""Read a run's TensorBoard scalars and add evaluation results to its event files."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

Series = list[tuple[int, float]]


def read_scalars(log_dir: Path) -> dict[str, Series]:
    """Every scalar tag in the event files directly in `log_dir` as (step, value) pairs; {} if none."""
    if not log_dir.is_dir() or not any(log_dir.glob("events.out.tfevents.*")):
        return {}
    quiet = logging.getLogger("tensorboard")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # it logs every event file it opens at INFO
    try:
        events = EventAccumulator(str(log_dir), size_guidance={SCALARS: 0}).Reload()
    finally:
        quiet.setLevel(level)
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()[SCALARS]}


def add_summaries(
    log_dir: Path, step: int, scalars: Mapping[str, float | None], texts: Mapping[str, str] | None = None
) -> None:
    """Append scalars (None skipped) and markdown texts at `step` to a new event file in `log_dir`."""
    from torch.utils.tensorboard import SummaryWriter  # imported late: it pulls in much of tensorboard

    with SummaryWriter(log_dir=str(log_dir)) as writer:
        for tag, value in scalars.items():
            if value is not None:
                writer.add_scalar(tag, value, global_step=step)
        for tag, text in (texts or {}).items():
            writer.add_text(tag, text, global_step=step)
