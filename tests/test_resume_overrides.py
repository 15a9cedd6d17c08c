"""`resume=RUN key=value`: every key override applies (null-valued keys, `+`, `++`, `~`, derived keys);
group overrides are refused in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, read_write

from gpt_finetune.config import resumed_config
from gpt_finetune.errors import UserError

CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A run dir as train.py leaves it: its resolved config.yaml and a last.ckpt (content unused here)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        saved = compose("train", overrides=["experiment=quickstart", f"output_dir={tmp_path}"])
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(saved, resolve=True))
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    return tmp_path


def resume(run_dir: Path, *overrides: str) -> DictConfig:
    """`resumed_config` as train.py calls it: inside a Hydra app composed with these overrides."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"resume={run_dir}", *overrides], return_hydra_config=True)
        with read_write(cfg.hydra):  # as Hydra's run_job sets it: the run folder is the resumed run's
            cfg.hydra.runtime.output_dir = str(run_dir)
        HydraConfig.instance().set_config(cfg)
        try:
            return resumed_config(cfg)
        finally:
            HydraConfig.instance().cfg = None


def test_every_key_override_applies_null_valued_keys_included(run_dir: Path) -> None:
    cfg = resume(
        run_dir,
        "trainer.max_epochs=4",
        "trainer.gradient_clip_val=1.0",  # null in the saved config
        "data.max_length=128",
        "generate.top_k=5",
        "callbacks.loss_guard.explode_factor=10",
        "++callbacks.extra_key=7",
        "~callbacks.validation_samples",
    )
    assert cfg.trainer.max_epochs == 4
    assert cfg.trainer.gradient_clip_val == 1.0
    assert cfg.data.max_length == 128
    assert cfg.generate.top_k == 5
    assert cfg.callbacks.test_responses.top_k == 5  # derived from ${generate.top_k}: follows it
    assert cfg.callbacks.loss_guard.explode_factor == 10
    assert cfg.callbacks.extra_key == 7
    assert "validation_samples" not in cfg.callbacks
    assert cfg.ckpt_path == str(run_dir / "checkpoints" / "last.ckpt") and cfg.resume is None
    # The run's own values stay where nothing overrides them.
    assert cfg.model.size == "tiny" and cfg.trainer.val_check_interval == 1.0


def test_a_model_override_reaches_the_task_spec(run_dir: Path) -> None:
    cfg = resume(run_dir, "model.dropout=0.2", "seed=7")
    assert cfg.model.dropout == 0.2 and cfg.task.model.dropout == 0.2
    assert cfg.data.seed == 7 and cfg.callbacks.test_responses.seed == 7


def test_a_group_override_fails_in_one_line_naming_the_allowed_forms(run_dir: Path) -> None:
    with pytest.raises(UserError) as error:
        resume(run_dir, "trainer=ddp_cpu")
    message = str(error.value)
    assert "\n" not in message
    assert "resume keeps the run's config groups" in message and "trainer.<key>=value" in message
    assert f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'} trainer=ddp_cpu" in message


def test_a_run_saved_before_the_callbacks_moved_resumes_with_their_new_modules(run_dir: Path) -> None:
    saved = (run_dir / "config.yaml").read_text()
    old = saved.replace("gpt_finetune.callbacks.checkpointing.", "gpt_finetune.checkpointing.")
    old = old.replace("gpt_finetune.callbacks.loss_guard.", "gpt_finetune.guards.")
    old = old.replace("gpt_finetune.callbacks.generation.", "gpt_finetune.evaluation.callbacks.")
    assert old != saved
    (run_dir / "config.yaml").write_text(old)
    cfg = resume(run_dir)
    assert OmegaConf.to_yaml(cfg) == OmegaConf.to_yaml(resume_saved(saved, run_dir))


def resume_saved(text: str, run_dir: Path) -> DictConfig:
    (run_dir / "config.yaml").write_text(text)
    return resume(run_dir)


def test_a_run_saved_before_the_optimizer_group_resumes_with_its_settings(run_dir: Path) -> None:
    saved = OmegaConf.load(run_dir / "config.yaml")
    lr = saved.optimizer.lr
    saved.task.lr, saved.task.warmup_steps = lr, saved.optimizer.warmup_steps  # the old layout
    del saved.task["optimizer"], saved["optimizer"]
    OmegaConf.save(saved, run_dir / "config.yaml")
    cfg = resume(run_dir, "optimizer.warmup_steps=3")
    assert "lr" not in cfg.task and cfg.task.optimizer.lr == lr == cfg.optimizer.lr
    assert cfg.optimizer.warmup_steps == 3 and cfg.task.optimizer.warmup_steps == 3  # derived: follows


def test_a_moved_run_resumes_into_its_new_folder(
    run_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    moved = tmp_path_factory.mktemp("moved") / "run"
    run_dir.rename(moved)
    cfg = resume(moved)
    paths = [cfg.output_dir, cfg.callbacks.last_checkpoint.dirpath, cfg.callbacks.test_responses.output_dir]
    assert paths == [str(moved), str(moved / "checkpoints"), str(moved)]
    assert str(run_dir) not in OmegaConf.to_yaml(cfg)  # nothing written where the run was before
