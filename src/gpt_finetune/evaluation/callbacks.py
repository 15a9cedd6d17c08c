"""Lightning callbacks that show generated text while training."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger

from gpt_finetune.evaluation.responses import generate_responses


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
