"""Serving throughput: the batching server vs. one request at a time (`max_batch_size=1`), same clients.

    python -m gpt_finetune.benchmarks.serving [--size gpt2-small] [--clients 16] [--requests 2] \
        [--new-tokens 16] [--max-batch-size 16] [--batch-wait-ms 50] [--data FILE | sample]

Random weights; each of `--clients` concurrent clients sends `--requests` greedy chat requests, one after
another, to a server on loopback (in this process, uvicorn in a thread). Prompts come from `--data`.
The defaults finish in about 4 minutes on 2 busy CPU cores.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass

import httpx
import torch

from gpt_finetune.benchmarks.data_file import add_data_argument, read_data
from gpt_finetune.devices import peak_rss_gib
from gpt_finetune.model import GPT, GPTConfig
from gpt_finetune.serving.loading import UsableModel
from gpt_finetune.serving.server import ServerSettings, background_server, create_app


@dataclass
class Measured:
    max_batch_size: int
    wall_s: float
    tokens: int
    latencies: list[float]
    texts: list[str]
    largest_batch: int
    batches: int = 0

    @property
    def requests(self) -> int:
        return len(self.latencies)


async def clients(
    url: str, messages: list[str], n_clients: int, per_client: int, new_tokens: int
) -> Measured:
    """`n_clients` concurrent clients, each sending `per_client` requests in turn; texts in request order."""
    results: dict[int, tuple[str, int, float]] = {}
    limits = httpx.Limits(max_connections=n_clients * 2)
    async with httpx.AsyncClient(base_url=url, timeout=3600, limits=limits) as client:

        async def one_client(c: int) -> None:
            for r in range(per_client):
                i = c * per_client + r
                body = {
                    "messages": [{"role": "user", "content": messages[i % len(messages)]}],
                    "max_tokens": new_tokens,
                    "temperature": 0,
                }
                start = time.perf_counter()
                answer = await client.post("/v1/chat/completions", json=body)
                answer.raise_for_status()
                data = answer.json()
                text = data["choices"][0]["message"]["content"]
                results[i] = (text, data["usage"]["completion_tokens"], time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.gather(*(one_client(c) for c in range(n_clients)))
        wall = time.perf_counter() - start
    ordered = [results[i] for i in sorted(results)]
    return Measured(
        0, wall, sum(t for _, t, _ in ordered), [s for *_, s in ordered], [x for x, *_ in ordered], 0
    )


def measure(
    model: UsableModel, max_batch_size: int, messages: list[str], args: argparse.Namespace
) -> Measured:
    """One server with `max_batch_size`, one warm-up request, then the clients."""
    settings = ServerSettings(max_batch_size=max_batch_size, batch_wait_ms=args.batch_wait_ms)
    app = create_app(model, settings)
    with background_server(app) as url:
        asyncio.run(clients(url, messages, 1, 1, 2))  # warm-up: first-call allocations, tokenizer
        measured = asyncio.run(clients(url, messages, args.clients, args.requests, args.new_tokens))
    measured.max_batch_size, measured.largest_batch = max_batch_size, app.state.batcher.largest_batch
    measured.batches = app.state.batcher.batches - 1  # the warm-up's
    return measured


def row(name: str, m: Measured) -> str:
    mean = sum(m.latencies) / len(m.latencies)
    return (
        f"| {name} | {m.max_batch_size} | {m.requests} | {m.wall_s:.1f} | {m.requests / m.wall_s:.2f} "
        f"| {m.tokens / m.wall_s:.0f} | {mean:.2f} | {m.batches} ({m.largest_batch}) |"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="gpt2-small")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=2, help="requests per client, sent one after another")
    parser.add_argument("--new-tokens", type=int, default=16, help="max_tokens of each request")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--batch-wait-ms", type=float, default=50.0, help="serve.py's batch_wait_ms")
    add_data_argument(parser)
    args = parser.parse_args(argv)

    records, path = read_data(args.data)  # before any work: a bad --data fails at once
    messages = [r["instruction"] for r in records]
    torch.manual_seed(0)
    gpt = GPT(GPTConfig.from_size(args.size)).eval()
    model = UsableModel("instruct", gpt, "alpaca", name=args.size, source="random init")
    print(f"data: {path}")
    print(
        f"{args.size}, random weights, {torch.get_num_threads()} CPU threads, "
        f"{args.clients} concurrent clients x {args.requests} chat requests, "
        f"max_tokens {args.new_tokens}, greedy, loopback HTTP"
    )
    batched = measure(model, args.max_batch_size, messages, args)
    single = measure(model, 1, messages, args)

    same = sum(a == b for a, b in zip(batched.texts, single.texts, strict=True))
    print()
    print(
        "| server | max batch | requests | wall s | requests/s | new tokens/s | mean latency s "
        "| batches (largest) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    print(row("one request at a time", single))
    print(row("batched", batched))
    print()
    print(
        f"speed-up: {single.wall_s / batched.wall_s:.1f}x requests/s, "
        f"{(batched.tokens / batched.wall_s) / (single.tokens / single.wall_s):.1f}x tokens/s; "
        f"same text on {same}/{batched.requests} requests; peak RSS {peak_rss_gib():.2f} GiB"
    )


if __name__ == "__main__":
    main()
