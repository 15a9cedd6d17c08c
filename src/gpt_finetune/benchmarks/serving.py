"""Serving under load: continuous batching vs. per-batch vs. one request at a time, open-loop arrivals.

    python -m gpt_finetune.benchmarks.serving [--size gpt2-small] [--rates 0.5,1,2,4] [--requests 24] \
        [--max-batch-size 16] [--max-new-tokens 48] [--threads N] [--data FILE | sample] [--no-llama-cpp]

Random weights (no download). The requests are the test split of `--data` (the book's 110 test records,
in file order): each record's alpaca prompt is sent to `/v1/completions` as text, streamed and greedy,
asking for as many tokens as the record's reference answer holds (plus its end-of-text, at most
`--max-new-tokens`), with end-of-text suppressed (`logit_bias`) so every answer has exactly that length.
At each rate (requests per second) the requests arrive at the same seeded Poisson times whatever the
server does (an open loop, as nanochat's and vLLM's serving benchmarks). Rows, each a fresh server in this
process: continuous batching (`serve.py`'s default), per-batch (the older policy: a batch runs until all
its rows end before others join), one at a time (`max_batch_size=1`). Where llama-cpp-python's server
imports (`pip install 'llama-cpp-python[server]'`), a reference row: llama.cpp's server (it answers one
request at a time) on our GGUF export (f32) of the same weights, in its own process. Per row: generated
tokens/s over the whole load, time to first token p50/p95, inter-token latency (between streamed chunks)
p50/p95, requests lost, and whether each request's text equals continuous batching's.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import torch

from gpt_finetune.benchmarks.data_file import add_data_argument, read_data
from gpt_finetune.data.instructions import split_records
from gpt_finetune.data.prompts import format_prompt
from gpt_finetune.devices import peak_rss_gib
from gpt_finetune.model import GPT, GPTConfig
from gpt_finetune.serving.loading import UsableModel
from gpt_finetune.serving.server import ServerSettings, background_server, create_app
from gpt_finetune.tokenizer import END_OF_TEXT, gpt2_tokenizer


@dataclass(frozen=True)
class Request:
    prompt: str
    max_tokens: int


@dataclass
class Answer:
    """One request as the client saw it."""

    sent: float
    text: str = ""
    chunks: list[float] = field(default_factory=list)  # arrival time of each streamed text chunk
    finish_reason: str | None = None
    done: bool = False  # the stream ended with [DONE]
    error: str | None = None

    @property
    def lost(self) -> bool:
        return self.error is not None or not self.done or self.finish_reason != "length"


def load_requests(data: str | None, n: int, max_new_tokens: int) -> list[Request]:
    """The first `n` test-split records as prompts, each asking for its reference answer's length."""
    records, _ = read_data(data)
    tokenizer = gpt2_tokenizer()
    test = split_records(records)["test"][:n]
    return [
        Request(
            format_prompt(r),
            min(len(tokenizer.encode(r["output"], disallowed_special=())) + 1, max_new_tokens),
        )
        for r in test
    ]


def poisson_times(n: int, rate: float, seed: int) -> list[float]:
    """`n` arrival times (seconds from the start) of a Poisson process with `rate` per second."""
    rng, now, times = random.Random(seed), 0.0, []
    for _ in range(n):
        now += rng.expovariate(rate)
        times.append(now)
    return times


async def send(client: httpx.AsyncClient, model: str, request: Request, answer: Answer) -> None:
    body = {
        "model": model,
        "prompt": request.prompt,
        "max_tokens": request.max_tokens,
        "temperature": 0,
        "logit_bias": {str(END_OF_TEXT): -100},
        "repeat_penalty": 1.0,  # llama-cpp-python's server defaults to 1.1; ours has none (an unknown field)
        "stream": True,
    }
    try:
        async with client.stream("POST", "/v1/completions", json=body) as response:
            if response.status_code != 200:
                answer.error = f"HTTP {response.status_code}"
                return
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    answer.done = True
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    answer.error = str(chunk["error"])
                    continue
                for choice in chunk.get("choices", []):
                    if choice.get("text"):
                        answer.text += choice["text"]
                        answer.chunks.append(time.perf_counter())
                    answer.finish_reason = choice.get("finish_reason") or answer.finish_reason
    except httpx.HTTPError as error:
        answer.error = type(error).__name__


async def open_loop(
    url: str, model: str, requests: list[Request], times: list[float]
) -> tuple[list[Answer], float]:
    """Send each request at its arrival time (not waiting for earlier ones); the answers and wall time."""
    limits = httpx.Limits(max_connections=len(requests) + 4)
    async with httpx.AsyncClient(base_url=url, timeout=3600, limits=limits) as client:
        start = time.perf_counter()
        answers = [Answer(start + t) for t in times]

        async def at(i: int) -> None:
            await asyncio.sleep(max(0.0, answers[i].sent - time.perf_counter()))
            answers[i].sent = time.perf_counter()
            await send(client, model, requests[i], answers[i])

        await asyncio.gather(*(at(i) for i in range(len(requests))))
        return answers, time.perf_counter() - start


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


