"""`evaluate(cfg)`: score a finished run's test responses, plot its losses, judge, write report.html.

Where it writes: `evaluate.py run_dir=RUN` (reusing test_responses.json, or regenerating it with the run's
best checkpoint) writes into RUN itself; `evaluate.py ckpt_path=FILE.ckpt` evaluates another checkpoint and
writes into `RUN/eval/<checkpoint file name without .ckpt>/`, never over the run's own files.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from gpt_finetune.artifacts import atomic_path, write_json, write_text
from gpt_finetune.config import plain_dict, register_resolvers
from gpt_finetune.devices import resolve_device
from gpt_finetune.errors import UserError, run_command
from gpt_finetune.evaluation.judge import Judge
from gpt_finetune.evaluation.loss_curves import plot_losses
from gpt_finetune.evaluation.metrics import score_record, summarize
from gpt_finetune.evaluation.report import ReportData, render_report
from gpt_finetune.evaluation.responses import generate_responses
from gpt_finetune.evaluation.run_dir import load_finetuned, locate, run_config, test_records
from gpt_finetune.evaluation.tensorboard_io import add_summaries, read_scalars
from gpt_finetune.loggers.mlflow_runs import add_to_mlflow

log = logging.getLogger(__name__)
GENERATE_KEYS = ("max_new_tokens", "batch_size", "temperature", "top_k", "seed")


EVAL_DIR = "eval"  # RUN/eval/<checkpoint name>/: the outputs of `ckpt_path=` evaluations


@dataclass
class Responses:
    """Test records with `model_response`, where they came from, and the prompt style they were made with;
    `step` is the global step of the checkpoint that generated them, when one did."""

    records: list[dict[str, Any]]
    source: str
    style: str
    step: int | None = None


@dataclass(frozen=True)
class Target:
    """The run being evaluated (config.yaml, metrics.json, TensorBoard losses are read from it), the
    checkpoint to generate with, and the folder the outputs go to: the run itself, or RUN/eval/<ckpt>/."""

    run_dir: Path
    ckpt: Path | None
    out_dir: Path

    @property
    def own_folder(self) -> bool:
        """True for a `ckpt_path=` evaluation, which writes into a folder of its own."""
        return self.out_dir != self.run_dir


def main(cfg: DictConfig) -> dict[str, Any]:
    """Entry point for `evaluate.py`: `evaluate`, with user errors as one line on stderr and exit code 2."""
    register_resolvers()
    return run_command(evaluate, cfg)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Write response_metrics.json, loss.png, report.html (and judge_scores.json) into the run dir, or
    with `ckpt_path=` (and test_responses.json) into RUN/eval/<checkpoint name>/."""
    started = time.perf_counter()
    target = resolve_target(cfg.run_dir, cfg.ckpt_path)
    judge = build_judge(cfg.judge)  # a bad judge config fails before any generation
    config = run_config(target.run_dir)
    responses = obtain_responses(target, cfg, config)
    report = score_and_report(target, responses, config)
    step = responses.step if target.own_folder else None
    step = int(report.train_metrics.get("global_step") or 0) if step is None else step
    summary = dict(report.summary)
    figures = {f"eval/{k}": v for k, v in summary.items() if k != "records"}  # as TensorBoard tags
    to_tensorboard(target, step, figures)
    log.info("responses: %s", ", ".join(f"{k} {v:.4g}" for k, v in summary.items() if v is not None))
    if judge is not None:
        judged = judge.judge(responses.records, responses.style)
        write_json(target.out_dir / "judge_scores.json", judged)
        report.judge = judged
        write_text(target.out_dir / "report.html", render_report(report))
        to_tensorboard(
            target, step, {"judge/average": judged["average"]}, {"judge/summary": judge_text(judged)}
        )
        log.info("judge: %s", judged["summary"])
        summary.update(judge_average=judged["average"], judge_scored=judged["scored"])
        figures["judge/average"] = judged["average"]
    to_trackers(target, config, step, figures)
    log.info("wrote %s in %.1f s", target.out_dir / "report.html", time.perf_counter() - started)
    return summary


def resolve_target(run_dir: str | None, ckpt_path: str | None) -> Target:
    """The run, the checkpoint and the output folder: RUN/eval/<ckpt stem>/ for `ckpt_path=`, else RUN."""
    folder, ckpt = locate(run_dir, ckpt_path)
    if ckpt_path is None or ckpt is None:
        return Target(folder, ckpt, folder)
    return Target(folder, ckpt.absolute(), folder / EVAL_DIR / ckpt.name.removesuffix(".ckpt"))


def score_and_report(target: Target, responses: Responses, config: dict[str, Any]) -> ReportData:
    """Score every response, write response_metrics.json, loss.png and report.html; the report's data."""
    run_dir, out_dir = target.run_dir, target.out_dir
    scores = [score_record(r) for r in responses.records]
    summary = summarize(scores)
    per_record = [
        {"instruction": r["instruction"], **s} for r, s in zip(responses.records, scores, strict=True)
    ]
    about: dict[str, str | int | None] = {"source": responses.source}
    if target.own_folder:
        about |= {"run_dir": str(run_dir), "checkpoint": str(target.ckpt), "global_step": responses.step}
    write_json(out_dir / "response_metrics.json", {**about, **summary, "per_record": per_record})
    loss_png = plot_losses(read_scalars(run_dir / "tensorboard"))
    if loss_png is not None:
        with atomic_path(out_dir / "loss.png") as tmp:
            tmp.write_bytes(loss_png)
    notes = [f"Run directory: {run_dir}", f"Responses: {responses.source}"]
    if target.own_folder:
        notes.append(f"Checkpoint: {target.ckpt} (step {responses.step})")
    report = ReportData(
        title=f"Evaluation of {run_dir.name}"
        + (f": {target.ckpt.name}" if target.own_folder and target.ckpt is not None else ""),
        records=responses.records,
        scores=scores,
        summary=summary,
        loss_png=loss_png,
        config_yaml=(run_dir / "config.yaml").read_text(encoding="utf-8") if config else None,
        train_metrics=read_json(run_dir / "metrics.json"),
        notes=notes,
    )
    write_text(out_dir / "report.html", render_report(report))
    return report


