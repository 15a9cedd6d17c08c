"""Every config composes and instantiates (the schema check), and experiments hold the recipes they name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, SingleDeviceStrategy, Strategy
from omegaconf import DictConfig
from torch.distributed.fsdp import ShardingStrategy
from torch.distributed.fsdp.wrap import ModuleWrapPolicy

from gpt_finetune.callbacks.checkpointing import StreamingCheckpointIO
from gpt_finetune.data.classify_datamodule import ClassificationDataModule
from gpt_finetune.data.instruct_datamodule import InstructionDataModule
from gpt_finetune.data.preference_datamodule import PreferenceDataModule
from gpt_finetune.model.gpt import Block
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
    assert cfg.task.optimizer == cfg.optimizer  # one optimizer config, shared by every task


@dataclass(frozen=True)
class Preset:
    """What a trainer preset promises: accelerator, devices (-1: every GPU), precision, strategy class."""

    accelerator: str
    devices: int
    precision: str
    strategy: type[Strategy]


PRESETS = {
    "default": Preset("auto", 1, "32-true", SingleDeviceStrategy),
    "cpu": Preset("cpu", 1, "32-true", SingleDeviceStrategy),
    "gpu": Preset("gpu", 1, "bf16-mixed", SingleDeviceStrategy),
    "ddp": Preset("gpu", -1, "bf16-mixed", DDPStrategy),
    "fsdp": Preset("gpu", -1, "bf16-mixed", FSDPStrategy),
    "ddp_cpu": Preset("cpu", 2, "32-true", DDPStrategy),
}


def test_every_trainer_preset_has_its_promises_listed() -> None:
    assert sorted(PRESETS) == choices("trainer")


def build_trainer(cfg: DictConfig, on_cpu: bool) -> L.Trainer:
    """The preset's real Trainer; `on_cpu`: a GPU preset built on the CPU, with 2 processes for "all GPUs"."""
    overrides: dict[str, object] = {}
    if on_cpu and cfg.trainer.accelerator == "gpu":
        overrides["accelerator"] = "cpu"
        overrides["devices"] = 2 if cfg.trainer.devices == -1 else cfg.trainer.devices
    return instantiate(cfg.trainer, logger=False, **overrides)


def check_trainer(trainer: L.Trainer, name: str, devices: int) -> None:
    """The built Trainer keeps the preset's precision, strategy and device count; plus strategy details."""
    promise = PRESETS[name]
    assert trainer.precision == promise.precision
    assert type(trainer.strategy) is promise.strategy
    assert trainer.num_devices == trainer.world_size == devices
    assert isinstance(trainer.strategy.checkpoint_io, StreamingCheckpointIO)  # from trainer/default.yaml
    if promise.strategy is DDPStrategy:  # the script re-launched per rank, not spawned (ddp_spawn)
        assert trainer.strategy._start_method == "popen"
    if name == "ddp_cpu":
        assert trainer.strategy._process_group_backend == "gloo"
    if name == "fsdp":
        check_fsdp(trainer.strategy)


def check_fsdp(strategy: FSDPStrategy) -> None:
    """Full sharding, full state dicts (loadable without FSDP), one FSDP unit per transformer block."""
    assert strategy.sharding_strategy == ShardingStrategy.FULL_SHARD
    assert strategy._state_dict_type == "full"
    policy = strategy.kwargs["auto_wrap_policy"]
    assert isinstance(policy, ModuleWrapPolicy) and policy._module_classes == {Block}


@pytest.mark.parametrize("trainer", sorted(PRESETS))
def test_trainer_presets_build_the_trainer_they_promise(trainer: str, tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, f"trainer={trainer}")
    promise = PRESETS[trainer]
    assert (cfg.trainer.accelerator, cfg.trainer.devices) == (promise.accelerator, promise.devices)
    if trainer == "fsdp":  # Lightning runs FSDP on CUDA only: the CPU can check the strategy, not the Trainer
        with pytest.raises(InstantiationException, match="`fsdp` requires a GPU accelerator"):
            build_trainer(cfg, on_cpu=True)
        check_fsdp(instantiate(cfg.trainer.strategy))
        return
    built = build_trainer(cfg, on_cpu=True)
    auto = CUDAAccelerator if torch.cuda.is_available() else CPUAccelerator
    assert isinstance(built.accelerator, {"auto": auto}.get(promise.accelerator, CPUAccelerator))
    check_trainer(built, trainer, 2 if promise.devices == -1 else promise.devices)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("trainer", ["gpu", "ddp", "fsdp"])
