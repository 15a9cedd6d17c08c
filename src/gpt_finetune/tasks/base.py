"""What every task shares: the backbone built from its `model` spec, AdamW + schedule, clipping, logging."""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any, Literal

import lightning as L
import torch
from lightning.fabric.utilities.data import AttributeDict

from gpt_finetune.errors import UserError
from gpt_finetune.model.build import build_gpt
from gpt_finetune.tasks.adapters import LoRASettings, add_lora
from gpt_finetune.tasks.optim import AdamWSettings, clip_gradients, configure_adamw

Stage = Literal["train", "val", "test"]


def optimizer_settings(optimizer: dict[str, Any] | None, renamed: dict[str, Any]) -> AdamWSettings:
    """The AdamW settings of `optimizer`, where `renamed` (a checkpoint's old top-level `lr=...`) wins."""
    unknown = sorted(set(renamed) - {field.name for field in fields(AdamWSettings)})
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) {', '.join(map(repr, unknown))}")
    return AdamWSettings(**{**(optimizer or {}), **renamed})


def check_lora_base(lora: LoRASettings, model: dict[str, Any], init_from: str | None = None) -> None:
    """LoRA settings that can run, on a base that loads again (from the Hub, a directory or `init_from`)."""
    lora.check()
    if lora.enabled and not (model.get("pretrained") or model.get("weights") or init_from):
        raise UserError(
            "task.lora needs a base that loads again (LoRA checkpoints hold only the adapters): "
            "set model.pretrained=true or model.weights=DIR"
        )


class FinetuneTask(L.LightningModule):
    """A LightningModule around `self.model`, the GPT built from `model` (the `model/` config spec).

    Every `__init__` argument of the task is saved as a hyperparameter, `optimizer` (conf/optimizer/) with
    every setting filled in. Checkpoints written before that group held the settings as top-level arguments
    (`lr`, `weight_decay`, ...): a task's `**renamed` takes them, so `Task(**hparams)` loads either kind.
    """

    def __init__(
        self,
        model: dict[str, Any],
        optimizer: dict[str, Any] | None = None,
        lora: dict[str, Any] | None = None,
        **renamed: Any,
    ) -> None:
        super().__init__()
        settings = optimizer_settings(optimizer, renamed)
        self.lora = LoRASettings(**(lora or {}))
        check_lora_base(self.lora, model)  # before the backbone is built (or downloaded)
        # The __init__ arguments of every class up the chain, then with `optimizer` and `lora` whole; not sent
        # to the loggers (logger=False): train.py logs the whole resolved config there instead.
        self.save_hyperparameters(ignore=list(renamed), logger=False)
        self.save_hyperparameters(
            {**self.hparams, "optimizer": asdict(settings), "lora": asdict(self.lora)}, logger=False
        )
        try:
            self.model = build_gpt(**model)
        except UserError as error:
            if not self.lora.enabled:
                raise
            raise UserError(
                f"{error} (a LoRA checkpoint holds only the adapters: its frozen base loads from "
                f"model.weights={model.get('weights')} or the Hub as when it trained; if the base moved, "
                "chat.py, serve.py and export.py take base_weights=DIR)"
            ) from error

    def add_adapters(self, *trainable: torch.nn.Parameter) -> None:
        """With `task.lora`: freeze the backbone, add adapters, and keep `trainable` (a new head) training.

        Tasks call this at the end of `__init__`, once their head is in place.
        """
        if not self.lora.enabled:
            return
        add_lora(self.model, self.lora)
        for param in trainable:
            param.requires_grad_(True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.lora.enabled:  # adapters and head only: megabytes, where the frozen base is gigabytes
            trained = {name for name, param in self.named_parameters() if param.requires_grad}
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trained}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if not self.lora.enabled:
            return
        # A LoRA checkpoint holds what trains; the frozen rest is this task's own base (from the `model`
        # spec), filled in so that the load stays strict.
        saved = checkpoint["state_dict"]
        missing = [n for n, p in self.named_parameters() if p.requires_grad and n not in saved]
        if missing:
            raise UserError(
                f"the checkpoint lacks {len(missing)} trained tensors ({missing[0]}, ...): "
                "it was not written with this task.lora setting"
            )
        for name, tensor in self.state_dict().items():
            saved.setdefault(name, tensor)

    @property
    def hparams(self) -> AttributeDict:
        """The saved `__init__` arguments: a dict, which `save_hyperparameters` keeps as an AttributeDict."""
        hparams = super().hparams
        assert isinstance(hparams, AttributeDict)
        return hparams

    def log_loss(
        self, stage: Stage, loss: torch.Tensor, batch_size: int | None = None, **kwargs: Any
    ) -> None:
        """`stage/loss` on the progress bar: per step in training, else the mean over the epoch."""
        on_step = stage == "train"
        self.log(
            f"{stage}/loss",
            loss,
            prog_bar=True,
            on_step=on_step,
            on_epoch=not on_step,
            batch_size=batch_size,
            **kwargs,
        )

    def configure_optimizers(self) -> Any:
        return configure_adamw(self, AdamWSettings(**self.hparams.optimizer))

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        clip_gradients(self, optimizer, gradient_clip_val, gradient_clip_algorithm)


def rebuild_spec(hparams: dict[str, Any], base_weights: str | None = None) -> dict[str, Any]:
    """The `model` spec that rebuilds a checkpoint's task: no download, the checkpoint has every weight —
    except with LoRA, whose checkpoint holds the adapters only: then the base comes from the spec's source,
    or from `base_weights` (a directory) when the base has moved since training."""
    spec = dict(hparams["model"])
    if (hparams.get("lora") or {}).get("r") is not None:
        return {**spec, "weights": base_weights} if base_weights is not None else spec
    return {**spec, "pretrained": False, "weights": None}
