"""Config keys that moved: a one-line error for an old key on the command line, and saved configs upgraded."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from omegaconf import DictConfig, OmegaConf

# Old key -> new key. The AdamW settings moved out of both tasks into the shared `optimizer` group.
RENAMED = {
    "task.lr": "optimizer.lr",
    "task.weight_decay": "optimizer.weight_decay",
    "task.decay_on": "optimizer.decay_on",
    "task.betas": "optimizer.betas",
    "task.fused_adamw": "optimizer.fused_adamw",
    "task.warmup_steps": "optimizer.warmup_steps",
    "task.cosine": "optimizer.cosine",
    "task.min_lr_ratio": "optimizer.min_lr_ratio",
}
SWEPT = "hydra.sweeper.params."  # an Optuna search space names the keys too


def renamed_override_error(argv: Sequence[str]) -> str | None:
    """One line naming the new key of every renamed key among the command line's overrides, or None.

    `["task.lr=1e-5"]` -> `task.lr was renamed to optimizer.lr; use optimizer.lr=1e-5`.
    """
    problems = []
    for arg in argv:
        if arg.startswith("-") or ("=" not in arg and not arg.startswith("~")):
            continue  # a flag (-m, --config-name), or a value after one
        key, equals, value = arg.partition("=")
        prefix = key[: len(key) - len(key.lstrip("~+"))]
        name = key[len(prefix) :]
        swept = SWEPT if name.startswith(SWEPT) else ""
        new = RENAMED.get(name[len(swept) :])
        if new is not None:
            problems.append(f"{name} was renamed to {swept}{new}; use {prefix}{swept}{new}{equals}{value}")
    return "; ".join(problems) or None


def refuse_renamed_keys(argv: Sequence[str]) -> None:
    """Exit with code 2 and one line naming the new key when `argv` uses a renamed one; each entry point
    calls it before Hydra parses the command line (Hydra's own message for an unknown key is many lines)."""
    renamed = renamed_override_error(argv)
    if renamed is not None:
        print(f"error: {renamed}", file=sys.stderr)
        raise SystemExit(2)


def move_renamed_keys(config: DictConfig) -> list[str]:
    """Move every renamed key of a saved run config (`config.yaml`) to its new name; the old keys moved.

    A task's `optimizer` mirrors the top-level `optimizer` group, as `optimizer: ${optimizer}` resolves.
    """
    moved = []
    for old, new in RENAMED.items():
        parent, _, leaf = old.rpartition(".")
        node = OmegaConf.select(config, parent)
        if isinstance(node, DictConfig) and leaf in node:
            OmegaConf.update(config, new, node.pop(leaf), merge=False, force_add=True)
            moved.append(old)
    if moved and "optimizer" not in config.task:
        config.task.optimizer = OmegaConf.to_container(config.optimizer)
    return moved
