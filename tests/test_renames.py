"""Renamed config keys: an old key on the command line is one line naming the new key; old configs upgrade."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from gpt_finetune.renames import RENAMED, move_renamed_keys, renamed_override_error
from gpt_finetune.tasks.instruct import InstructionTuning

CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["task.lr=1e-5"], "task.lr was renamed to optimizer.lr; use optimizer.lr=1e-5"),
        (
            ["-m", "model=tiny", "task.weight_decay=0.0,0.1", "~task.cosine", "++task.betas=[0.9,0.95]"],
            "task.weight_decay was renamed to optimizer.weight_decay; use optimizer.weight_decay=0.0,0.1; "
            "task.cosine was renamed to optimizer.cosine; use ~optimizer.cosine; "
            "task.betas was renamed to optimizer.betas; use ++optimizer.betas=[0.9,0.95]",
        ),
        (
            ["hydra.sweeper.params.task.lr=tag(log, interval(1e-5, 1e-3))"],
            "hydra.sweeper.params.task.lr was renamed to hydra.sweeper.params.optimizer.lr; "
            "use hydra.sweeper.params.optimizer.lr=tag(log, interval(1e-5, 1e-3))",
        ),
        (["optimizer.lr=1e-5", "task.trainable=all", "--config-name", "train", "task=classify"], None),
        (["generate.prompt=task.lr=1"], None),  # a value that happens to hold an old key
    ],
)
def test_an_old_key_on_the_command_line_is_one_line_naming_the_new_one(
    argv: list[str], expected: str | None
) -> None:
    assert renamed_override_error(argv) == expected


def compose_train(tmp_path: Path, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=[f"output_dir={tmp_path}", *overrides])


@pytest.mark.parametrize("task", ["instruct", "classify"])
def test_every_new_key_exists_and_no_old_one_does(tmp_path: Path, task: str) -> None:
    data = "sample" if task == "instruct" else "sample_spam"
    cfg = compose_train(tmp_path, f"task={task}", f"data={data}")
    for old, new in RENAMED.items():
        assert OmegaConf.select(cfg, new, default="absent") != "absent", new
        assert OmegaConf.select(cfg, old, default="absent") == "absent", old
    assert cfg.task.optimizer == cfg.optimizer


def test_a_saved_config_from_before_the_rename_is_upgraded(tmp_path: Path) -> None:
    new = compose_train(tmp_path, "model=tiny", "optimizer.lr=1e-3", "optimizer.cosine=true")
    saved = OmegaConf.create(OmegaConf.to_container(new, resolve=True))  # config.yaml is resolved
    old = OmegaConf.create(OmegaConf.to_container(saved))
    del old.optimizer
    optimizer = old.task.pop("optimizer")
    old.task.merge_with(optimizer)  # before the rename: the task held each setting
    assert old.task.lr == 1e-3 and "optimizer" not in old

    assert move_renamed_keys(old) == list(RENAMED)
    assert old == saved
    task = instantiate(old.task, _convert_="all")
    assert isinstance(task, InstructionTuning) and task.hparams.optimizer["cosine"] is True
    assert move_renamed_keys(saved) == [] and saved == old  # a config saved after the rename stays as it is
