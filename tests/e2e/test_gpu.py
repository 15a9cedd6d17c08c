"""The GPU paths a CPU cannot run: 16-mixed (GradScaler) and bf16-mixed with clipping, compile on CUDA, FSDP.

Marked `gpu`; each skips without CUDA and runs wherever CUDA is available (`pytest -m gpu`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from gpt_finetune.train import run

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]
TINY_RUN = (
    "experiment=quickstart",
    "trainer=gpu",
    "trainer.max_steps=6",
    "trainer.val_check_interval=3",
    "generate.max_new_tokens=8",
)


def run_in_process(tmp_path: Path, *overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[*TINY_RUN, f"output_dir={tmp_path}", *overrides])
    assert math.isfinite(run(cfg))
    return json.loads((tmp_path / "metrics.json").read_text())


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed", "bf16-true", "32-true"])
@pytest.mark.parametrize("clip", ["null", "1.0"])
def test_every_gpu_precision_trains_with_and_without_clipping(
    tmp_path: Path, precision: str, clip: str
) -> None:
    metrics = run_in_process(tmp_path, f"trainer.precision={precision}", f"trainer.gradient_clip_val={clip}")
    assert metrics["global_step"] == 6 and math.isfinite(metrics["test/loss"])
    assert len(json.loads((tmp_path / "test_responses.json").read_text())) == 12


def test_compiled_training_on_cuda_reaches_the_eager_losses(tmp_path: Path) -> None:
    eager = run_in_process(tmp_path / "eager", "trainer.precision=bf16-mixed", "trainer.deterministic=true")
    compiled = run_in_process(
        tmp_path / "compiled",
        "trainer.precision=bf16-mixed",
        "trainer.deterministic=true",
        "task.compile=true",
    )
    assert compiled["best_val/loss"] == pytest.approx(eager["best_val/loss"], rel=2e-2)


def test_train_py_under_fsdp_on_the_gpus(tmp_path: Path, run_train) -> None:
    done = run_train(*TINY_RUN, "trainer=fsdp", f"hydra.run.dir={tmp_path}", timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["global_step"] == 6 and math.isfinite(metrics["test/loss"])
    assert len(json.loads((tmp_path / "test_responses.json").read_text())) == 12


@pytest.mark.parametrize("compile", ["false", "true"])
def test_packed_training_on_cuda(tmp_path: Path, compile: str) -> None:
    """The block-diagonal mask through CUDA SDPA (a masked kernel, not flash), eager and compiled."""
    metrics = run_in_process(
        tmp_path, "data.packing=true", "trainer.precision=bf16-mixed", f"task.compile={compile}"
    )
    assert metrics["global_step"] == 6 and math.isfinite(metrics["test/loss"])


@pytest.mark.parametrize("reference", ["frozen", "precomputed"])
def test_dpo_on_cuda_starts_at_ln2(tmp_path: Path, reference: str) -> None:
    run_in_process(tmp_path / "sft")
    pairs = [
        {**r, "chosen": r["model_response"] + " Thank you.", "rejected": r["model_response"]}
        for r in json.loads((tmp_path / "sft" / "test_responses.json").read_text())
    ] * 10  # 120 pairs
    (tmp_path / "pairs.json").write_text(json.dumps(pairs))
    metrics = run_in_process(
        tmp_path / "dpo",
        "task=dpo",
        "data=preferences",
        f"data.path={tmp_path / 'pairs.json'}",
        f"init_from={tmp_path / 'sft'}",
        f"task.reference={reference}",
        "trainer.precision=bf16-mixed",
        "trainer.gradient_clip_val=1.0",
    )
    assert metrics["global_step"] == 6 and math.isfinite(metrics["test/loss"])
    assert 0.0 <= metrics["test/rewards/accuracy"] <= 1.0
