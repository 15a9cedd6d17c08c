"""`python train.py experiment=quickstart` end to end, offline, with every artifact a run promises."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quickstart_writes_every_artifact(readme_quickstart: Path) -> None:
    run_dir = readme_quickstart  # `python train.py experiment=quickstart` as README shows it
    config = (run_dir / "config.yaml").read_text()
    assert "size: tiny" in config and "${" not in config  # resolved
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir())[-1] == "last.ckpt"
    assert any(p.name.startswith("best-") for p in (run_dir / "checkpoints").iterdir())
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["prompt_style"] == "alpaca"

    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("train/loss", "best_val/loss", "test/loss", "test/ppl"):
        assert isinstance(metrics[key], float)
    # Throughput: ours (non-padding tokens) and Lightning's ThroughputMonitor (no MFU on a CPU).
    for key in ("train/target_tokens_per_s", "train/device/samples_per_sec", "train/device/items_per_sec"):
        assert metrics[key] > 0
    assert metrics["train/device/flops_per_sec"] > 0 and "train/device/mfu" not in metrics
    assert metrics["peak_memory_gib"] > 0
    assert metrics["records"] == {"train": 102, "test": 12, "val": 6}

    responses = json.loads((run_dir / "test_responses.json").read_text())
    assert len(responses) == 12
    assert {"instruction", "input", "output", "model_response"} <= set(responses[0])

    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    assert {"train/loss", "val/loss", "val/ppl"} <= set(events.Tags()["scalars"])
    assert any(tag.startswith("val_samples/") for tag in events.Tags()["tensors"])
