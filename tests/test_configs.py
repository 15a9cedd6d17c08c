"""Every config composes and instantiates (the schema check), and experiments hold the recipes they name."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig

import gpt_finetune.train  # noqa: F401  (registers the ${bundled:...} resolver)
from gpt_finetune.data.classify_datamodule import ClassificationDataModule
from gpt_finetune.data.instruct_datamodule import InstructionDataModule
from gpt_finetune.tasks.instruct import InstructionTuning

CONF = Path(__file__).resolve().parents[1] / "conf"


def choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_train(tmp_path: Path, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=[f"output_dir={tmp_path}", *overrides])


@pytest.mark.parametrize("experiment", choices("experiment"))
def test_experiments_compose(experiment: str, tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, f"experiment={experiment}")
    if "labels" in cfg.task:  # classification: the class names are defined once, in the data config
        assert cfg.task.labels == cfg.data.labels and len(cfg.task.labels) >= 2
    else:
        assert cfg.task.prompt_style == cfg.data.style
    assert cfg.task.model == cfg.model


@pytest.mark.parametrize("trainer", choices("trainer"))
def test_trainer_presets_instantiate(trainer: str, tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, f"trainer={trainer}")
    if cfg.trainer.accelerator == "gpu":  # a CPU machine can build the strategy, not the GPU trainer
        strategy = cfg.trainer.get("strategy")
        assert strategy is None or isinstance(strategy, str) or instantiate(strategy) is not None
        return
    assert isinstance(instantiate(cfg.trainer, logger=False), L.Trainer)


@pytest.mark.parametrize("group", ["callbacks", "logger"])
def test_callbacks_and_loggers_instantiate(group: str, tmp_path: Path) -> None:
    for choice in choices(group):
        cfg = compose_train(tmp_path, f"{group}={choice}")
        nodes = [node for node in cfg[group].values() if node is not None]  # null switches one off
        assert all(instantiate(node) is not None for node in nodes)
        assert nodes or choice == "none"


@pytest.mark.parametrize("data", choices("data"))
def test_data_configs_instantiate(data: str, tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, f"data={data}")
    datamodule = instantiate(cfg.data, _convert_="all")
    assert isinstance(datamodule, (InstructionDataModule, ClassificationDataModule))


@pytest.mark.parametrize("model", choices("model"))
def test_model_configs_are_build_gpt_specs(model: str, tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, f"model={model}")
    assert cfg.model.size == model
    assert cfg.model.pretrained is (model != "tiny")
    if model == "tiny":  # the others would download weights
        task = instantiate(cfg.task, _convert_="all")
        assert isinstance(task, InstructionTuning) and task.model.config.n_layers == 2


def test_size_files_hold_only_their_differences() -> None:
    for size in ("gpt2-medium", "gpt2-large", "gpt2-xl"):
        lines = [ln for ln in (CONF / "model" / f"{size}.yaml").read_text().splitlines() if ln.strip()]
        assert lines == ["defaults:", "  - gpt2-small", f"size: {size}"]


def test_book_recipe(tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, "experiment=book-ch07")
    assert cfg.model.size == "gpt2-medium" and cfg.model.pretrained
    assert (cfg.data.batch_size, cfg.task.lr, cfg.task.weight_decay, cfg.trainer.max_epochs) == (
        8,
        5e-5,
        0.1,
        2,
    )
    assert not cfg.data.mask_prompt and not cfg.data.shuffle_split
    assert (cfg.data.train_fraction, cfg.data.test_fraction) == (0.85, 0.10)
    assert cfg.callbacks.early_stopping is None


def test_monitor_is_defined_once(tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, "monitor=val/ppl")
    assert cfg.callbacks.model_checkpoint.monitor == cfg.callbacks.early_stopping.monitor == "val/ppl"
