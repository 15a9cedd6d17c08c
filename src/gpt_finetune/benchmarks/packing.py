"""Training speed with packing: book batching vs. length grouping vs. packed rows, same run, same records.

    python -m gpt_finetune.benchmarks.packing [--steps 10] [--warmup 2] [--batch-size 8] \
        [--pack-lengths 512,1024] [--pack-batch-size 1] [--threads N] \
        [--data ../shared/data/instruction-data.json | sample]

gpt2-small, random weights, fp32, CPU, our GPT and loss, on the train split (first 85 %) of `--data`
(default: the book's instruction data beside the checkout). The machinery is `benchmarks.training`'s: each
row in its own spawned process (its peak RSS its own), `--warmup` untimed steps, then one timed step per
row in turn. Packed rows hold records side by side, each attending only to itself (`data.packing=true`);
a batch is `--pack-batch-size` rows. Compare the rows by target tokens/s: a packed step holds another number
of records than a batch of `--batch-size`. Timings are never asserted.
"""

from __future__ import annotations

import argparse

import torch

from gpt_finetune.benchmarks.data_file import add_data_argument
from gpt_finetune.benchmarks.rows import load_reported, machine_line
from gpt_finetune.benchmarks.training import Row, load_train_sequences, run_rows


def packing_rows(batch_size: int, pack_lengths: list[int], pack_batch_size: int) -> tuple[Row, ...]:
    """Book batching, length grouping, then one packed row per pack length (all ours, fp32)."""
    return (
        Row(f"book batching, batch {batch_size}", ours=True),
        Row(f"length-grouped, batch {batch_size}", ours=True, grouped=True),
        *(
            Row(
                f"packed rows of {n}, batch {pack_batch_size}",
                ours=True,
                pack_length=n,
                batch_size=pack_batch_size,
            )
            for n in pack_lengths
        ),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps per row")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    parser.add_argument("--batch-size", type=int, default=8, help="records a batch (book, grouped)")
    parser.add_argument("--pack-lengths", default="512,1024", help="comma-separated tokens per packed row")
    parser.add_argument("--pack-batch-size", type=int, default=1, help="packed rows a batch")
    parser.add_argument("--mega-batches", type=int, default=50, help="batches per length-sorted chunk")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seed", type=int, default=123)
    add_data_argument(parser)
    args = parser.parse_args(argv)

    seqs, source = load_train_sequences(args.data)  # before any work: a bad --data fails at once
    rows = packing_rows(args.batch_size, [int(n) for n in args.pack_lengths.split(",")], args.pack_batch_size)
    settings = {k: v for k, v in vars(args).items() if k not in ("data", "pack_lengths", "pack_batch_size")}
    settings["reference_dropout"] = 0.0  # no reference row here; row_worker reads the setting
    n_tok = [len(s) for s in seqs]
    print(f"settings: {vars(args) | {'data': str(source)}}")
    print(machine_line(args.threads))
    print(f"gpt2-small, random init, fp32; {len(seqs)} train records ({min(n_tok)}-{max(n_tok)} tokens)")
    with load_reported():
        results = run_rows(settings, seqs, rows)
    print("| row | positions / step | records/s | target tokens/s | padding | last loss | peak RSS GiB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row, r in zip(rows, results, strict=True):
        cells = f"{r['examples_s']:.2f} | {r['tokens_s']:.0f} | {r['padding']:.0%} | {r['loss']:.2f}"
        print(f"| {row.name} | {r['positions']:.0f} | {cells} | {r['peak_gib']:.2f} |")
    base = results[0]["tokens_s"]
    ups = "; ".join(
        f"{row.name} {r['tokens_s'] / base:.2f}x" for row, r in zip(rows[1:], results[1:], strict=True)
    )
    print(f"\ntarget tokens/s over book batching: {ups}")


if __name__ == "__main__":
    main()
