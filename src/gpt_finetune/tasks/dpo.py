"""Preference tuning with DPO: a policy (from an instruction run) against a frozen reference."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from gpt_finetune.errors import UserError
from gpt_finetune.model import GPT
from gpt_finetune.tasks.adapters import LoRASettings, adapters_disabled, merge_lora
from gpt_finetune.tasks.base import Stage, check_lora_base, rebuild_spec
from gpt_finetune.tasks.dpo_loss import dpo_loss, reduce_logps, response_logps
from gpt_finetune.tasks.generating import GeneratingTask
from gpt_finetune.tasks.instruct import InstructionTuning

REFERENCES = ("frozen", "precomputed")
REDUCTIONS = ("mean", "sum")
SPLITS: tuple[Stage, ...] = ("train", "val", "test")


def check_settings(
    beta: float, label_smoothing: float, logprob_reduction: str, nll_weight: float, reference: str
) -> None:
    """Fail before any work on DPO settings that cannot train; all problems in one line."""
    problems = []
    if beta <= 0:
        problems.append(f"task.beta={beta} must be > 0")
    if not 0 <= label_smoothing < 0.5:
        problems.append(f"task.label_smoothing={label_smoothing} must lie in [0, 0.5)")
    if logprob_reduction not in REDUCTIONS:
        problems.append(f"task.logprob_reduction={logprob_reduction} is not one of {', '.join(REDUCTIONS)}")
    if nll_weight < 0:
        problems.append(f"task.nll_weight={nll_weight} must be >= 0")
    if reference not in REFERENCES:
        problems.append(f"task.reference={reference} is not one of {', '.join(REFERENCES)}")
    if problems:
        raise UserError("; ".join(problems))


def rebuild_task(checkpoint: dict[str, Any], source: str, base_weights: str | None = None) -> GeneratingTask:
    """The instruction (or DPO) task a loaded checkpoint holds, built from its saved spec without
    downloads (a LoRA run's base from its source, or `base_weights`), its weights loaded."""
    hparams = checkpoint.get("hyper_parameters", {})
    if "model" not in hparams or "prompt_style" not in hparams:
        raise UserError(f"{source}: not an instruction-tuning checkpoint (no model spec and prompt style)")
    if "beta" in hparams:  # a DPO run's policy
        task: GeneratingTask = PreferenceTuning(**rebuild_hparams(hparams, base_weights))
    else:
        task = InstructionTuning(**{**hparams, "model": rebuild_spec(hparams, base_weights)})
    task.on_load_checkpoint(checkpoint)  # a LoRA checkpoint: the frozen base filled in
    task.load_state_dict(checkpoint["state_dict"])
    return task


def starting_model(checkpoint: str) -> GPT:
    """The GPT in an instruction run's `checkpoint`, a LoRA run's adapters merged, in eval mode."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model = rebuild_task(saved, f"init_from={checkpoint}").model
    merge_lora(model)
    return model.eval()


def load_initial_weights(model: GPT, checkpoint: str) -> None:
    """Copy the weights of the instruction run's `checkpoint` (a LoRA run's merged) into `model`."""
    try:
        model.load_state_dict(starting_model(checkpoint).state_dict())
    except RuntimeError as error:
        problem = str(error).splitlines()[1].strip() if "\n" in str(error) else str(error)
        raise UserError(f"init_from={checkpoint}: its weights do not fit the model ({problem})") from None


class PreferenceTuning(GeneratingTask):
    """DPO on preference batches (chosen rows, then rejected rows) from `data=preferences`.

    The policy starts from `init_from` (an instruction run's checkpoint) or the `model` spec. The reference
    is that start: with `reference=frozen` a frozen copy (with LoRA, the policy with its adapters off: no
    copy), with `reference=precomputed` its log-probabilities of every pair, computed once before the first
    step and kept in the checkpoint. `logprob_reduction` makes a response's log-probability the `mean` over
    its tokens (the book) or their `sum` (the paper, TRL); `nll_weight` adds the chosen responses' per-token
    negative log-likelihood to the loss (RPO, TRL's `rpo_alpha`).
    """

    def __init__(
        self,
        model: dict[str, Any],
        prompt_style: str = "alpaca",
        optimizer: dict[str, Any] | None = None,
        beta: float = 0.1,
        label_smoothing: float = 0.0,
        logprob_reduction: str = "mean",
        nll_weight: float = 0.0,
        reference: str = "frozen",
        init_from: str | None = None,
        compile: bool = False,
        lora: dict[str, Any] | None = None,
        **renamed: Any,
    ) -> None:
        check_settings(beta, label_smoothing, logprob_reduction, nll_weight, reference)
        adapters = LoRASettings(**(lora or {}))
        check_lora_base(adapters, model, init_from)
        # Built without adapters: the starting weights load into the plain GPT, then adapters are added.
        super().__init__(model, prompt_style, optimizer, None, **renamed)
        if init_from is not None:
            load_initial_weights(self.model, init_from)
        self.lora = adapters
        self.save_hyperparameters(
            {**self.hparams, "lora": asdict(adapters), "compile": compile}, logger=False
        )
        self.add_adapters()
        self.logps_fn = torch.compile(response_logps, dynamic=True) if compile else response_logps
        # The frozen copy is kept out of the module tree: not in checkpoints (the start it copies rebuilds
        # it), not trained, never in training mode; `_apply` moves it with the task.
        self._frozen: list[GPT] = []
        if reference == "frozen" and not self.lora.enabled:
            self._frozen.append(copy.deepcopy(self.model).requires_grad_(False).eval())
        # reference=precomputed: split -> (pairs, 2 [chosen, rejected], 2 [logp sum, tokens])
        self.reference_logps: dict[str, torch.Tensor] = {}

    @property
    def reference_model(self) -> GPT | None:
        """The frozen copy of the starting weights (reference=frozen without LoRA), else None."""
        return self._frozen[0] if self._frozen else None

    @contextmanager
    def starting_model(self) -> Iterator[GPT | None]:
        """The model DPO started from (the instruction model), for before / after comparisons: the frozen
        copy, the policy with its adapters off, or `init_from` loaded again; None when none of these is."""
        if self.reference_model is not None:
            yield self.reference_model
        elif self.lora.enabled:
            training = self.model.training
            self.model.eval()
            try:
                with adapters_disabled(self.model):
                    yield self.model
            finally:
                self.model.train(training)
        elif self.hparams.init_from is not None and Path(self.hparams.init_from).is_file():
            yield starting_model(self.hparams.init_from).to(self.device)
        else:
            yield None

    def _apply(self, fn: Any, recurse: bool = True) -> PreferenceTuning:
        super()._apply(fn, recurse)
        for model in self._frozen:
            model._apply(fn, recurse)
        return self

    def _reference_forward(self, input_ids: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The reference's (logp sums, token counts) of the rows, without gradients or dropout."""
        if self.reference_model is not None:
            with torch.no_grad():
                return response_logps(self.reference_model, input_ids, targets)
        training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), adapters_disabled(self.model):
                return response_logps(self.model, input_ids, targets)
        finally:
            self.model.train(training)

    def _reference(self, batch: dict[str, torch.Tensor], stage: Stage) -> tuple[torch.Tensor, ...]:
        if self.hparams.reference != "precomputed":
            return self._reference_forward(batch["input_ids"], batch["targets"])
        if stage not in self.reference_logps:
            self._precompute_reference()
        cached = self.reference_logps[stage].to(batch["input_ids"].device)[batch["index"]]  # (B, 2, 2)
        return cached[:, :, 0].T.flatten(), cached[:, :, 1].T.flatten()  # chosen rows, then rejected rows

    @torch.no_grad()
    def _precompute_reference(self) -> None:
        """Every split's reference log-probabilities, from the weights as they are before the first step."""
        if self.trainer.global_step > 0:
            raise UserError(
                "task.reference=precomputed: this checkpoint holds no precomputed reference and the policy "
                "has trained since; resume with the reference setting it was trained with"
            )
        datamodule = self.trainer.datamodule  # type: ignore[attr-defined]
        for split in SPLITS:
            parts = []
            for batch in datamodule.dataloader(split):
                ids, targets = batch["input_ids"].to(self.device), batch["targets"].to(self.device)
                with self.trainer.precision_plugin.forward_context():
                    sums, counts = self._reference_forward(ids, targets)
                pairs = len(batch["index"])
                parts.append(torch.stack([sums.view(2, pairs).T, counts.view(2, pairs).T.float()], dim=2))
            self.reference_logps[split] = torch.cat(parts).float().cpu()

    def _shared_step(self, batch: dict[str, torch.Tensor], stage: Stage) -> torch.Tensor:
        pairs = batch["index"].shape[0]
        sums, counts = self.logps_fn(self.model, batch["input_ids"], batch["targets"])
        reference_sums, reference_counts = self._reference(batch, stage)
        reduction = self.hparams.logprob_reduction
        policy = reduce_logps(sums, counts, reduction)
        reference = reduce_logps(reference_sums, reference_counts, reduction)
        result = dpo_loss(
            policy[:pairs],
            policy[pairs:],
            reference[:pairs],
            reference[pairs:],
            self.hparams.beta,
            self.hparams.label_smoothing,
        )
        nll = -sums[:pairs].sum() / counts[:pairs].sum().clamp(min=1)  # per chosen token
        loss = result.losses.mean()
        if self.hparams.nll_weight:
            loss = loss + self.hparams.nll_weight * nll
        if stage == "train":
            self._batch_shape, self._batch_tokens = tuple(batch["input_ids"].shape), int(counts.sum())
        shown = {
            "loss": loss.detach(),
            "rewards/chosen": result.chosen_rewards.mean(),
            "rewards/rejected": result.rejected_rewards.mean(),
            "rewards/margins": result.margins.mean(),
            "rewards/accuracy": result.accuracy.mean(),
            "logps/chosen": policy[:pairs].detach().mean(),
            "logps/rejected": policy[pairs:].detach().mean(),
            "nll": nll.detach(),
        }
        for name, value in shown.items():
            self.log(
                f"{stage}/{name}",
                value,
                prog_bar=name in ("loss", "rewards/accuracy"),
                on_step=stage == "train",
                on_epoch=stage != "train",
                batch_size=pairs,
                sync_dist=True,  # in training too: the mean over every rank's pairs, as one process sees it
            )
        return loss

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.reference_logps:
            checkpoint["reference_logps"] = self.reference_logps

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.reference_logps = dict(checkpoint.get("reference_logps", {}))

    @property
    def flops_per_batch(self) -> int:
        """The policy's forward + backward, and the reference's forward unless precomputed (a third more)."""
        policy = super().flops_per_batch
        return policy if self.hparams.reference == "precomputed" else policy * 4 // 3


def rebuild_hparams(hparams: dict[str, Any], base_weights: str | None = None) -> dict[str, Any]:
    """A DPO checkpoint's hyperparameters for rebuilding its policy to use it: no reference copy, and the
    starting weights read again only for a LoRA run (whose checkpoint holds the adapters alone)."""
    lora = (hparams.get("lora") or {}).get("r") is not None
    # Older DPO runs saved `head_on_targets_only`, which never had an effect (the log-probabilities always
    # run the LM head on the response tokens alone).
    hparams = {k: v for k, v in hparams.items() if k != "head_on_targets_only"}
    return {
        **hparams,
        "model": rebuild_spec(hparams, base_weights),
        "reference": "precomputed",
        "init_from": hparams.get("init_from") if lora else None,
    }