def build_judge(node: DictConfig) -> Judge | None:
    """The configured judge, or None for `judge=none`."""
    if node.get("_target_") is None:
        return None
    # Partial, then called here: a UserError from the constructor reaches the user unwrapped by Hydra.
    return instantiate(node, _partial_=True)()


def obtain_responses(target: Target, cfg: DictConfig, config: dict[str, Any]) -> Responses:
    """Reuse the run's test_responses.json, or (re)generate it with the checkpoint into the output folder."""
    run_dir, ckpt, path = target.run_dir, target.ckpt, target.out_dir / "test_responses.json"
    if path.is_file() and not cfg.regenerate and not target.own_folder:
        records = read_responses(path)
        return Responses(records, f"{path.name} (reused)", saved_style(config, ckpt))
    if ckpt is None:
        raise UserError(
            f"{run_dir} has no test_responses.json and no checkpoint in checkpoints/; "
            "give the folder of a finished train.py run or ckpt_path=<file.ckpt>"
        )
    device = resolve_device(cfg.device)
    finetuned = load_finetuned(ckpt, device)
    records = test_records(finetuned.data, ckpt, finetuned.pairs)
    settings = generation_settings(cfg.generate, config)
    log.info("generating %d test responses with %s (%s)", len(records), ckpt, settings)
    generated = generate_responses(
        finetuned.model, records, finetuned.prompt_style, **settings, progress=True
    )
    write_json(path, generated)
    return Responses(generated, f"generated with {ckpt}", finetuned.prompt_style, finetuned.global_step)


def read_responses(path: Path) -> list[dict[str, Any]]:
    """test_responses.json, checked to be a list of records with a model response."""
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise UserError(f"{path}: invalid JSON ({error}); delete it or pass regenerate=true") from None
    needed = {"instruction", "output", "model_response"}
    if not isinstance(records, list) or not all(isinstance(r, dict) and needed <= set(r) for r in records):
        raise UserError(
            f"{path}: not a list of records with {', '.join(sorted(needed))}; pass regenerate=true"
        )
    return records


def saved_style(config: dict[str, Any], ckpt: Path | None) -> str:
    """The prompt style the run trained with: config.yaml, else the checkpoint, else alpaca."""
    style = config.get("task", {}).get("prompt_style")
    if style is None and ckpt is not None:
        hparams = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True).get(
            "hyper_parameters", {}
        )
        style = hparams.get("prompt_style")
    if style is None:
        log.warning("no config.yaml or checkpoint says which prompt style the run used; assuming alpaca")
    return style or "alpaca"


def generation_settings(overrides: DictConfig, config: dict[str, Any]) -> dict[str, Any]:
    """Generation keyword arguments: the run's `generate` settings and seed, then non-null overrides."""
    saved = {**config.get("generate", {}), "seed": config.get("seed")}
    settings = {key: saved.get(key) for key in GENERATE_KEYS}
    settings.update({k: v for k, v in plain_dict(overrides).items() if v is not None})
    return {k: v for k, v in settings.items() if v is not None}


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def to_tensorboard(
    target: Target, step: int, scalars: dict[str, Any], texts: dict[str, str] | None = None
) -> None:
    """Add to the run's TensorBoard event files, when the run has a tensorboard/ folder; a `ckpt_path=`
    evaluation writes its own, RUN/eval/<ckpt>/tensorboard (a run of its own for `tensorboard --logdir`)."""
    if target.own_folder:
        add_summaries(target.out_dir / "tensorboard", step, scalars, texts)
    elif (target.run_dir / "tensorboard").is_dir():
        add_summaries(target.run_dir / "tensorboard", step, scalars, texts)


def to_trackers(target: Target, config: dict[str, Any], step: int, figures: dict[str, Any]) -> None:
    """The report and scores into the run's MLflow run, when it logged to MLflow: a `run_dir=` evaluation's
    files and figures (the TensorBoard tags); a `ckpt_path=` evaluation's files under `eval/<checkpoint>/`."""
    files = [target.out_dir / name for name in ("report.html", "response_metrics.json", "judge_scores.json")]
    if target.own_folder:
        add_to_mlflow(config, files, target.out_dir.relative_to(target.run_dir).as_posix(), {}, step)
        return
    numbers = {k: float(v) for k, v in figures.items() if isinstance(v, int | float)}  # None: not measured
    add_to_mlflow(config, files, None, numbers, step)


def judge_text(judged: dict[str, Any]) -> str:
    """Markdown for TensorBoard's text tab: the summary line and a table of scores."""
    rows = []
    for entry in judged["records"]:
        instruction = " ".join(entry["instruction"].split())[:80].replace("|", "\\|")
        rows.append(f"| {entry['index'] + 1} | {instruction} | {entry['score']} |")
    return "\n".join([f"**{judged['summary']}**", "", "| # | instruction | score |", "|---|---|---|", *rows])
