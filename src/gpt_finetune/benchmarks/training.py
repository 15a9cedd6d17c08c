"""Training speed: a plain Hugging Face GPT-2 loop with the book's batching vs. our GPT, loss and batching.

    python -m gpt_finetune.benchmarks.training [--steps 15] [--warmup 2] [--batch-size 8] [--threads N] \
        [--data ../shared/data/instruction-data.json | sample]

gpt2-small, random weights, CPU, on the train split (first 85 %) of `--data` (default: the book's instruction
data beside the checkout; a missing file is an error, never a fallback). Every row lives in its
own spawned process (so its peak RSS is its own; all four are alive at once, ~3.5 GiB each), does `--warmup`
untimed steps, then the rows take turns, one timed step each, so that load from other programs falls on
all rows alike. Rows with book batching see the same batches in the same order; the length-grouped rows see
the same records regrouped, so compare them by tokens/s as well as examples/s. Timings are never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from dataclasses import dataclass
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from gpt_finetune.benchmarks.data_file import add_data_argument, read_data
from gpt_finetune.benchmarks.rows import load_reported, machine_line, run_in_turns
from gpt_finetune.data.collate import IGNORE_INDEX, collate_instructions
from gpt_finetune.data.packing import collate_packed, pack_records, record_width
from gpt_finetune.data.prompts import format_example
from gpt_finetune.devices import peak_rss_gib
from gpt_finetune.tokenizer import gpt2_tokenizer

TRAIN_FRACTION = 0.85


@dataclass(frozen=True)
class Row:
    """One benchmark configuration; `pack_length`: packed rows of that many tokens, `batch_size` of them."""

    name: str
    ours: bool
    grouped: bool = False
    bf16: bool = False
    pack_length: int | None = None
    batch_size: int | None = None  # None: --batch-size


ROWS = (
    Row("reference: HF GPT2LMHeadModel, book batching, fp32", ours=False),
    Row("ours: book batching, fp32", ours=True),
    Row("ours: length-grouped, fp32", ours=True, grouped=True),
    Row("ours: length-grouped, bf16 autocast", ours=True, grouped=True, bf16=True),
)


def load_train_sequences(data: str | Path | None) -> tuple[list[list[int]], Path]:
    """Token ids of prompt + response for the train split of the `--data` file, and the file's path."""
    records, path = read_data(data)
    train = records[: int(len(records) * TRAIN_FRACTION)]
    tok = gpt2_tokenizer()
    return [tok.encode(format_example(r, "alpaca"), disallowed_special=()) for r in train], path


def book_batches(seqs: list[list[int]], batch_size: int, seed: int, n: int) -> list[dict[str, torch.Tensor]]:
    """The first `n` batches of the book's loader: seeded shuffle, drop_last, padding-only masking."""
    loader: DataLoader[list[int]] = DataLoader(
        seqs,  # type: ignore[arg-type]  # a list is a map-style dataset; torch types the argument as Dataset
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        collate_fn=partial(collate_instructions, max_length=1024),
        generator=torch.Generator().manual_seed(seed),
    )
    return [batch for batch, _ in zip(loader, range(n), strict=False)]


def grouped_batches(
    seqs: list[list[int]], batch_size: int, seed: int, n: int, mega: int
) -> list[dict[str, torch.Tensor]]:
    """The same shuffle and dropped tail as `book_batches`, sorted by length within `mega`-batch chunks,
    cut into batches, then the batch order shuffled; the first `n` batches."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(seqs), generator=gen).tolist()  # what the book's RandomSampler draws
    order = order[: len(order) // batch_size * batch_size]
    chunk = mega * batch_size
    groups: list[list[int]] = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=lambda i: len(seqs[i]))
        groups += [part[k : k + batch_size] for k in range(0, len(part), batch_size)]
    picked = [groups[i] for i in torch.randperm(len(groups), generator=gen).tolist()[:n]]
    return [collate_instructions([seqs[i] for i in g], max_length=1024) for g in picked]


def packed_batches(
    seqs: list[list[int]], pack_length: int, batch_size: int, seed: int, n: int
) -> list[dict[str, torch.Tensor]]:
    """`data.packing=true`'s batches: the records packed once into rows of up to `pack_length` tokens,
    the rows in a seeded shuffled order, `batch_size` rows a batch; the first `n` batches."""
    rows = pack_records([record_width(len(s), 1024) for s in seqs], pack_length, seed)
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()
    batches = [order[i : i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]
    return [
        collate_packed([[(seqs[i], 0) for i in rows[r]] for r in b], max_length=1024) for b in batches[:n]
    ]


def row_batches(row: Row, seqs: list[list[int]], settings: dict[str, Any]) -> list[dict[str, torch.Tensor]]:
    """The row's `warmup + steps` batches (a small data set is repeated)."""
    n, seed = settings["warmup"] + settings["steps"], settings["seed"]
    bs = row.batch_size or settings["batch_size"]
    if row.pack_length is not None:
        batches = packed_batches(seqs, row.pack_length, bs, seed, n)
    elif row.grouped:
        batches = grouped_batches(seqs, bs, seed, n, settings["mega_batches"])
    else:
        batches = book_batches(seqs, bs, seed, n)
    return [batches[i % len(batches)] for i in range(n)]


def batch_records(batch: dict[str, torch.Tensor]) -> int:
    """Records in a batch: its rows, or in a packed batch the documents of its rows."""
    if "document_ids" not in batch:
        return batch["input_ids"].shape[0]
    return int((batch["document_ids"].max(dim=1).values + 1).sum())


