"""The `logger` group composes lists of Lightning loggers whose names, stores and modes resolve as documented;
what a run sends them (params, the HPARAMS row) is its resolved config and overrides; a missing library is
one line naming the extra. Config-level and fast: tests/e2e/test_tracked_sweep.py trains through them."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class
from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger, WandbLogger
from omegaconf import DictConfig, OmegaConf, open_dict

from gpt_finetune.errors import UserError
from gpt_finetune.loggers.build import build_loggers
from gpt_finetune.loggers.records import config_params, override_params
from gpt_finetune.loggers.resolvers import wandb_offline

CONF = Path(__file__).resolve().parents[2] / "conf"
SWEEP = "/somewhere/multirun/lr-search"


def compose_train(*overrides: str, multirun: bool = False) -> DictConfig:
    """conf/train.yaml with `overrides`, the Hydra node included (as a job sees it)."""
    mode = ["hydra.mode=MULTIRUN", f"hydra.sweep.dir={SWEEP}"] if multirun else []
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=[*overrides, *mode], return_hydra_config=True)


@pytest.fixture
def as_job(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Hydra's config set as inside a job (cleared after); the working directory in tmp_path, where the
    default MLflow store (outputs/mlflow/) is made; no tracker settings from the environment."""
    monkeypatch.chdir(tmp_path)
    for name in ("MLFLOW_TRACKING_URI", "WANDB_MODE", "WANDB_API_KEY", "WANDB_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    yield
    HydraConfig.instance().cfg = None


def job(cfg: DictConfig) -> DictConfig:
    """`cfg` as a job's function gets it: Hydra's node set aside as HydraConfig."""
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def test_a_list_of_loggers_composes_lightnings_loggers(as_job: None, tmp_path: Path) -> None:
    cfg = job(compose_train("logger=[tensorboard,csv,mlflow,wandb]", f"output_dir={tmp_path}/run-1"))
    classes = {name: get_class(node._target_) for name, node in cfg.logger.items()}
    assert classes == {
        "tensorboard": TensorBoardLogger,
        "csv": CSVLogger,
        "mlflow": MLFlowLogger,
        "wandb": WandbLogger,
    }
    assert compose_train().logger.keys() == {"tensorboard"}  # the default


def test_mlflow_stores_under_outputs_unless_mlflow_tracking_uri(
    as_job: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = job(compose_train("logger=mlflow", f"output_dir={tmp_path}/run-1")).logger.mlflow
    store = tmp_path / "outputs" / "mlflow"
    assert node.tracking_uri == f"sqlite:///{store / 'mlflow.db'}" and store.is_dir()
    assert node.artifact_location == str(store / "artifacts")
    assert (node.experiment_name, node.run_name, node.tags.run_dir) == (
        "gpt-finetune",
        "run-1",
        f"{tmp_path}/run-1",
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert (node.tracking_uri, node.artifact_location) == ("http://tracking.example:5000", None)


def test_a_multiruns_jobs_share_an_mlflow_experiment_and_a_wandb_group(as_job: None, tmp_path: Path) -> None:
    cfg = job(compose_train("logger=[mlflow,wandb]", f"output_dir='{tmp_path}/0_lr=1'", multirun=True))
    assert cfg.logger.mlflow.experiment_name == cfg.logger.wandb.group == "lr-search"
    assert cfg.logger.mlflow.run_name == cfg.logger.wandb.name == "0_lr=1"
    single = job(compose_train("logger=wandb", f"output_dir={tmp_path}/run-1"))
    assert single.logger.wandb.group is None and single.logger.wandb.project == "gpt-finetune"


def test_wandb_is_offline_unless_a_key_is_configured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    netrc = tmp_path / "netrc"
    netrc.write_text("machine example.org login me password secret\n")
    monkeypatch.setenv("NETRC", str(netrc))
    assert wandb_offline()
    netrc.write_text("machine api.wandb.ai login user password 0123456789abcdef\n")  # as `wandb login` writes
    assert not wandb_offline()
    netrc.unlink()
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef")
    assert not wandb_offline()
    monkeypatch.delenv("WANDB_API_KEY")
    monkeypatch.setenv("WANDB_MODE", "disabled")  # W&B's own switch decides; the logger leaves it alone
    assert not wandb_offline()


def test_params_are_the_resolved_config_named_as_on_the_command_line(as_job: None, tmp_path: Path) -> None:
    cfg = job(compose_train("experiment=quickstart", "optimizer.lr=1e-4", f"output_dir={tmp_path}"))
    params = config_params(cfg)
    assert params["optimizer.lr"] == 1e-4 == params["task.optimizer.lr"]  # resolved interpolations
    assert params["optimizer.betas"] == [0.9, 0.999] and params["model.size"] == "tiny"
    assert not any(key.startswith(("logger.", "hydra.")) for key in params)
    leaves = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(leaves, dict) and params["data.batch_size"] == leaves["data"]["batch_size"]


def test_the_hparams_row_holds_the_overrides_as_the_config_resolved_them(
    as_job: None, tmp_path: Path
) -> None:
    cfg = job(
        compose_train(
            "experiment=quickstart",
            "optimizer.lr=1e-4",
            "model=tiny",
            "++trainer.max_steps=4",
            "~callbacks.early_stopping",
            "logger=[tensorboard,csv]",
            f"output_dir={tmp_path}",
            multirun=True,
        )
    )
    assert override_params(cfg) == {
        "experiment": "quickstart",  # a group's choice by name
        "optimizer.lr": 1e-4,  # a number, not the text typed
        "model": "tiny",
        "trainer.max_steps": 4,
        "output_dir": str(tmp_path),
    }


@pytest.mark.skipif(importlib.util.find_spec("comet_ml") is not None, reason="comet_ml is installed here")
def test_a_logger_whose_library_is_missing_is_one_line_naming_the_extra() -> None:
    """Lightning's CometLogger, whose library (comet_ml) is not installed: the real check, unpatched."""
    config = OmegaConf.create({"comet": {"_target_": "lightning.pytorch.loggers.CometLogger"}})
    with pytest.raises(UserError) as raised:
        build_loggers(config)
    message = str(raised.value)
    assert message.startswith("logger=comet: ") and "comet" in message.removeprefix("logger=comet: ")
    assert message.endswith('pip install -e ".[track]"') and "\n" not in message and "HINT" not in message
