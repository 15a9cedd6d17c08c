"""Shared fixtures: tiny GPT configs, ../shared/data, `train.py` as a user runs it, a finished quickstart run.

Support modules that `train.py` subprocesses load from `PYTHONPATH=tests` (test-only callbacks and
strategies) sit beside this file: `train_interrupts.py`, `ddp_faults.py`, `cpu_fsdp.py`.
"""

from __future__ import annotations

import functools
import importlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import lightning as L
import pytest
import torch
from child_signals import default_signal_handlers
from command_lines import run_in_process, train_in_process
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from session_builds import built_once

from gpt_finetune.config import register_resolvers
from gpt_finetune.model import GPT, GPTConfig

register_resolvers()  # configs composed in tests resolve ${bundled:...} as the entry points do


def share_cores_between_workers() -> None:
    """Under `pytest -n N`, each worker (and each process it starts) uses its share of the cores: with
    torch's default of one thread per core, N workers' thread pools contend for the same cores (measured
    on 2 cores, the resume tests with `-n 2`: 3:45 at 2 threads each, 2:30 at 1)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = max(1, cores // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)  # the processes the tests start
        torch.set_num_threads(threads)


share_cores_between_workers()

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
SHARED_DATA = ROOT.parent / "shared" / "data"
# A short quickstart: 6 steps, two validations (a curve, not a point), 8-token responses.
QUICKSTART = (
    "experiment=quickstart",
    "trainer.max_epochs=1",
    "++trainer.max_steps=6",
    "trainer.val_check_interval=3",
    "generate.max_new_tokens=8",
)
Train = Callable[..., subprocess.CompletedProcess]


def train(
    *overrides: str,
    timeout: float = 600,
    script: str = "train.py",
    env: dict[str, str] | None = None,
    cwd: Path = ROOT,
) -> subprocess.CompletedProcess:
    """`python train.py OVERRIDES` (or another `script` of the checkout) run as a user would, from the
    checkout (or `cwd`: its default outputs/ go there), output captured, `env` added; the tests' support
    modules importable (`+callbacks.x._target_=...`).
    """
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | (env or {})
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.run(
        [sys.executable, str(ROOT / script), *overrides],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=default_signal_handlers,
    )


def shared_file(name: str) -> Path:
    """A file from ../shared/data, or skip the test when the folder is not beside the checkout."""
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return path


@pytest.fixture(scope="session")
def run_train() -> Train:
    """`run_train(*overrides, timeout=600)`: a `train.py` subprocess (see `train`)."""
    return train


@pytest.fixture
def command_in_process(capsys: pytest.CaptureFixture[str]) -> Callable[..., subprocess.CompletedProcess]:
    """`command_in_process(script, *args)`: what `python <script>.py ARGS` reports (exit code, stdout,
    stderr), from the command's `main` in this process: for tests of what a command does, not of the process
    (signals, Hydra's job log and .hydra/ folder, a new interpreter's environment)."""

    def run(script: str, *args: str) -> subprocess.CompletedProcess:
        return run_in_process(script, importlib.import_module(f"gpt_finetune.{script}").main, args, capsys)

    return run


@pytest.fixture(scope="session")
def shared_data() -> Callable[[str], Path]:
    """`shared_data(name)`: a file of ../shared/data, or skip the test without it."""
    return shared_file


@pytest.fixture(scope="session")
def quickstart_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished short quickstart run, trained once per session (read-only: evaluate a `copy_run`)."""

    def build(folder: Path) -> None:
        train_in_process(*QUICKSTART, f"hydra.run.dir={folder / 'run'}")

    return built_once(tmp_path_factory, "quickstart", build) / "run"  # `run`: the ollama name tests expect


@pytest.fixture(scope="session")
def classify_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished short spam-quickstart classification run (last_token pooling), trained once per session."""

    def build(folder: Path) -> None:
        train_in_process(
            "experiment=spam-quickstart",
            "trainer.max_epochs=1",
            "task.pooling=last_token",
            "logger=none",
            f"hydra.run.dir={folder / 'run'}",
        )

    return built_once(tmp_path_factory, "classify", build) / "run"


def copy_of_run(run_dir: Path, destination: Path) -> Path:
    """A copy of a run dir whose checkpoints/ links to the original's (checkpoints are only read)."""
    shutil.copytree(run_dir, destination, ignore=shutil.ignore_patterns("checkpoints"))
    (destination / "checkpoints").symlink_to(run_dir / "checkpoints", target_is_directory=True)
    return destination


@pytest.fixture(scope="session")
def copy_run() -> Callable[[Path, Path], Path]:
    """`copy_run(run_dir, destination)`: a copy to evaluate or change (see `copy_of_run`)."""
    return copy_of_run


@pytest.fixture
def quickstart_copy(quickstart_run: Path, tmp_path: Path) -> Path:
    """A copy of the quickstart run for one test to evaluate or change."""
    return copy_of_run(quickstart_run, tmp_path / "run")


@pytest.fixture(scope="session")
def evaluate_config() -> Callable[..., DictConfig]:
    """`evaluate_config(*overrides)`: conf/evaluate.yaml composed as `python evaluate.py ...` sees it."""

    def compose_evaluate(*overrides: str) -> DictConfig:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            return compose(config_name="evaluate", overrides=list(overrides))

    return compose_evaluate


@pytest.fixture(scope="session")
def quiet_trainer() -> Callable[..., L.Trainer]:
    """`quiet_trainer(**kwargs)`: a CPU Lightning Trainer for in-process tests, without logger, checkpoints,
    progress bar or model summary; `kwargs` add to or replace those settings."""
    return functools.partial(
        L.Trainer,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-init GPT saved with `save_pretrained` (seed 0): a base for LoRA (`model.weights=DIR`),
    which refuses a random-init base. Read-only."""
    path = tmp_path_factory.mktemp("base") / "tiny"
    torch.manual_seed(0)
    GPT(GPTConfig.from_size("tiny")).save_pretrained(path)
    return path


@pytest.fixture
def tiny_config() -> GPTConfig:
    return GPTConfig.from_size("tiny", context_length=64)


@pytest.fixture
def tiny_model(tiny_config: GPTConfig) -> GPT:
    torch.manual_seed(0)
    return GPT(tiny_config).eval()
