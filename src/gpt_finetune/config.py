"""Config checks and changes: settings that cannot run, the task/data pairing, resume, resolvers."""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, cast

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, ListConfig, OmegaConf

from gpt_finetune.errors import UserError
from gpt_finetune.loggers.resolvers import RESOLVERS as LOGGER_RESOLVERS
from gpt_finetune.renames import move_renamed_keys
from gpt_finetune.tasks.base import FinetuneTask

log = logging.getLogger(__name__)
# Where classes named by `_target_` in configs saved by earlier versions live now (resume reads those).
MOVED_MODULES = {
    "gpt_finetune.checkpointing.": "gpt_finetune.callbacks.checkpointing.",
    "gpt_finetune.guards.": "gpt_finetune.callbacks.loss_guard.",
    "gpt_finetune.evaluation.callbacks.": "gpt_finetune.callbacks.generation.",
    "gpt_finetune.evaluation.classification.": "gpt_finetune.callbacks.predictions.",
}
PRECISIONS = ("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true", "64")


def bundled_path(name: str) -> str:
    """Absolute path of a data file shipped inside the package (`${bundled:sample_instructions.json}`)."""
    path = resources.files("gpt_finetune.data") / name
    if not path.is_file():
        raise UserError(f"no bundled data file {name!r} in gpt_finetune/data")
    return str(path)


def short_name(text: str, limit: int = 200) -> str:
    """`text` as one file name of at most `limit` characters: `/` as `_`, cut with a hash of the whole when
    longer.

    A sweep job's folder is named for its overrides, which grow past the 255 bytes a file name may hold and
    may hold paths (`model.weights=DIR`), whose slashes would nest the job's folder several levels down.
    """
    name = text.replace("/", "_")
    if len(name) <= limit:
        return name
    return f"{name[: limit - 9]}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def resume_or(new_run_dir: str, *, _root_: DictConfig) -> str:
    """`hydra.run.dir`: the run being resumed (`resume=RUN`) when set, else `new_run_dir`.

    `oc.select` would fall back only for a missing key: `resume: null` (the default) selected None, which
    Hydra refuses as a run dir. Where Hydra resolves its own node alone (`--cfg hydra`), there is no `resume`.
    """
    resume = OmegaConf.select(_root_, "resume", default=None)
    return new_run_dir if resume is None else str(resume)


def register_resolvers() -> None:
    """Register the config resolvers (`${bundled:...}`, `${short_name:...}`, `${resume_or:...}`, the loggers'
    in `loggers/resolvers.py`); each entry point calls it before Hydra resolves its own config, and each
    command's `main` again (a SLURM job starts in `main`). Idempotent.
    """
    resolvers: dict[str, Callable[..., Any]] = {
        "bundled": bundled_path,
        "short_name": short_name,
        "resume_or": resume_or,
        **LOGGER_RESOLVERS,
    }
    for name, resolver in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


def plain_dict(config: DictConfig | ListConfig, *, resolve: bool = False) -> dict[str, Any]:
    """A config mapping as plain dicts and lists (interpolations kept unless `resolve`)."""
    container = OmegaConf.to_container(config, resolve=resolve)
    if not isinstance(container, dict):
        raise TypeError(f"expected a config mapping, got a {type(container).__name__}")
    return cast(dict[str, Any], container)  # OmegaConf types the keys as any DictKeyType; configs use str


