"""The whole training command in-process, in the fast tier: compose, `run(cfg)`, every artifact written."""

from __future__ import annotations

import json
import math
from pathlib import Path

from hydra import compose, initialize_config_dir

from gpt_finetune.train import run

CONF = Path(__file__).resolve().parents[2] / "conf"


def test_run_trains_tests_generates_and_returns_the_monitored_value(tmp_path: Path) -> None:
    overrides = [
        "experiment=quickstart",
        f"output_dir={tmp_path}",
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",
        "generate.max_new_tokens=4",
        "callbacks.validation_samples.max_new_tokens=4",
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    best = run(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert math.isfinite(best) and best == metrics["best_val/loss"]
    assert metrics["global_step"] == 4 and metrics["records"] == {"train": 102, "test": 12, "val": 6}
    assert metrics["best_checkpoint"].endswith(("best-step2.ckpt", "best-step4.ckpt"))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir())[-1] == "last.ckpt"
    responses = json.loads((tmp_path / "test_responses.json").read_text())
    assert len(responses) == 12 and all(isinstance(r["model_response"], str) for r in responses)
    assert (tmp_path / "config.yaml").is_file() and any((tmp_path / "tensorboard").rglob("events.*"))
