"""What a run records in its loggers beside Lightning's metrics: the resolved config as params before
training; after it, `best_<monitor>`, the overrides as a row of TensorBoard's HPARAMS table, and the run's own
files in the trackers that keep files (MLflow's artifacts, W&B's run files)."""

from __future__ import annotations

import glob
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from omegaconf import DictConfig, OmegaConf

NOT_PARAMS = ("logger",)  # where a run logs is not one of its settings
HPARAM_TYPES = (bool, int, float, str)  # what TensorBoard's hparams plugin takes


def config_params(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as flat params named as on the command line (`optimizer.lr`), `logger` left out."""
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    kept = {k: v for k, v in container.items() if k not in NOT_PARAMS}
    return dict(flatten(kept))


def flatten(tree: dict[Any, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(`a.b.c`, value) for every leaf of a nested dict; an empty dict is a leaf."""
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from flatten(value, f"{name}.")
        else:
            yield name, value


def override_params(cfg: DictConfig) -> dict[str, bool | int | float | str]:
    """The run's command-line overrides as hparams: a key's value as the config resolved it
    (`optimizer.lr: 0.0001`), a group's choice by name (`model: gpt2-medium`); not deletions, not `logger`."""
    if not HydraConfig.initialized():
        return {}
    choices = HydraConfig.get().runtime.choices
    params: dict[str, bool | int | float | str] = {}
    for override in OverridesParser.create().parse_overrides(list(HydraConfig.get().overrides.task)):
        key = override.key_or_group
        if override.is_delete() or key.split(".")[0] in NOT_PARAMS:
            continue
        value = choices[key] if key in choices else OmegaConf.select(cfg, key, default=None)
        params[key] = value if isinstance(value, HPARAM_TYPES) else str(value)
    return params


def log_config(loggers: Iterable[Logger], cfg: DictConfig) -> None:
    """Every logger gets the resolved config as params (MLflow params, W&B config, hparams.yaml)."""
    params = config_params(cfg)
    for logger in loggers:
        logger.log_hyperparams(params)


def log_results(
    loggers: Iterable[Logger], cfg: DictConfig, metrics: dict[str, Any], files: list[Path]
) -> None:
    """After metrics.json: `best_<monitor>` at the last step, a TensorBoard HPARAMS row, the run's files."""
    best_key = f"best_{cfg.monitor}"
    best = metrics.get(best_key)
    for logger in loggers:
        if isinstance(best, float) and not math.isnan(best):
            logger.log_metrics({best_key: best}, step=metrics["global_step"])
        if isinstance(logger, TensorBoardLogger):
            add_hparams_row(logger, override_params(cfg))
        store_files(logger, files)
        logger.save()
        logger.finalize("success")


def add_hparams_row(logger: TensorBoardLogger, params: dict[str, bool | int | float | str]) -> None:
    """A row (session) of TensorBoard's hparams plugin in the logger's folder: `params`, and as metrics the
    last value of every scalar there (the plugin reads them). No experiment summary: without one, the plugin
    takes the union of every run's params as the table's columns, so runs with other overrides fit in one."""
    from torch.utils.tensorboard.summary import hparams  # late: it imports much of tensorboard

    _, session_start, session_end = hparams(params, {})
    writer = logger.experiment._get_file_writer()  # as Lightning's own log_hyperparams does
    writer.add_summary(session_start)
    writer.add_summary(session_end)


def store_files(logger: Logger, files: list[Path]) -> None:
    """`files` into the tracker's own storage: MLflow's artifacts (copied), W&B's run files (linked, uploaded
    online or by `wandb sync`; under `<run folder>/`, apart from W&B's own config.yaml)."""
    existing = [f for f in files if f.is_file()]
    if isinstance(logger, MLFlowLogger):
        for path in existing:
            logger.experiment.log_artifact(logger.run_id, str(path))
    elif isinstance(logger, WandbLogger):
        for path in existing:
            # A glob: a folder named for its overrides holds `[`; W&B keeps the path below base_path.
            logger.experiment.save(glob.escape(str(path)), base_path=str(path.parent.parent), policy="now")


def close_loggers(loggers: Iterable[Logger], failed: bool) -> None:
    """End each tracker run: a failed run is marked so; W&B's run is finished (in a multirun the next job,
    in this same process, would otherwise log into it)."""
    for logger in loggers:
        if failed:
            logger.finalize("failed")
        if isinstance(logger, WandbLogger):
            import wandb  # installed: a WandbLogger was built

            if wandb.run is not None:
                wandb.run.finish(exit_code=int(failed))