def check_config(cfg: DictConfig) -> None:
    """Fail before any work on settings that cannot run; all problems in one line."""
    problems = []
    precision = str(cfg.trainer.get("precision", "32-true"))
    if precision not in PRECISIONS:
        problems.append(f"trainer.precision={precision} is not one of {', '.join(PRECISIONS)}")
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        problems.append(f"trainer.accelerator={accelerator} but no CUDA device is available; use trainer=cpu")
    elif precision.startswith("16") and not on_gpu:
        problems.append(f"trainer.precision={precision} needs a GPU; on a CPU use bf16-mixed or 32-true")
    clips = (cfg.trainer.get("gradient_clip_val") or 0) > 0
    fused = OmegaConf.select(cfg, "task.optimizer.fused_adamw")  # what the task is built from
    if precision in ("16-mixed", "16") and fused is True and clips:
        # A fused AdamW unscales the GradScaler's gradients inside its step, after clipping's turn.
        problems.append(
            "optimizer.fused_adamw=true cannot clip 16-mixed gradients (trainer.gradient_clip_val); "
            "set optimizer.fused_adamw=null (unfused when clipping) or use trainer.precision=bf16-mixed"
        )
    if cfg.data.get("batch_size", 1) < 1:
        problems.append(f"data.batch_size={cfg.data.batch_size} must be >= 1")
    if cfg.get("test_on", "best") not in ("best", "last"):
        problems.append(f"test_on={cfg.test_on} is not one of best, last")
    mismatch = task_data_mismatch(cfg) or pairs_mismatch(cfg)
    if mismatch is not None:
        problems.append(mismatch)
    if problems:
        raise UserError("; ".join(problems))


@dataclass(frozen=True)
class DataKind:
    """A kind of data, the task that trains on it and a recipe that pairs the two."""

    name: str
    task: str
    recipe: str


# The data key a task's config reads (`${data.style}`, `${data.labels}`) -> the kind of data that has it.
DATA_KINDS = {
    "style": DataKind("instruction", "task=instruct", "experiment=quickstart"),
    "labels": DataKind("classification", "task=classify", "experiment=spam-quickstart"),
}


def task_data_mismatch(cfg: DictConfig) -> str | None:
    """The task reads a key the data config lacks (`task=instruct data=spam`): the mismatch and the fix."""
    task = plain_dict(cfg.task)
    reads = (re.fullmatch(r"\$\{data\.(\w+)\}", v) for v in task.values() if isinstance(v, str))
    missing = [m.group(1) for m in reads if m is not None and m.group(1) not in cfg.data]
    if not missing:
        return None
    key, task_choice, data_choice = missing[0], chosen("task", cfg), chosen("data", cfg)
    needed = DATA_KINDS.get(key)
    found = next((kind for marker, kind in DATA_KINDS.items() if marker in cfg.data), None)
    if needed is None or found is None:
        return f"{task_choice} reads data.{key}, which {data_choice} lacks; add it or choose other data"
    return (
        f"{data_choice} holds {found.name} data but {task_choice} needs {needed.name} data (data.{key}); "
        f"use {found.task} (or {found.recipe})"
    )


def pairs_mismatch(cfg: DictConfig) -> str | None:
    """Preference pairs go to task=dpo and only there (both read data.style, so the check above passes)."""
    dpo = str(cfg.task.get("_target_", "")).endswith(".PreferenceTuning")
    pairs = str(cfg.data.get("_target_", "")).endswith(".PreferenceDataModule")
    if dpo and not pairs:
        return (
            f"{chosen('task', cfg)} trains on preference pairs but {chosen('data', cfg)} holds none; "
            "use data=preferences"
        )
    if pairs and not dpo:
        return (
            f"{chosen('data', cfg)} holds preference pairs but {chosen('task', cfg)} does not train on them; "
            "use task=dpo (or experiment=book-ch07-dpo)"
        )
    if cfg.get("init_from") is not None and not dpo:
        return f"init_from={cfg.init_from} starts a preference-tuning run; use task=dpo data=preferences"
    return None


def chosen(group: str, cfg: DictConfig) -> str:
    """`group=choice` as given to Hydra, or `group._target_=...` where Hydra did not compose the config."""
    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    if choices.get(group) is not None:
        return f"{group}={choices[group]}"
    return f"{group}._target_={cfg[group].get('_target_')}"


def check_fits(cfg: DictConfig, task: FinetuneTask) -> None:
    """The data's max_length must fit the model's context window."""
    context = task.model.config.context_length
    max_length = cfg.data.get("max_length")
    if max_length is not None and max_length > context:
        raise UserError(
            f"data.max_length={max_length} exceeds model context {context}; lower data.max_length"
        )


