"""Config resolvers for the loggers: run and sweep names, MLflow's store, W&B's offline switch."""

from __future__ import annotations

import netrc
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

SQLITE = "sqlite:///"


def sweep_name(single_run: str | None) -> str | None:
    """`${sweep_name:DEFAULT}`: in a multirun, the name of the sweep's folder (one MLflow experiment, one W&B
    group for all its jobs); in a single run, `single_run`."""
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return Path(HydraConfig.get().sweep.dir).name
    return single_run


def folder_name(path: str) -> str:
    """`${folder_name:${output_dir}}`: the run's folder name (`2026-01-31_12-00-00`, `0_optimizer.lr=1e-4`)"""
    return Path(path).name


def mlflow_uri(local_database: str) -> str:
    """`${mlflow_uri:outputs/mlflow/mlflow.db}`: `MLFLOW_TRACKING_URI` when set (MLflow's own convention),
    else the SQLite database at `local_database` (absolute), whose folder is made (SQLite makes the file).

    One resolver, not `${oc.env:...,${...}}`: OmegaConf resolves a default before it knows it is not needed.
    """
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    database = Path(local_database).expanduser().absolute()
    database.parent.mkdir(parents=True, exist_ok=True)
    return f"{SQLITE}{database}"


def artifacts_beside(tracking_uri: str) -> str | None:
    """`${artifacts_beside:URI}`: a SQLite store keeps a new experiment's files in `artifacts/` beside the
    database (MLflow's default, `./mlruns`, would be wherever the command runs); a server decides itself."""
    if not tracking_uri.startswith(SQLITE):
        return None
    return str(Path(tracking_uri.removeprefix(SQLITE)).parent / "artifacts")


def wandb_offline() -> bool:
    """`${wandb_offline:}`: W&B runs offline unless an API key is configured; `WANDB_MODE`, when set, decides
    instead (W&B reads it itself)."""
    if os.environ.get("WANDB_MODE"):
        return False
    return not wandb_key_configured()


def wandb_key_configured() -> bool:
    """An API key in the environment (`WANDB_API_KEY`, `WANDB_IDENTITY_TOKEN_FILE`) or, as `wandb login`
    writes it, in the netrc file for the W&B host."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).netloc
    candidates = [os.environ.get("NETRC"), "~/.netrc", "~/_netrc"]
    path = next((Path(p).expanduser() for p in candidates if p and Path(p).expanduser().is_file()), None)
    if path is None:
        return False
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (netrc.NetrcParseError, OSError):
        return False


RESOLVERS: dict[str, Callable[..., Any]] = {
    "sweep_name": sweep_name,
    "folder_name": folder_name,
    "mlflow_uri": mlflow_uri,
    "artifacts_beside": artifacts_beside,
    "wandb_offline": wandb_offline,
}
