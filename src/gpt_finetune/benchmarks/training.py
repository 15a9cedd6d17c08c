"""Training speed: a plain Hugging Face GPT-2 loop with the book's batching vs. our GPT, loss and batching.

    python -m gpt_finetune.benchmarks.training [--steps 15] [--warmup 2] [--batch-size 8] [--threads N]

gpt2-small, random weights, CPU, on the book's instruction train split (first 85 %). Every row runs in a
fresh spawned process, so its peak RSS is its own, and times `--steps` optimizer steps after `--warmup`
untimed ones. Rows with book batching see the same batches in the same order; the length-grouped rows see
the same records regrouped, so compare them by tokens/s as well as examples/s. Timings are printed, never
asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import resource
import time
from dataclasses import dataclass
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from gpt_finetune.data.collate import IGNORE_INDEX, collate_instructions
from gpt_finetune.data.prompts import format_example
from gpt_finetune.tokenizer import gpt2_tokenizer

BOOK_DATA = Path("../shared/data/instruction-data.json")
TRAIN_FRACTION = 0.85


@dataclass(frozen=True)
class Row:
    """One benchmark configuration."""

    name: str
    ours: bool
    grouped: bool = False
    bf16: bool = False


ROWS = (
    Row("reference: HF GPT2LMHeadModel, book batching, fp32", ours=False),
    Row("ours: book batching, fp32", ours=True),
    Row("ours: length-grouped, fp32", ours=True, grouped=True),
    Row("ours: length-grouped, bf16 autocast", ours=True, grouped=True, bf16=True),
)


def load_train_sequences(path: Path | None) -> tuple[list[list[int]], str]:
    """Token ids of prompt + response for the book's train split (or the bundled sample), and its source."""
    if path is not None and path.is_file():
        records, source = json.loads(path.read_text(encoding="utf-8")), str(path)
    else:
        sample = resources.files("gpt_finetune.data") / "sample_instructions.json"
        records, source = json.loads(sample.read_text(encoding="utf-8")), "bundled sample_instructions.json"
    train = records[: int(len(records) * TRAIN_FRACTION)]
    tok = gpt2_tokenizer()
    return [tok.encode(format_example(r, "alpaca"), disallowed_special=()) for r in train], source


def book_batches(seqs: list[list[int]], batch_size: int, seed: int, n: int) -> list[dict[str, torch.Tensor]]:
    """The first `n` batches of the book's loader: seeded shuffle, drop_last, padding-only masking."""
    loader = DataLoader(
        seqs,  # type: ignore[arg-type]
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


def make_model(row: Row, dropout: float) -> tuple[torch.nn.Module, torch.optim.Optimizer, str]:
    """Model in train mode, its AdamW(lr=5e-5, weight_decay=0.1), and a description of both.

    `dropout` applies to the reference only; ours uses the book's fine-tuning drop rate, 0.
    """
    if not row.ours:
        from transformers import GPT2Config, GPT2LMHeadModel

        p = dropout
        hf = GPT2LMHeadModel(GPT2Config(resid_pdrop=p, embd_pdrop=p, attn_pdrop=p))
        opt = torch.optim.AdamW(hf.parameters(), lr=5e-5, weight_decay=0.1)
        attn = hf.config._attn_implementation
        return hf.train(), opt, f"attn={attn}, tied head, dropout {p:g}, AdamW default (for-loop)"
    from gpt_finetune.model import GPT, GPTConfig

    model = GPT(GPTConfig.from_size("gpt2-small", tie_embeddings=False))
    try:
        opt = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.1, fused=True)
        kind = "fused"
    except (RuntimeError, ValueError):
        opt = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.1, foreach=True)
        kind = "foreach"
    return model.train(), opt, f"SDPA, untied head, dropout 0, head on targets only, AdamW {kind}"


