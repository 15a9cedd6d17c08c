"""What `export.py overwrite=true` may replace: never the user's work, only a folder an export could own.

`overwrite=true` deletes `out` once the new export is complete. It refuses, before any load, an `out` that is
or contains the working directory, the home directory, the run being exported (or its checkpoint), the base
weights, the run's training data, a git repository or any training run (a `.ckpt` file anywhere below).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from gpt_finetune.errors import UserError


def check_overwrite(cfg: DictConfig, out: Path) -> None:
    """One line naming what `out` would destroy, and the fix, when replacing it would delete user work."""
    target = out.resolve()
    protected = list(protected_paths(cfg))
    exact = [(f"is {what}", path) for what, path in protected if path == target]
    inside = [(f"contains {what}", path) for what, path in protected if target in path.parents]
    for relation, path in exact + inside:  # `out=~` is the home, though it contains the working directory too
        raise UserError(
            f"out={cfg.out} {relation} ({path}); overwrite=true would delete it: "
            "choose a new or empty folder for the export"
        )
    found = next((p for p in (target / ".git", *target.rglob("*.ckpt")) if p.exists()), None)
    if found is not None:
        what = "a git repository" if found.name == ".git" else "training checkpoints"
        raise UserError(
            f"out={cfg.out} holds {what} ({found}); overwrite=true would delete it: "
            "choose a new or empty folder for the export"
        )


def protected_paths(cfg: DictConfig) -> Iterator[tuple[str, Path]]:
    """(what, resolved path) of everything an export reads or the user keeps around it."""
    yield "the working directory", Path.cwd().resolve()
    yield "the home directory", Path.home().resolve()
    run_dir = Path(str(cfg.run_dir)).expanduser() if cfg.run_dir is not None else None
    if cfg.ckpt_path is not None:
        checkpoint = Path(str(cfg.ckpt_path)).expanduser()
        yield "the checkpoint being exported", checkpoint.resolve()
        if run_dir is None and checkpoint.parent.name == "checkpoints":
            run_dir = checkpoint.parent.parent
    if run_dir is not None:
        yield "the run being exported", run_dir.resolve()
        yield from run_data(run_dir)
    for key in ("base_weights", "model.weights"):
        value = OmegaConf.select(cfg, key)
        if value is not None:
            yield f"the weights in {key}", Path(str(value)).expanduser().resolve()


def run_data(run_dir: Path) -> Iterator[tuple[str, Path]]:
    """The local data file the run trained on, from its `config.yaml` (a URL is no local file)."""
    saved = run_dir / "config.yaml"
    config = OmegaConf.load(saved) if saved.is_file() else None
    path = OmegaConf.select(config, "data.path") if isinstance(config, DictConfig) else None
    if isinstance(path, str) and "://" not in path:
        yield "the run's data (data.path)", Path(path).expanduser().resolve()
