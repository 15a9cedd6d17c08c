"""A real `train.py experiment=quickstart` run directory, trained once per session for the evaluation tests.

Import the fixture into a test module (`from run_dir_fixture import quickstart_run`); whichever module
asks first trains (a short run, ~10-25 s), later ones reuse the folder. Tests must not change it: they
evaluate a `copy_run` of it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
TRAIN = (
    "experiment=quickstart",
    "trainer.max_epochs=1",
    "++trainer.max_steps=6",  # ++: set whether or not the trainer config has the key
    "trainer.val_check_interval=3",  # two validations: a validation curve, not a point
    "generate.max_new_tokens=8",
)


def train_once(base: Path) -> Path:
    """The session's quickstart run under `base`, trained on first use."""
    run_dir = base / "quickstart-run"
    if not (run_dir / "metrics.json").is_file():
        env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
        command = [sys.executable, "train.py", *TRAIN, f"hydra.run.dir={run_dir}"]
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    return run_dir


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished quickstart run directory (read-only: copy it with `copy_run` before evaluating)."""
    return train_once(tmp_path_factory.getbasetemp())


def copy_run(run_dir: Path, destination: Path) -> Path:
    """A copy of a run dir whose checkpoints/ is a link to the original's (checkpoints are only read)."""
    shutil.copytree(run_dir, destination, ignore=shutil.ignore_patterns("checkpoints"))
    (destination / "checkpoints").symlink_to(run_dir / "checkpoints", target_is_directory=True)
    return destination


def evaluate_config(*overrides: str) -> DictConfig:
    """conf/evaluate.yaml composed with `overrides`, as `python evaluate.py ...` would see it."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="evaluate", overrides=list(overrides))