def run_row(row: Row, settings: dict[str, Any], seqs: list[list[int]]) -> dict[str, Any]:
    """Time one row in this (fresh) process; returns its measurements."""
    torch.set_num_threads(settings["threads"])
    torch.manual_seed(settings["seed"])
    n = settings["warmup"] + settings["steps"]
    bs, seed = settings["batch_size"], settings["seed"]
    if row.grouped:
        batches = grouped_batches(seqs, bs, seed, n, settings["mega_batches"])
    else:
        batches = book_batches(seqs, bs, seed, n)
    model, opt, detail = make_model(row, settings["reference_dropout"])
    from gpt_finetune.tasks.loss import masked_lm_loss

    def step(batch: dict[str, torch.Tensor]) -> float:
        ids, targets = batch["input_ids"], batch["targets"]
        amp = torch.autocast("cpu", dtype=torch.bfloat16) if row.bf16 else contextlib.nullcontext()
        with amp:
            if row.ours:
                loss = masked_lm_loss(model, ids, targets, head_on_targets_only=True)  # type: ignore[arg-type]
            else:
                logits = model(ids).logits
                loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return float(loss.detach())

    for batch in batches[: settings["warmup"]]:
        step(batch)
    timed = batches[settings["warmup"] :]
    start = time.perf_counter()
    losses = [step(batch) for batch in timed]
    seconds = time.perf_counter() - start
    tokens = sum(int((b["targets"] != IGNORE_INDEX).sum()) for b in timed)
    padded = sum(b["targets"].numel() for b in timed)
    return {
        "detail": detail,
        "seconds": seconds,
        "examples_s": len(timed) * bs / seconds,
        "tokens_s": tokens / seconds,
        "padding": 1 - tokens / padded,
        "loss": losses[-1],
        "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def native_bf16() -> str:
    """Which bf16 instructions this CPU has, from torch and /proc/cpuinfo."""
    flags: set[str] = set()
    with contextlib.suppress(OSError):
        flags = set(Path("/proc/cpuinfo").read_text().split())
    avx = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: "avx512_bf16" in flags)()
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: "amx_bf16" in flags)()
    return f"avx512_bf16 {'yes' if avx else 'no'}, amx_bf16 {'yes' if amx else 'no'}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=15, help="timed optimizer steps per row")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--mega-batches", type=int, default=50, help="batches per length-sorted chunk")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument(
        "--reference-dropout",
        type=float,
        default=0.0,
        help="HF dropout; 0 matches ours and the book's fine-tuning (GPT2Config() has 0.1)",
    )
    parser.add_argument("--data", type=Path, default=BOOK_DATA)
    args = parser.parse_args(argv)

    seqs, source = load_train_sequences(args.data)
    lengths = [len(s) for s in seqs]
    settings = {k: v for k, v in vars(args).items() if k != "data"}
    print(f"settings: {settings}")
    print(f"torch {torch.__version__}, {args.threads} CPU threads, native bf16: {native_bf16()}")
    print(
        f"gpt2-small, random weights; {len(seqs)} train records from {source} "
        f"({min(lengths)}-{max(lengths)} tokens, mean {sum(lengths) / len(lengths):.0f})"
    )

    ctx = mp.get_context("spawn")
    results: list[dict[str, Any]] = []
    for row in ROWS:
        with ctx.Pool(1) as pool:
            results.append(pool.apply(run_row, (row, settings, seqs)))
        print(f"  done: {row.name} ({results[-1]['seconds']:.1f} s)", flush=True)

    print()
    print("| row | settings | examples/s | target tokens/s | padding | last loss | peak RSS GiB |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for row, r in zip(ROWS, results, strict=True):
        print(
            f"| {row.name} | {r['detail']} | {r['examples_s']:.2f} | {r['tokens_s']:.0f} "
            f"| {r['padding']:.0%} | {r['loss']:.2f} | {r['peak_gib']:.2f} |"
        )
    print()
    ref = results[0]["examples_s"]
    fp32, bf16 = results[2]["examples_s"], results[3]["examples_s"]
    best = 3 if bf16 > fp32 else 2
    print(
        f"bf16 autocast is {'faster' if bf16 > fp32 else 'not faster'} on this CPU ({bf16 / fp32:.2f}x "
        f"the fp32 grouped row); best settings: {ROWS[best].name}"
    )
    ups = "; ".join(
        f"{row.name} {r['examples_s'] / ref:.2f}x" for row, r in zip(ROWS[1:], results[1:], strict=True)
    )
    print(f"speed-up over the reference (examples/s): {ups}; best {results[best]['examples_s'] / ref:.2f}x")


if __name__ == "__main__":
    main()
