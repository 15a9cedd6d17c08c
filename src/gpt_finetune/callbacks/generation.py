"""Lightning callbacks that generate text: samples while validating, the test set after testing.

Rank 0 generates and writes; under FSDP, where each rank holds a shard of the weights, every rank runs the
same generation in step (each forward gathers the weights from all ranks) and rank 0 writes.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypedDict, TypeVar

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from gpt_finetune.artifacts import write_json
from gpt_finetune.data.instruct_datamodule import InstructionDataModule
from gpt_finetune.data.instructions import Record
from gpt_finetune.data.preference_datamodule import PreferenceDataModule
from gpt_finetune.errors import UserError
from gpt_finetune.evaluation.responses import generate_responses
from gpt_finetune.tasks.dpo import PreferenceTuning
from gpt_finetune.tasks.generating import GeneratingTask

log = logging.getLogger(__name__)
T = TypeVar("T")


def sharded(trainer: L.Trainer) -> bool:
    """Whether the weights are sharded across ranks (FSDP): then every rank must take part in each forward."""
    if not torch.distributed.is_available():  # builds without torch.distributed have no FSDP to import
        return False
    from torch.distributed.fsdp import FullyShardedDataParallel

    return isinstance(trainer.strategy.model, FullyShardedDataParallel)


def instruction_run(
    trainer: L.Trainer, pl_module: L.LightningModule
) -> tuple[GeneratingTask, InstructionDataModule | PreferenceDataModule]:
    """The instruction (or DPO) task and data these callbacks generate with (TestResponses.setup checks
    the task); the data's `splits` hold records with instruction, input and output."""
    # Lightning sets `trainer.datamodule` for each fit and test; the Trainer class does not declare it.
    datamodule = getattr(trainer, "datamodule", None)
    assert isinstance(pl_module, GeneratingTask)
    assert isinstance(datamodule, InstructionDataModule | PreferenceDataModule)
    return pl_module, datamodule


def on_ranks(trainer: L.Trainer, pl_module: L.LightningModule, generate: Callable[[], T]) -> T | None:
    """`generate()` on rank 0 (None elsewhere), or under FSDP on every rank, run inside the root wrapper's
    forward: that gathers the weights FSDP keeps outside the transformer blocks (embeddings, final norm,
    head), as it does for a training step, and each block gathers its own when called. Every rank must then
    run the same calls in the same order: the same records, greedy or with the same seed."""
    if not sharded(trainer):
        return generate() if trainer.is_global_zero else None
    wrapper = trainer.strategy.model
    assert wrapper is not None  # the FSDP wrapper `sharded` found
    # The wrapper's forward calls its module's forward: an instance attribute shadows the method for one call.
    pl_module.forward = lambda *_: generate()  # type: ignore[method-assign]
    try:
        return wrapper()
    finally:
        del pl_module.forward


class ValidationSamples(L.Callback):
    """After each validation, log the responses to the first `num_samples` validation records as text."""

    def __init__(self, num_samples: int = 3, max_new_tokens: int = 64) -> None:
        self.num_samples = num_samples
        self.max_new_tokens = max_new_tokens

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.num_samples <= 0:
            return
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not loggers:
            return
        task, datamodule = instruction_run(trainer, pl_module)
        records = datamodule.splits["val"][: self.num_samples]
        style = task.hparams.prompt_style
        results = on_ranks(
            trainer,
            task,
            lambda: generate_responses(task.model, records, style, max_new_tokens=self.max_new_tokens),
        )
        if results is None or not trainer.is_global_zero:
            return
        for i, result in enumerate(results):
            text = (
                f"**instruction:** {result['instruction']}  \n**input:** {result['input']}  \n"
                f"**expected:** {result['output']}  \n**model:** {result['model_response']}"
            )
            for lg in loggers:
                lg.experiment.add_text(f"val_samples/{i}", text, global_step=trainer.global_step)


class GenerationOptions(TypedDict):
    max_new_tokens: int
    batch_size: int
    temperature: float
    top_k: int | None
    seed: int | None


def add_starting_responses(
    task: PreferenceTuning,
    records: list[Record],
    responses: list[dict[str, object]],
    options: GenerationOptions,
) -> None:
    """Each response's `reference_response`: what the model DPO started from answers (before / after)."""
    with task.starting_model() as start:
        if start is None:
            return
        log.info("generating %d test responses with the starting (reference) model", len(records))
        before = generate_responses(start, records, task.hparams.prompt_style, **options)
    for response, reference in zip(responses, before, strict=True):
        response["reference_response"] = reference["model_response"]


class TestResponses(L.Callback):
    """After testing (best weights loaded), write the test split's responses to test_responses.json."""

    def __init__(
        self,
        output_dir: str,
        enabled: bool = True,
        max_new_tokens: int = 256,
        batch_size: int = 32,
        temperature: float = 0.0,
        top_k: int | None = None,
        seed: int | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.enabled = enabled
        self.options: GenerationOptions = {
            "max_new_tokens": max_new_tokens,
            "batch_size": batch_size,
            "temperature": temperature,
            "top_k": top_k,
            "seed": seed,
        }

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not isinstance(pl_module, GeneratingTask):
            raise UserError(
                "callbacks=instruct writes generated responses and needs task=instruct; "
                "use callbacks=classify (or callbacks=default) with this task"
            )
        context = pl_module.model.config.context_length
        if self.enabled and self.options["max_new_tokens"] >= context:
            raise UserError(
                f"generate.max_new_tokens={self.options['max_new_tokens']} "
                f"must be below the model context {context}"
            )

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled or (not trainer.is_global_zero and not sharded(trainer)):
            return
        task, datamodule = instruction_run(trainer, pl_module)
        records = datamodule.splits["test"]
        options = self.options.copy()
        if options["seed"] is None and sharded(trainer):  # sampling must draw the same tokens on every rank
            options["seed"] = trainer.strategy.broadcast(random.randrange(2**31))
        if trainer.is_global_zero:
            log.info("generating %d test responses with the tested weights", len(records))
        started = time.perf_counter()
        responses = on_ranks(
            trainer,
            task,
            lambda: generate_responses(
                task.model,
                records,
                task.hparams.prompt_style,
                **options,
                progress=trainer.is_global_zero,  # under FSDP every rank generates: one bar
                trainer=trainer,
            ),
        )
        if responses is None or not trainer.is_global_zero:
            return
        if isinstance(task, PreferenceTuning) and not sharded(trainer):
            add_starting_responses(task, records, responses, options)
        write_json(self.output_dir / "test_responses.json", responses)
        trainer.callback_metrics["test/generation_s"] = torch.tensor(time.perf_counter() - started)
        stopped = sum(bool(r["stopped"]) for r in responses) / max(1, len(responses))
        trainer.callback_metrics["test/stopped_fraction"] = torch.tensor(stopped)