@dataclass
class Row:
    name: str
    rate: float
    answers: list[Answer]
    wall_s: float
    tokens: int

    def cells(self, reference: list[Answer] | None) -> str:
        ttft = [a.chunks[0] - a.sent for a in self.answers if a.chunks]
        gaps = [b - a for x in self.answers for a, b in zip(x.chunks, x.chunks[1:], strict=False)]
        lost = sum(a.lost for a in self.answers)
        same = "–"
        if reference is not None:
            matching = sum(a.text == b.text for a, b in zip(self.answers, reference, strict=True))
            same = f"{matching}/{len(reference)}"
        return (
            f"| {self.rate:g} | {self.name} | {self.tokens / self.wall_s:.1f} "
            f"| {percentile(ttft, 50):.2f} | {percentile(ttft, 95):.2f} "
            f"| {1000 * percentile(gaps, 50):.0f} | {1000 * percentile(gaps, 95):.0f} | {lost} | {same} |"
        )


@contextmanager
def our_server(model: UsableModel, settings: ServerSettings) -> Iterator[str]:
    with background_server(create_app(model, settings)) as url:
        yield url


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def llama_cpp_server(model: UsableModel, threads: int) -> Iterator[str]:
    """llama-cpp-python's OpenAI server on our f32 GGUF export of `model`, in its own process."""
    from gpt_finetune.export.gguf_file import write_gguf

    with tempfile.TemporaryDirectory(prefix="serving-bench-") as folder:
        path = Path(folder) / "model.gguf"
        write_gguf(model, path, "f32")
        port = free_port()
        command = [
            sys.executable, "-m", "llama_cpp.server", "--model", str(path), "--model_alias", model.name,
            "--n_ctx", str(model.gpt.config.context_length), "--n_threads", str(threads),
            "--n_threads_batch", str(threads), "--host", "127.0.0.1", "--port", str(port),
            "--interrupt_requests", "False",  # its default drops a streaming answer when another arrives
        ]  # fmt: skip
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("llama.cpp's server did not start")
                time.sleep(0.5)
            yield url
        finally:
            process.terminate()
            process.wait(timeout=30)


def run_row(name: str, url: str, model: str, requests: list[Request], rate: float, seed: int) -> Row:
    asyncio.run(open_loop(url, model, requests[:1], [0.0]))  # warm-up: first-call allocations
    answers, wall = asyncio.run(open_loop(url, model, requests, poisson_times(len(requests), rate, seed)))
    tokens = sum(r.max_tokens for r, a in zip(requests, answers, strict=True) if not a.lost)
    return Row(name, rate, answers, wall, tokens)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="gpt2-small")
    parser.add_argument("--rates", default="0.5,1,2,4", help="arrival rates, requests per second")
    parser.add_argument("--requests", type=int, default=24, help="requests per rate (the first test records)")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=48, help="the longest answer asked for")
    parser.add_argument("--seed", type=int, default=0, help="seed of the arrival times")
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads for each server (torch's default)"
    )
    parser.add_argument("--no-llama-cpp", action="store_true", help="leave out llama.cpp's reference row")
    add_data_argument(parser)
    args = parser.parse_args(argv)

    requests = load_requests(args.data, args.requests, args.max_new_tokens)  # a bad --data fails at once
    rates = [float(r) for r in args.rates.split(",")]
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    gpt = GPT(GPTConfig.from_size(args.size)).eval()
    model = UsableModel("instruct", gpt, "alpaca", name=args.size, source="random init")
    threads = torch.get_num_threads()
    server_modules = ("llama_cpp", "sse_starlette", "starlette_context", "pydantic_settings")
    missing = [m for m in server_modules if importlib.util.find_spec(m) is None]
    with_llama = not args.no_llama_cpp and not missing
    if missing and not args.no_llama_cpp:
        print(f"no llama.cpp row: {', '.join(missing)} missing (pip install 'llama-cpp-python[server]')")
    lengths = [r.max_tokens for r in requests]
    mean = sum(lengths) / len(lengths)
    print(
        f"{args.size}, random weights, {threads} CPU threads ({os.cpu_count()} cores), {len(requests)} test "
        f"records per rate, answers of {min(lengths)}-{max(lengths)} tokens (mean {mean:.0f}), "
        f"greedy, streamed, loopback HTTP; max_batch_size {args.max_batch_size}; load average "
        f"{os.getloadavg()[0]:.1f} at start"
    )
    configs = [
        ("continuous batching", ServerSettings(max_batch_size=args.max_batch_size)),
        ("per-batch", ServerSettings(max_batch_size=args.max_batch_size, continuous=False)),
        ("one at a time", ServerSettings(max_batch_size=1)),
    ]
    print(
        "\n| rate req/s | server | generated tokens/s | TTFT p50 s | TTFT p95 s | ITL p50 ms | ITL p95 ms "
        "| lost | same text as continuous |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for i, rate in enumerate(rates):
        rows: list[Row] = []
        for name, settings in configs:
            with our_server(model, settings) as url:
                rows.append(run_row(name, url, args.size, requests, rate, args.seed + i))
        if with_llama:
            with llama_cpp_server(model, threads) as url:
                rows.append(
                    run_row("llama.cpp server (f32 GGUF)", url, args.size, requests, rate, args.seed + i)
                )
        for row in rows:
            print(row.cells(None if row is rows[0] else rows[0].answers), flush=True)
    print(f"\npeak RSS {peak_rss_gib():.2f} GiB; load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
