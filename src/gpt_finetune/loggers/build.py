"""Lightning's loggers from the `logger` config group: one per entry, a missing library in one line."""

from __future__ import annotations

from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig

from gpt_finetune.errors import UserError

EXTRA = 'pip install -e ".[track]"'


def build_loggers(config: DictConfig) -> list[Logger]:
    """One logger per entry of `config` (`logger=[tensorboard,mlflow]` composes two; a null entry is off)."""
    return [build_logger(name, node) for name, node in config.items() if node is not None]


def build_logger(name: object, node: DictConfig) -> Logger:
    """The logger `node` describes; a library that is not installed is a UserError naming the extra."""
    try:
        logger: Logger = instantiate(node)
    except Exception as error:
        missing = missing_library(error)
        if missing is None:
            raise
        raise UserError(
            f"logger={name}: {missing}; the trackers' libraries (mlflow, wandb) install with {EXTRA}"
        ) from None
    return logger


def missing_library(error: BaseException | None) -> str | None:
    """What is not installed, where `error` (or what it wraps: Hydra wraps a constructor's error) says so."""
    while error is not None:
        if isinstance(error, ImportError):
            return str(error).split(". HINT:")[0]  # Lightning's requirement check adds a `pip install` hint
        error = error.__cause__
    return None
