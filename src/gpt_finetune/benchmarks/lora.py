"""LoRA vs full fine-tuning: peak memory, training tokens/s and checkpoint size, in the same run.

    python -m gpt_finetune.benchmarks.lora [--models gpt2-medium gpt2-large] [--steps 3] [--warmup 1] \
        [--batch-size 4] [--rank 16] [--threads N] [--data ../shared/data/instruction-data.json | sample]

Random weights (the cost does not depend on them), CPU, length-grouped batches of the train split of
`--data`. For each model and precision (fp32, bf16 autocast) a full fine-tuning row and a LoRA row
(rank `--rank`, alpha = rank, all block Linear layers, base frozen) run in their own spawned processes,
alive at once and timed in turns, so that load from other programs falls on both alike. Peak memory is each
process's peak RSS; the checkpoint is what `train.py` keeps: the trained tensors and their AdamW state.
Timings are never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import torch

from gpt_finetune.benchmarks.data_file import add_data_argument
from gpt_finetune.benchmarks.rows import load_reported, machine_line, run_in_turns
from gpt_finetune.benchmarks.training import grouped_batches, load_train_sequences
from gpt_finetune.data.collate import IGNORE_INDEX
from gpt_finetune.devices import peak_rss_gib


@dataclass(frozen=True)
class Row:
    """One benchmark configuration: a model size, a precision, full fine-tuning or LoRA."""

    size: str
    bf16: bool
    lora: bool

    @property
    def name(self) -> str:
        precision = "bf16 autocast" if self.bf16 else "fp32"
        return f"{self.size}, {precision}, {'LoRA' if self.lora else 'full'}"


def checkpoint_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the tensors a train.py checkpoint holds: the trained parameters and their AdamW state."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    state = sum(
        t.numel() * t.element_size()
        for per_param in optimizer.state.values()
        for t in per_param.values()
        if isinstance(t, torch.Tensor)
    )
    return weights + state


def row_worker(row: Row, settings: dict[str, Any], seqs: list[list[int]], conn: Connection) -> None:
    """In a fresh process: build the row, warm up, then one timed step per request from `conn`.

    Sends (trainable, total) parameters, then (seconds, target tokens) per step, then the checkpoint size
    in bytes and the peak RSS in GiB.
    """
    from gpt_finetune.model import GPT, GPTConfig
    from gpt_finetune.tasks.adapters import LoRASettings, add_lora, trainable_counts
    from gpt_finetune.tasks.loss import masked_lm_loss

    torch.set_num_threads(settings["threads"])
    torch.manual_seed(settings["seed"])
    n = settings["warmup"] + settings["steps"]
    batches = grouped_batches(seqs, settings["batch_size"], settings["seed"], n, mega=50)
    batches = [batches[i % len(batches)] for i in range(n)]
    model = GPT(GPTConfig.from_size(row.size, tie_embeddings=False)).train()  # as train.py
    if row.lora:
        rank = settings["rank"]
        add_lora(model, LoRASettings(r=rank, alpha=float(rank)))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0, fused=True)
    conn.send(trainable_counts(model))

    def step(batch: dict[str, torch.Tensor]) -> None:
        amp = torch.autocast("cpu", dtype=torch.bfloat16) if row.bf16 else contextlib.nullcontext()
        with amp:
            loss = masked_lm_loss(model, batch["input_ids"], batch["targets"], head_on_targets_only=True)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for batch in batches[: settings["warmup"]]:
        step(batch)
    for batch in batches[settings["warmup"] :]:
        conn.recv()
        start = time.perf_counter()
        step(batch)
        conn.send((time.perf_counter() - start, int((batch["targets"] != IGNORE_INDEX).sum())))
    conn.send((checkpoint_bytes(model, optimizer), peak_rss_gib()))


def run_pair(rows: tuple[Row, Row], settings: dict[str, Any], seqs: list[list[int]]) -> list[dict[str, Any]]:
    """Two rows in their own processes, alive at once, their timed steps taken in turns."""
    results = []
    for run in run_in_turns(row_worker, rows, (settings, seqs), settings["steps"]):
        seconds, tokens = (list(col) for col in zip(*run.steps, strict=True))
        checkpoint_bytes, peak_gib = run.last
        results.append({
            "params": run.first, "steps": run.steps, "checkpoint_bytes": checkpoint_bytes,
            "peak_gib": peak_gib, "tokens_s": sum(tokens) / sum(seconds),
        })  # fmt: skip
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["gpt2-medium", "gpt2-large"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps per row")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before timing")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seed", type=int, default=123)
    add_data_argument(parser)
    args = parser.parse_args(argv)

    seqs, source = load_train_sequences(args.data)  # before any work: a bad --data fails at once
    settings = {k: v for k, v in vars(args).items() if k not in ("data", "models", "precisions")}
    print(f"settings: {settings}; models {args.models}; precisions {args.precisions}")
    print(machine_line(args.threads))
    print(f"data: {source} ({len(seqs)} train records)")
    table = []
    with load_reported():
        for size in args.models:
            for precision in args.precisions:
                pair = (Row(size, precision == "bf16", False), Row(size, precision == "bf16", True))
                results = run_pair(pair, settings, seqs)
                table += list(zip(pair, results, strict=True))
                full, lora = results
                print(
                    f"{size} {precision}: LoRA peak {lora['peak_gib'] / full['peak_gib']:.0%} of full, "
                    f"tokens/s {lora['tokens_s'] / full['tokens_s']:.2f}x, "
                    f"checkpoint 1/{full['checkpoint_bytes'] / lora['checkpoint_bytes']:.0f}",
                    flush=True,
                )
    print("| row | trainable / total params | target tokens/s | peak RSS GiB | checkpoint MB |")
    print("|---|---:|---:|---:|---:|")
    for row, r in table:
        trainable, total = r["params"]
        print(
            f"| {row.name} | {trainable / 1e6:.1f} M / {total / 1e6:.0f} M | {r['tokens_s']:.0f} | "
            f"{r['peak_gib']:.2f} | {r['checkpoint_bytes'] / 1e6:.1f} |"
        )


if __name__ == "__main__":
    main()