def resumed_config(cfg: DictConfig) -> DictConfig:
    """The interrupted run's own config, its last checkpoint as `ckpt_path`, plus `key=value` overrides.

    Every key override applies (`+`, `++` and `~` too), also to the keys that the config derives from it
    (`generate.top_k` also sets `callbacks.test_responses.top_k`); group choices (`trainer=cpu`) are fixed by
    the run and refused in one line.
    """
    run_dir = Path(cfg.resume)
    last, saved = run_dir / "checkpoints" / "last.ckpt", run_dir / "config.yaml"
    if not last.is_file() or not saved.is_file():
        raise UserError(f"{run_dir}: nothing to resume (needs config.yaml and checkpoints/last.ckpt)")
    resumed = OmegaConf.load(saved)
    if not isinstance(resumed, DictConfig):
        raise UserError(f"{saved} holds a list, not a run's config; resume a run dir that train.py wrote")
    move_targets(resumed)
    relocate(resumed, str(resumed.get("output_dir")), str(cfg.output_dir))
    moved = move_renamed_keys(resumed)
    if moved:
        log.info("%s: renamed keys of an earlier version moved: %s", saved, ", ".join(moved))
    if HydraConfig.initialized():
        groups = set(HydraConfig.get().runtime.choices)
        derived = derived_keys(OmegaConf.to_container(cfg, resolve=False))
        for override in OverridesParser.create().parse_overrides(list(HydraConfig.get().overrides.task)):
            key = override.key_or_group
            if key == "resume":
                continue
            if key in groups:
                raise UserError(
                    f"resume keeps the run's config groups; {override.input_line} would replace the group "
                    f"'{key}': set its keys instead (e.g. {key}.<key>=value), or start a new run from the "
                    f"checkpoint: python train.py ckpt_path={last} {override.input_line}"
                )
            apply_override(resumed, override, key)
            for target, source in derived:
                if key == source or key.startswith(f"{source}."):
                    path = target + key[len(source) :]
                    if OmegaConf.select(resumed, path.rpartition(".")[0]) is not None:  # still configured
                        apply_override(resumed, override, path)
    resumed.ckpt_path, resumed.resume = str(last), None
    log.info("resuming %s from %s", run_dir, last)
    return resumed


def relocate(config: Any, old: str, new: str) -> None:
    """Every path under the run's old folder `old` moved to `new` (a run folder moved or copied since: its
    saved config holds resolved, absolute paths, and resuming must write into the folder it resumes)."""
    if old == new or old in ("", "None"):
        return
    items = config.items() if isinstance(config, DictConfig) else enumerate(config)
    for key, value in list(items):
        if isinstance(value, DictConfig | ListConfig):
            relocate(value, old, new)
        elif isinstance(value, str) and (value == old or value.startswith(f"{old}/")):
            config[key] = new + value[len(old) :]


def apply_override(config: DictConfig, override: Override, key: str) -> None:
    """Set (or with `~key` delete) `key` in `config` as a Hydra command-line override would."""
    if override.is_delete():
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(config, parent) if parent else config
        if node is not None and leaf in node:
            del node[leaf]
        return
    OmegaConf.update(config, key, override.value(), merge=False, force_add=True)


def derived_keys(raw: Any, path: str = "") -> list[tuple[str, str]]:
    """(key, source) for every config value that is exactly `${source}`, e.g. (`task.model`, `model`)."""
    if isinstance(raw, dict):
        return [pair for k, v in raw.items() for pair in derived_keys(v, f"{path}.{k}" if path else str(k))]
    match = re.fullmatch(r"\$\{([\w.]+)\}", raw) if isinstance(raw, str) else None
    return [(path, match.group(1))] if match is not None else []


def move_targets(config: Any) -> None:
    """Point every `_target_` of a saved config at the module where its class lives now."""
    if isinstance(config, DictConfig):
        target = config.get("_target_")
        for old, new in MOVED_MODULES.items():
            if isinstance(target, str) and target.startswith(old):
                config._target_ = new + target[len(old) :]
        for value in config.values():
            move_targets(value)
    elif isinstance(config, ListConfig):
        for value in config:
            move_targets(value)
