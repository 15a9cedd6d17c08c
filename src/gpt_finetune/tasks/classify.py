"""Classification: a GPT backbone whose LM head is replaced by `Linear(emb_dim, num_classes)`."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from gpt_finetune.data.classify_datamodule import encode_texts
from gpt_finetune.errors import UserError
from gpt_finetune.model import GPT
from gpt_finetune.tasks.base import FinetuneTask, Stage

Trainable = Literal["head", "last_block", "last_two_blocks", "all"]
Pooling = Literal["last_position", "last_token", "mean"]
TRAINABLE_BLOCKS = {"head": 0, "last_block": 1, "last_two_blocks": 2}
POOLINGS = ("last_position", "last_token", "mean")


def set_trainable(model: GPT, trainable: Trainable) -> None:
    """Train only the head, or also the last 1 or 2 blocks and the final norm, or everything (`all`)."""
    if trainable != "all" and trainable not in TRAINABLE_BLOCKS:
        raise UserError(f"task.trainable={trainable!r} is not one of {', '.join([*TRAINABLE_BLOCKS, 'all'])}")
    model.requires_grad_(trainable == "all")
    if trainable == "all":
        return
    blocks = TRAINABLE_BLOCKS[trainable]
    unfrozen = [model.lm_head, *([model.transformer.ln_f] if blocks else [])]
    unfrozen += list(model.transformer.h)[len(model.transformer.h) - blocks :]
    for module in unfrozen:
        module.requires_grad_(True)


def pool(hidden: torch.Tensor, lengths: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """(B, T, C) -> (B, C): the last position (book), the last real token, or the mean over real tokens."""
    if pooling == "last_position":
        return hidden[:, -1]
    if pooling == "last_token":
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), lengths - 1]
    if pooling == "mean":
        real = torch.arange(hidden.shape[1], device=hidden.device)[None, :] < lengths[:, None]  # (B, T)
        summed = (hidden * real[..., None].to(hidden.dtype)).sum(dim=1)
        return summed / lengths[:, None].to(hidden.dtype)
    raise UserError(f"task.pooling={pooling!r} is not one of {', '.join(POOLINGS)}")


def split_metrics(num_classes: int, stage: str) -> MetricCollection:
    """Accuracy and macro F1, logged as `stage/acc` and `stage/f1`."""
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "f1": MulticlassF1Score(num_classes, average="macro"),
        },
        prefix=f"{stage}/",
    )


class Classification(FinetuneTask):
    """A GPT from `model` (the `model/` spec) with a class head; `labels` (names, in id order) is saved."""

    def __init__(
        self,
        model: dict[str, Any],
        labels: list[Any],
        trainable: Trainable = "last_block",
        pooling: Pooling = "last_position",
        optimizer: dict[str, Any] | None = None,
        lora: dict[str, Any] | None = None,
        **renamed: Any,
    ) -> None:
        if pooling not in POOLINGS:  # before the backbone is built (or downloaded)
            raise UserError(f"task.pooling={pooling!r} is not one of {', '.join(POOLINGS)}")
        super().__init__(model, optimizer, lora, **renamed)
        self.labels = [str(name) for name in labels]
        self.model.lm_head = nn.Linear(self.model.config.emb_dim, len(self.labels))  # book: `out_head`
        set_trainable(self.model, trainable)
        if self.lora.enabled and trainable == "all":
            raise UserError(
                "task.trainable=all trains every weight, so task.lora would add nothing; with LoRA use "
                "task.trainable=head (adapters + head), last_block or last_two_blocks (those in full too)"
            )
        # With task.lora: the adapters train, and in full what `trainable` names (the head at least).
        self.add_adapters(*(p for p in self.model.parameters() if p.requires_grad))
        self.train_metrics = split_metrics(len(self.labels), "train")
        self.val_metrics = split_metrics(len(self.labels), "val")
        self.test_metrics = split_metrics(len(self.labels), "test")
        # How texts become inputs (padding width, max_length): set from the data, saved with checkpoints.
        self.input_format: dict[str, Any] = {"padding": "batch", "width": None, "max_length": None}

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Class logits (B, num_classes): the head applied to the pooled final-norm hidden state."""
        hidden = self.model.hidden_states(input_ids)  # (B, T, C)
        return self.model.lm_head(pool(hidden, lengths, self.hparams.pooling))

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "input_format"):
            return
        if datamodule.labels != self.labels:
            raise UserError(
                f"task.labels={self.labels} differ from data.labels={datamodule.labels}; "
                "set task.labels=${data.labels}"
            )
        self.input_format = datamodule.input_format()
        context = self.model.config.context_length
        if datamodule.longest > context:
            raise UserError(
                f"texts are padded to {datamodule.longest} tokens, over the model context {context}; "
                f"set data.max_length={context} (or lower)"
            )

    def _shared_step(self, batch: dict[str, torch.Tensor], stage: Stage) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self(batch["input_ids"], batch["lengths"])
        labels = batch["labels"]
        loss = F.cross_entropy(logits.float(), labels)
        metrics = getattr(self, f"{stage}_metrics")
        metrics.update(logits.detach(), labels)
        size = labels.shape[0]
        self.log_loss(stage, loss, batch_size=size)
        self.log_dict(metrics, prog_bar=stage != "test", on_step=False, on_epoch=True, batch_size=size)
        return loss, logits

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train")[0]

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        """Logits for callbacks (`on_test_batch_end`): test predictions and the confusion matrix."""
        return {"logits": self._shared_step(batch, "test")[1].detach()}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["input_format"] = self.input_format

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.input_format = checkpoint.get("input_format", self.input_format)

    @torch.no_grad()
    def predict_proba(self, texts: list[str], batch_size: int = 32) -> torch.Tensor:
        """Class probabilities (N, num_classes) for raw texts, padded as in training."""
        was_training, probs = self.training, []
        self.eval()
        for start in range(0, len(texts), batch_size):
            batch = encode_texts(texts[start : start + batch_size], self.input_format)
            logits = self(batch["input_ids"].to(self.device), batch["lengths"].to(self.device))
            probs.append(logits.float().softmax(dim=-1).cpu())
        self.train(was_training)
        return torch.cat(probs)
