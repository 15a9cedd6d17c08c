"""Training throughput over model size x precision x devices x torch.compile, as a Markdown table.

    python -m gpt_finetune.benchmarks.matrix --sizes gpt2-small,gpt2-medium \
        --precisions 32-true,bf16-mixed --devices 1,2 --compile false,true \
        [--steps 30] [--batch-size 8] [--accelerator gpu] \
        [--data ../shared/data/instruction-data.json | sample] [-- key=value ...]

Run from the project checkout. Each cell is a real `python train.py` run (random init, no validation, test
or generation; Lightning's ThroughputMonitor and DDP through the trainer presets) in its own process, so its
peak memory is its own; the figures are the monitor's last 10-step window, after warm-up and compilation.
Beside each size and precision, a reference: a plain PyTorch loop over `transformers.GPT2LMHeadModel` on one
device (AdamW, the book's batching, autocast for bf16-mixed), timed over its last 10 steps the same way.
Cells the machine cannot run keep their one-line reason. Timings are printed, never asserted. Every cell and
the reference train on `--data` (default: the book's data beside the checkout; `sample`: the bundled sample);
a missing file is an error before any cell runs, never a silent fallback.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from gpt_finetune.artifacts import write_text
from gpt_finetune.benchmarks.data_file import SAMPLE, add_data_argument, read_data
from gpt_finetune.benchmarks.training import book_batches, load_train_sequences
from gpt_finetune.data.collate import IGNORE_INDEX
from gpt_finetune.devices import peak_memory_gib
from gpt_finetune.model import GPTConfig

NOTES = (
    "tokens/s counts every input position (padding included), target tokens/s the non-padding targets; "
    "both total over all devices. MFU needs a device in Lightning's FLOPs table. Peak GiB: accelerator "
    "memory on a GPU, process RSS on a CPU (rank 0). vs reference: target tokens/s over the reference's."
)
REFERENCE_PRECISIONS = ("32-true", "bf16-mixed")
WINDOW = 10  # timed steps: the ThroughputMonitor's window_size in conf/callbacks/default.yaml


@dataclass(frozen=True)
class Cell:
    """One configuration of the matrix."""

    size: str
    precision: str
    devices: int
    compile: bool

    @property
    def name(self) -> str:
        return f"{self.size}_{self.precision}_{self.devices}dev{'_compiled' if self.compile else ''}"


def train_overrides(cell: Cell, args: argparse.Namespace, run_dir: Path) -> list[str]:
    """`train.py` overrides for a throughput-only run of `cell`."""
    gpu = args.accelerator == "gpu"
    preset = ("ddp" if gpu else "ddp_cpu") if cell.devices > 1 else ("gpu" if gpu else "cpu")
    data = ["data=sample"] if args.data_name == SAMPLE else [f"data.path={args.data}"]
    return [
        f"model={cell.size}",
        "model.pretrained=false",
        f"task.compile={str(cell.compile).lower()}",
        f"trainer={preset}",
        f"trainer.devices={cell.devices}",
        f"trainer.precision={cell.precision}",
        f"trainer.max_steps={args.steps}",
        "trainer.max_epochs=-1",
        "trainer.limit_val_batches=0",
        "trainer.limit_test_batches=0",
        "callbacks=benchmark",
        "trainer.enable_checkpointing=false",  # else Lightning adds a ModelCheckpoint that saves at the end
        "generate.enabled=false",
        *data,
        f"data.batch_size={args.batch_size}",
        f"hydra.run.dir={run_dir}",
        *args.overrides,
    ]


def run_cell(cell: Cell, args: argparse.Namespace, train_py: Path) -> dict[str, Any]:
    """Train `cell` in a `train.py` process; its throughput figures, or the reason it could not run."""
    run_dir = args.out / cell.name
    command = [sys.executable, str(train_py), *train_overrides(cell, args, run_dir)]
    done = subprocess.run(command, cwd=train_py.parent, capture_output=True, text=True)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip() and not line[0].isspace()]
        lines = [line for line in lines if not line.startswith("Set the environment variable HYDRA_FULL")]
        reason = next((line for line in lines if line.startswith("error:")), lines[-1] if lines else "")
        write_text(run_dir / "stderr.txt", done.stderr)
        return {"error": reason.removeprefix("error: ")[:160] or f"exit {done.returncode}"}
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    world = cell.devices

    def total(key: str) -> float:  # the monitor reports all-device totals only when world_size > 1
        return metrics.get(f"train/{key}", metrics[f"train/device/{key}"] * world)

    return {
        "samples_s": total("samples_per_sec"),
        "tokens_s": total("items_per_sec"),
        "target_tokens_s": metrics["train/target_tokens_per_s"],
        "mfu": metrics.get("train/device/mfu"),
        "peak_gib": metrics["peak_memory_gib"],
    }


def reference_worker(size: str, precision: str, args: dict[str, Any], conn: Any) -> None:
    """In a fresh process: the plain transformers loop for `size`; sends its figures (or an error)."""
    try:
        conn.send(reference_loop(size, precision, **args))
    except Exception as error:  # reported in the table, not raised: the other rows stand
        conn.send({"error": f"{type(error).__name__}: {error}"[:160]})


def reference_loop(
    size: str, precision: str, accelerator: str, steps: int, batch_size: int, data: Path, seed: int
) -> dict[str, Any]:
    """The book-style loop: whole-vocabulary logits, cross-entropy, AdamW; figures of its last steps."""
    from lightning.fabric.utilities.throughput import get_available_flops
    from transformers import GPT2Config, GPT2LMHeadModel

    device = torch.device("cuda" if accelerator == "gpu" else "cpu")
    config = GPTConfig.from_size(size)
    hf = GPT2Config(n_embd=config.emb_dim, n_layer=config.n_layers, n_head=config.n_heads)
    hf.resid_pdrop = hf.embd_pdrop = hf.attn_pdrop = 0.0
    torch.manual_seed(seed)
    # transformers decorates PreTrainedModel.to, and mypy reads the decorated method as unbound.
    model = GPT2LMHeadModel(hf).to(device).train()  # type: ignore[arg-type]
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.1)
    sequences, _ = load_train_sequences(data)
    batches = book_batches(sequences, batch_size, seed, steps)
    batches = [batches[i % len(batches)] for i in range(steps)]
    bf16 = precision == "bf16-mixed"
    ends: list[float] = []
    for batch in batches:
        ids, targets = batch["input_ids"].to(device), batch["targets"].to(device)
        amp = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with amp:
            logits = model(ids).logits
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        ends.append(time.perf_counter())
    timed = batches[-WINDOW:]
    seconds = ends[-1] - ends[-WINDOW - 1]
    rows = sum(b["input_ids"].shape[0] for b in timed)
    flops = sum(config.training_flops(*b["input_ids"].shape) for b in timed)
    peak = get_available_flops(device, torch.bfloat16 if bf16 else torch.float32)
    return {
        "samples_s": rows / seconds,
        "tokens_s": sum(b["input_ids"].numel() for b in timed) / seconds,
        "target_tokens_s": sum(int((b["targets"] != IGNORE_INDEX).sum()) for b in timed) / seconds,
        "mfu": flops / seconds / peak if peak else None,
        "peak_gib": peak_memory_gib(device),
    }


def run_reference(size: str, precision: str, args: argparse.Namespace) -> dict[str, Any]:
    """The reference loop's figures from a fresh process, or why it does not run `precision`."""
    if precision not in REFERENCE_PRECISIONS:
        return {"error": f"the reference loop runs {' and '.join(REFERENCE_PRECISIONS)}"}
    settings = {
        "accelerator": args.accelerator,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "data": args.data,
        "seed": args.seed,
    }
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=reference_worker, args=(size, precision, settings, child), daemon=True)
    process.start()
    result = parent.recv() if parent.poll(timeout=3600) else {"error": "no answer in an hour"}
    process.join()
    return result