def test_gpu_presets_build_on_cuda_unchanged(trainer: str, tmp_path: Path) -> None:
    built = build_trainer(compose_train(tmp_path, f"trainer={trainer}"), on_cpu=False)
    assert isinstance(built.accelerator, CUDAAccelerator)
    check_trainer(built, trainer, 1 if trainer == "gpu" else torch.cuda.device_count())


@pytest.mark.parametrize("group", ["callbacks", "logger"])
def test_callbacks_and_loggers_instantiate(
    group: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A server URI, never contacted (building the logger opens no connection): the default local store would
    # be made under ./outputs, and making a SQLite store takes seconds (tests/e2e/test_tracked_sweep.py does).
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    for choice in choices(group):
        cfg = compose_train(tmp_path, f"{group}={choice}")
        nodes = [node for node in cfg[group].values() if node is not None]  # null switches one off
        kind = Callback if group == "callbacks" else Logger
        for node in nodes:  # each a real Lightning callback / logger the Trainer accepts, of its _target_
            built = instantiate(node)
            assert isinstance(built, kind) and type(built) is get_class(node._target_), node._target_
        assert nodes or choice == "none"


@pytest.mark.parametrize("data", choices("data"))
def test_data_configs_instantiate(data: str, tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, f"data={data}")
    datamodule = instantiate(cfg.data, _convert_="all")
    assert isinstance(datamodule, (InstructionDataModule, ClassificationDataModule, PreferenceDataModule))


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
    assert (cfg.data.batch_size, cfg.optimizer.lr, cfg.optimizer.weight_decay, cfg.trainer.max_epochs) == (
        8,
        5e-5,
        0.1,
        2,
    )
    assert not cfg.data.mask_prompt and not cfg.data.shuffle_split
    assert (cfg.data.train_fraction, cfg.data.test_fraction) == (0.85, 0.10)
    assert cfg.callbacks.early_stopping is None


def test_book_dpo_recipe(tmp_path: Path) -> None:
    """The book's DPO notebook: beta 0.1, per-token mean logps, lr 5e-6, wd 0.01, batch 8, 1 epoch."""
    cfg = compose_train(tmp_path, "experiment=book-ch07-dpo", "init_from=RUN")
    assert cfg.task._target_.endswith(".PreferenceTuning") and cfg.data._target_.endswith(
        ".PreferenceDataModule"
    )
    assert (cfg.task.beta, cfg.task.logprob_reduction, cfg.task.nll_weight, cfg.task.reference) == (
        0.1,
        "mean",
        0.0,
        "frozen",
    )
    assert (cfg.optimizer.lr, cfg.optimizer.weight_decay, cfg.data.batch_size, cfg.trainer.max_epochs) == (
        5e-6,
        0.01,
        8,
        1,
    )
    assert cfg.task.init_from == "RUN" and cfg.trainer.val_check_interval == 5
    assert cfg.data.path.endswith("04_preference-tuning-with-dpo/instruction-data-with-preference.json")


@pytest.mark.parametrize(("experiment", "book"), [("spam-lora", "spam"), ("book-ch07-lora", "book-ch07")])
def test_lora_recipes_are_the_book_recipes_with_adapters(experiment: str, book: str, tmp_path: Path) -> None:
    """Appendix E and exercise 7.4: the chapter's recipe + LoRA r=16, alpha=16 on all block Linear layers."""
    cfg = compose_train(tmp_path, f"experiment={experiment}")
    base = compose_train(tmp_path, f"experiment={book}")
    assert cfg.task.lora == {"r": 16, "alpha": 16, "dropout": 0.0, "targets": "all"}
    assert base.task.lora.r is None
    assert cfg.model.pretrained and cfg.model == base.model
    assert (cfg.optimizer, cfg.data) == (base.optimizer, base.data)  # lr 5e-5, wd 0.1, batch 8
    assert (cfg.trainer, cfg.seed, cfg.test_on) == (base.trainer, base.seed, base.test_on)


def test_monitor_is_defined_once(tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, "monitor=val/ppl")
    assert cfg.callbacks.model_checkpoint.monitor == cfg.callbacks.early_stopping.monitor == "val/ppl"
