"""The model summary a run prints: Lightning's, without the FLOPs it cannot count for our tasks."""

from __future__ import annotations

import logging
from typing import Any

from lightning.pytorch.callbacks import ModelSummary
from lightning.pytorch.utilities.model_summary import get_formatted_model_size, get_human_readable_count

log = logging.getLogger(__name__)


class ParameterSummary(ModelSummary):
    """Lightning's model summary without its FLOPs column and total, which read 0 for our tasks.

    Lightning counts FLOPs only by running an `example_input_array`, which a task with batches of varying
    length does not have; the FLOPs that matter are logged per step (`train/device/flops_per_sec`, MFU).
    """

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int = 0,
        **summarize_kwargs: Any,
    ) -> None:
        columns = [(name, values) for name, values in summary_data if name != "FLOPs"]
        widths = [max(len(name), *(len(str(v)) for v in values)) for name, values in columns]
        rows = [[name for name, _ in columns], *zip(*(values for _, values in columns), strict=True)]
        table = [" | ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)) for row in rows]
        totals = {
            "Trainable params": get_human_readable_count(trainable_parameters),
            "Non-trainable params": get_human_readable_count(total_parameters - trainable_parameters),
            "Total params": get_human_readable_count(total_parameters),
            "Total estimated model params size (MB)": get_formatted_model_size(model_size),
            "Modules in train mode": total_training_modes["train"],
            "Modules in eval mode": total_training_modes["eval"],
        }
        rule = "-" * max(len(line) for line in table)
        lines = [table[0], rule, *table[1:], rule, *(f"{value:<10} {name}" for name, value in totals.items())]
        log.info("\n%s", "\n".join(lines))
