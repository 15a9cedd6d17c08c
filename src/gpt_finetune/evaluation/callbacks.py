"""Lightning callbacks that generate text: samples while validating, the test set after testing."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from gpt_finetune.artifacts import write_json
from gpt_finetune.errors import UserError
from gpt_finetune.evaluation.responses import generate_responses

log = logging.getLogger(__name__)


class ValidationSamples(L.Callback):
    """After each validation, log the responses to the first `num_samples` validation records as text."""

    def __init__(self, num_samples: int = 3, max_new_tokens: int = 64) -> None:
        self.num_samples = num_samples
        self.max_new_tokens = max_new_tokens

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or self.num_samples <= 0:
            return
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not loggers:
            return
        records = trainer.datamodule.splits["val"][: self.num_samples]
        style = pl_module.hparams.prompt_style
        results = generate_responses(pl_module.model, records, style, max_new_tokens=self.max_new_tokens)
        for i, result in enumerate(results):
            text = (
                f"**instruction:** {result['instruction']}  \n**input:** {result['input']}  \n"
                f"**expected:** {result['output']}  \n**model:** {result['model_response']}"
            )
            for lg in loggers:
                lg.experiment.add_text(f"val_samples/{i}", text, global_step=trainer.global_step)


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
        self.options = {
            "max_new_tokens": max_new_tokens,
            "batch_size": batch_size,
            "temperature": temperature,
            "top_k": top_k,
            "seed": seed,
        }

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if "prompt_style" not in pl_module.hparams:
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
        if not self.enabled or not trainer.is_global_zero:
            return
        records = trainer.datamodule.splits["test"]
        log.info("generating %d test responses with the tested weights", len(records))
        started = time.perf_counter()
        responses = generate_responses(
            pl_module.model, records, pl_module.hparams.prompt_style, **self.options
        )
        write_json(self.output_dir / "test_responses.json", responses)
        trainer.callback_metrics["test/generation_s"] = torch.tensor(time.perf_counter() - started)
        stopped = sum(r["stopped"] for r in responses) / max(1, len(responses))
        trainer.callback_metrics["test/stopped_fraction"] = torch.tensor(stopped)