def table_row(label: list[str], result: dict[str, Any], reference: dict[str, Any] | None) -> str:
    if "error" in result:
        return "| " + " | ".join(label) + f" | {result['error']} | | | | | |"
    mfu = f"{result['mfu']:.1%}" if result.get("mfu") is not None else "n/a"
    speedup = ""
    if reference is not None and "error" not in reference:
        speedup = f"{result['target_tokens_s'] / reference['target_tokens_s']:.2f}x"
    cells = [
        f"{result['samples_s']:.2f}",
        f"{result['tokens_s']:,.0f}",
        f"{result['target_tokens_s']:,.0f}",
        mfu,
        f"{result['peak_gib']:.2f}",
        speedup,
    ]
    return "| " + " | ".join(label + cells) + " |"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="gpt2-small", help="comma-separated model sizes")
    parser.add_argument("--precisions", default="32-true,bf16-mixed")
    parser.add_argument("--devices", default="1", help="comma-separated device counts (>1: DDP)")
    parser.add_argument("--compile", default="false", help="false, true or false,true")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per cell (>= 12)")
    parser.add_argument("--batch-size", type=int, default=8, help="per device")
    parser.add_argument("--accelerator", choices=("cpu", "gpu"), default=None, help="default: gpu if any")
    add_data_argument(parser)
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--no-reference", action="store_true", help="skip the transformers loop")
    parser.add_argument("--out", type=Path, default=None, help="default: outputs/benchmarks/matrix-<time>")
    parser.add_argument("overrides", nargs="*", help="extra train.py overrides for every cell, after --")
    args = parser.parse_args(argv)
    if args.steps < WINDOW + 2:
        parser.error(f"--steps must be >= {WINDOW + 2} (a {WINDOW}-step window after warm-up)")
    args.data_name, (_, args.data) = args.data, read_data(args.data)  # checked before any cell runs
    args.accelerator = args.accelerator or ("gpu" if torch.cuda.is_available() else "cpu")
    args.out = (args.out or Path("outputs/benchmarks") / time.strftime("matrix-%Y%m%d-%H%M%S")).resolve()
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    train_py = Path(__file__).resolve().parents[3] / "train.py"
    if not train_py.is_file():
        sys.exit(f"error: {train_py} not found; run from an editable install of the project checkout")
    axes = (args.sizes, args.precisions, args.devices, args.compile)
    cells = [
        Cell(size, precision, int(devices), compile == "true")
        for size, precision, devices, compile in itertools.product(*(axis.split(",") for axis in axes))
    ]
    setting = (
        f"data: {args.data}; batch {args.batch_size} per device, {args.steps} steps, "
        f"figures over the last {WINDOW}"
    )
    print(f"torch {torch.__version__}, {args.accelerator}, {os.cpu_count()} CPUs; {setting}")
    lines = [
        "| model | precision | devices | compile | samples/s | tokens/s | target tokens/s | MFU | peak GiB "
        "| vs reference |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    references: dict[tuple[str, str], dict[str, Any]] = {}
    for cell in cells:
        key = (cell.size, cell.precision)
        if not args.no_reference and key not in references:
            print(f"reference {cell.size} {cell.precision} ...", flush=True)
            references[key] = run_reference(cell.size, cell.precision, args)
            label = [cell.size, cell.precision, "1", "reference: transformers loop"]
            lines.append(table_row(label, references[key], None))
            print(lines[-1], flush=True)
        print(f"{cell.name} ...", flush=True)
        result = run_cell(cell, args, train_py)
        label = [cell.size, cell.precision, str(cell.devices), "on" if cell.compile else "off"]
        lines.append(table_row(label, result, references.get(key)))
        print(lines[-1], flush=True)
    table = "\n".join(lines) + "\n"
    write_text(args.out / "matrix.md", f"{table}\n{setting}\n")  # the figures with the data they came from
    print(f"\n{table}\n{setting}\n{NOTES}\nwrote {args.out / 'matrix.md'}")


if __name__ == "__main__":
    main()