def make_model(row: Row, dropout: float) -> tuple[torch.nn.Module, torch.optim.Optimizer, str]:
    """Model in train mode, its AdamW(lr=5e-5, weight_decay=0.1), and a description of both.

    `dropout` applies to the reference only; ours uses the book's fine-tuning drop rate, 0.
    """
    if not row.ours:
        from transformers import GPT2Config, GPT2LMHeadModel

        hf = GPT2LMHeadModel(GPT2Config(resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout))
        opt = torch.optim.AdamW(hf.parameters(), lr=5e-5, weight_decay=0.1)
        attn = hf.config._attn_implementation
        return hf.train(), opt, f"attn={attn}, tied head, dropout {dropout:g}, AdamW default (for-loop)"
    from gpt_finetune.model import GPT, GPTConfig

    model = GPT(GPTConfig.from_size("gpt2-small", tie_embeddings=False))
    try:
        opt = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.1, fused=True)
        kind = "fused"
    except (RuntimeError, ValueError):
        opt = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.1, foreach=True)
        kind = "foreach"
    return model.train(), opt, f"SDPA, untied head, dropout 0, head on targets only, AdamW {kind}"


def row_worker(row: Row, settings: dict[str, Any], seqs: list[list[int]], conn: Connection) -> None:
    """In a fresh process: build the row, run the warm-up, then one timed step per request from `conn`.

    Sends the row's description, then (seconds, loss, target tokens, padded tokens, records) per step,
    then the process's peak RSS in GiB.
    """
    torch.set_num_threads(settings["threads"])
    torch.manual_seed(settings["seed"])
    batches = row_batches(row, seqs, settings)
    model, opt, detail = make_model(row, settings["reference_dropout"])
    from gpt_finetune.model import GPT
    from gpt_finetune.tasks.loss import masked_lm_loss

    def step(batch: dict[str, torch.Tensor]) -> float:
        ids, targets = batch["input_ids"], batch["targets"]
        packing = {k: batch[k] for k in ("position_ids", "document_ids") if k in batch}
        amp = torch.autocast("cpu", dtype=torch.bfloat16) if row.bf16 else contextlib.nullcontext()
        with amp:
            if isinstance(model, GPT):  # row.ours
                loss = masked_lm_loss(model, ids, targets, head_on_targets_only=True, **packing)
            else:
                logits = model(ids).logits
                loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return float(loss.detach())

    for batch in batches[: settings["warmup"]]:
        step(batch)
    conn.send(detail)
    for batch in batches[settings["warmup"] :]:
        conn.recv()
        start = time.perf_counter()
        loss = step(batch)
        seconds = time.perf_counter() - start
        targets = int((batch["targets"] != IGNORE_INDEX).sum())
        conn.send((seconds, loss, targets, batch["targets"].numel(), batch_records(batch)))
    conn.send(peak_rss_gib())


def run_rows(
    settings: dict[str, Any], seqs: list[list[int]], rows: tuple[Row, ...] = ROWS
) -> list[dict[str, Any]]:
    """Every row in its own process, their timed steps taken in turns (`rows.run_in_turns`)."""
    results = []
    for run in run_in_turns(row_worker, rows, (settings, seqs), settings["steps"], show=True):
        seconds, losses, tokens, padded, records = (list(col) for col in zip(*run.steps, strict=True))
        results.append({
            "detail": run.first,
            "peak_gib": run.last,
            "examples_s": sum(records) / sum(seconds),
            "positions": sum(padded) / len(padded),
            "tokens_s": sum(tokens) / sum(seconds),
            "padding": 1 - sum(tokens) / sum(padded),
            "loss": losses[-1],
        })  # fmt: skip
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=15, help="timed optimizer steps per row")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--mega-batches", type=int, default=50, help="batches per length-sorted chunk")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--reference-dropout", type=float, default=0.0, help="GPT2Config() has 0.1; ours 0")
    add_data_argument(parser)
    args = parser.parse_args(argv)

    seqs, source = load_train_sequences(args.data)  # before any work: a bad --data fails at once
    n_tok = [len(s) for s in seqs]
    settings = {k: v for k, v in vars(args).items() if k != "data"}
    print(f"settings: {settings}")
    print(machine_line(args.threads))
    print(f"data: {source}")
    print(f"gpt2-small, random init; {len(seqs)} train records ({min(n_tok)}-{max(n_tok)} tokens)")
    with load_reported():
        results = run_rows(settings, seqs)
    print("| row | settings | examples/s | target tokens/s | padding | last loss | peak RSS GiB |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for row, r in zip(ROWS, results, strict=True):
        cells = f"{r['examples_s']:.2f} | {r['tokens_s']:.0f} | {r['padding']:.0%} | {r['loss']:.2f}"
        print(f"| {row.name} | {r['detail']} | {cells} | {r['peak_gib']:.2f} |")
    speed = [r["examples_s"] for r in results]
    best = 3 if speed[3] > speed[2] else 2
    verdict = "faster" if best == 3 else "not faster"
    print(
        f"\nbf16 autocast is {verdict} on this CPU ({speed[3] / speed[2]:.2f}x fp32); best: {ROWS[best].name}"
    )
    ups = "; ".join(f"{row.name} {s / speed[0]:.2f}x" for row, s in zip(ROWS[1:], speed[1:], strict=True))
    print(f"speed-up over the reference (examples/s): {ups}; best: {speed[best] / speed[0]:.2f}x")


if __name__ == "__main__":
    main()
