"""Generation speed: the book's one-prompt full-recompute loop vs. batched decoding with a KV cache, then
one stream (batch 1) beside transformers and llama.cpp (`benchmarks.single_stream`).

    python -m gpt_finetune.benchmarks.generation [--size gpt2-small] [--prompts 32] [--new-tokens 256] \
        [--single-prompts 2] [--single-tokens 128] [--only-single] [--threads N] \
        [--data ../shared/data/instruction-data.json | sample]

Random weights, end-of-text disabled so every response has exactly `--new-tokens` tokens. Prompts come from
`--data` (default: the book's data beside the checkout; a missing file is an error, never a fallback).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from gpt_finetune.benchmarks.data_file import add_data_argument, read_data
from gpt_finetune.benchmarks.single_stream import print_table, single_stream_rows
from gpt_finetune.data.prompts import format_prompt
from gpt_finetune.devices import peak_rss_gib
from gpt_finetune.model import GPT, GPTConfig
from gpt_finetune.tokenizer import gpt2_tokenizer


@torch.no_grad()
def book_generate(model: GPT, prompt: list[int], max_new_tokens: int, eos_id: int | None = None) -> list[int]:
    """The book's `generate`: one prompt, the whole (cropped) context re-encoded for every new token."""
    idx = torch.tensor([prompt])
    new: list[int] = []
    for _ in range(max_new_tokens):
        token = int(model(idx[:, -model.config.context_length :])[:, -1].argmax(-1))
        new.append(token)
        if token == eos_id:
            break
        idx = torch.cat([idx, torch.tensor([[token]])], dim=1)
    return new


def load_prompts(data: str | Path | None, n: int) -> tuple[list[list[int]], Path]:
    """The first `n` Alpaca prompts of the `--data` file, tokenised, and the file's path."""
    records, path = read_data(data)
    tok = gpt2_tokenizer()
    return [tok.encode(format_prompt(r), disallowed_special=()) for r in records[:n]], path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="gpt2-small")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--reference-prompts", type=int, default=4, help="prompts timed with the book's loop")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--single-prompts", type=int, default=2, help="prompts in the batch-1 table; 0: none")
    parser.add_argument("--single-tokens", type=int, default=128, help="new tokens per batch-1 answer")
    parser.add_argument("--only-single", action="store_true", help="only the batch-1 table")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch's default)")
    add_data_argument(parser)
    args = parser.parse_args(argv)

    prompts, path = load_prompts(args.data, args.prompts)  # before any work: a bad --data fails at once
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_size(args.size)).eval()
    lengths = [len(p) for p in prompts]
    print(f"data: {path}")
    print(
        f"{args.size}, random weights, {torch.get_num_threads()} CPU threads, {len(prompts)} prompts "
        f"({min(lengths)}-{max(lengths)} tokens) x {args.new_tokens} new tokens"
    )

    if not args.only_single:
        batched_and_book(model, prompts, args)
    if args.single_prompts:
        single = prompts[: args.single_prompts]
        rows = single_stream_rows(model, single, args.single_tokens, torch.get_num_threads())
        print_table(rows, len(single), args.single_tokens)
        print(f"peak RSS {peak_rss_gib():.2f} GiB")


def batched_and_book(model: GPT, prompts: list[list[int]], args: argparse.Namespace) -> None:
    """Batched KV-cache decoding of every prompt against the book's loop on the first few."""
    start = time.perf_counter()
    batch = args.batch_size
    ours = model.generate(prompts, max_new_tokens=args.new_tokens, eos_id=None, batch_size=batch)
    ours_s = time.perf_counter() - start

    reference = prompts[: args.reference_prompts]
    start = time.perf_counter()
    book = [book_generate(model, p, args.new_tokens) for p in reference]
    book_s = time.perf_counter() - start

    same = sum(a == b for a, b in zip(book, ours, strict=False))
    book_per, ours_per = book_s / len(reference), ours_s / len(prompts)
    print()
    print("| method | prompts timed | total s | s / response | new tokens/s |")
    print("|---|---:|---:|---:|---:|")
    print(
        f"| book: one prompt at a time, full recompute | {len(reference)} | {book_s:.1f} "
        f"| {book_per:.2f} "
        f"| {len(reference) * args.new_tokens / book_s:.0f} |"
    )
    print(
        f"| ours: batch {args.batch_size}, KV cache | {len(prompts)} | {ours_s:.1f} | {ours_per:.3f} "
        f"| {len(prompts) * args.new_tokens / ours_s:.0f} |"
    )
    print()
    print(
        f"speed-up per response: {book_per / ours_per:.1f}x; greedy outputs identical on "
        f"{same}/{len(reference)} timed prompts; peak RSS {peak_rss_gib():.2f} GiB"
    )


if __name__ == "__main__":
    main()
