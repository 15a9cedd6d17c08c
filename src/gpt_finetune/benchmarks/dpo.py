"""DPO references: a frozen copy vs precomputed log-probabilities vs LoRA with adapters off, same run.

    python -m gpt_finetune.benchmarks.dpo [--model gpt2-medium] [--pairs 48] [--steps 4] [--batch-size 4] \
        [--threads N] [--data ../shared/data/instruction-data-with-preference.json]

Random weights (one saved base for every row, so all rows start alike), CPU, fp32, the first `--pairs`
pairs of `--data` split as train.py splits them, the real PreferenceTuning task and a Lightning Trainer.
Each row runs in its own spawned process, one after another, and reports its peak RSS, its training losses
(frozen and precomputed must agree), the first step's time (with `precomputed` it includes computing every
split's reference log-probabilities) and the response tokens/s of the later steps. Timings are never
asserted.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from gpt_finetune.benchmarks.data_file import CHECKOUT, fail
from gpt_finetune.devices import peak_rss_gib

PAIRS = CHECKOUT.parent / "shared" / "data" / "instruction-data-with-preference.json"
ROWS: dict[str, dict[str, Any]] = {
    "frozen copy": {"reference": "frozen"},
    "precomputed": {"reference": "precomputed"},
    "LoRA r=16, adapters off": {"reference": "frozen", "lora": {"r": 16, "alpha": 16}},
}


def row_worker(name: str, settings: dict[str, Any], folder: str, queue: Any) -> None:
    """In a fresh process: train the row for `steps` steps; put its figures on `queue`."""
    import lightning as L

    from gpt_finetune.console import quiet_lightning
    from gpt_finetune.data.preference_datamodule import PreferenceDataModule
    from gpt_finetune.tasks.dpo import PreferenceTuning

    quiet_lightning()
    torch.set_num_threads(settings["threads"])
    L.seed_everything(settings["seed"], verbose=False)
    model = {"size": settings["model"], "pretrained": False, "weights": f"{folder}/base"}

    class Steps(L.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.tokens: list[int] = []
            self.losses: list[float] = []

        def on_train_batch_start(self, trainer: L.Trainer, *_: Any) -> None:
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, *_: Any) -> None:
            self.times.append(time.perf_counter() - self.start)
            self.tokens.append(pl_module._batch_tokens)
            self.losses.append(float(trainer.callback_metrics["train/loss"]))

    steps = Steps()
    task = PreferenceTuning(model, optimizer={"lr": 1e-5, "weight_decay": 0.0}, **ROWS[name])
    data = PreferenceDataModule(path=f"{folder}/pairs.json", batch_size=settings["batch_size"], seed=1)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=settings["steps"],
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[steps],
    )
    trainer.fit(task, datamodule=data)
    later = slice(1, None)
    queue.put(
        {
            "losses": steps.losses,
            "first_s": steps.times[0],
            "tokens_s": sum(steps.tokens[later]) / sum(steps.times[later]),
            "peak_gib": peak_rss_gib(),
        }
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt2-medium")
    parser.add_argument("--pairs", type=int, default=48, help="pairs read from --data (85 / 10 / 5 split)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4, help="pairs per batch (twice as many rows)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--data", type=Path, default=PAIRS, help=f"preference pairs (default: {PAIRS})")
    args = parser.parse_args(argv)
    if not args.data.is_file():
        fail(f"--data {args.data}: no such file; pass a preference JSON file (instruction, chosen, rejected)")
    if args.steps < 2:
        fail(f"--steps {args.steps}: at least 2 (the first step is timed apart)")
    settings = {k: v for k, v in vars(args).items() if k != "data"}
    print(f"settings: {settings}; torch {torch.__version__}; data: {args.data}")

    from gpt_finetune.model import GPT, GPTConfig

    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as folder:
        pairs = json.loads(args.data.read_text(encoding="utf-8"))[: args.pairs]
        Path(folder, "pairs.json").write_text(json.dumps(pairs), encoding="utf-8")
        torch.manual_seed(args.seed)
        GPT(GPTConfig.from_size(args.model)).save_pretrained(Path(folder, "base"))
        results = {}
        for name in ROWS:
            queue = ctx.Queue()
            process = ctx.Process(target=row_worker, args=(name, settings, folder, queue), daemon=True)
            process.start()
            results[name] = queue.get()
            process.join()
            print(f"{name}: done", flush=True)
    frozen, precomputed = results["frozen copy"]["losses"], results["precomputed"]["losses"]
    gap = max(abs(a - b) for a, b in zip(frozen, precomputed, strict=True))
    print(f"\nlargest train-loss difference, frozen vs precomputed: {gap:.2e}\n")
    print("| reference | peak RSS GiB | first step s | response tokens/s (later steps) | train losses |")
    print("|---|---:|---:|---:|---|")
    for name, r in results.items():
        losses = ", ".join(f"{v:.4f}" for v in r["losses"])
        print(f"| {name} | {r['peak_gib']:.2f} | {r['first_s']:.1f} | {r['tokens_s']:.0f} | {losses} |")


if __name__ == "__main__":
    main()
