"""Continuous batching: nothing lost under load, per-request settings hold in a batch, a request joining
mid-decode answers as it would alone, one row's failure stays its own, a client that goes away has its
row stopped, and admission (429 past `max_waiting`, 503 past the queue deadline or with a dead worker)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import torch

from gpt_finetune.model import GPT, GPTConfig
from gpt_finetune.serving import rows
from gpt_finetune.serving.batching import Batcher
from gpt_finetune.serving.jobs import Job
from gpt_finetune.serving.loading import UsableModel, cast_for_decoding
from gpt_finetune.tokenizer import END_OF_TEXT, gpt2_tokenizer

Serve = Callable[..., Any]  # the `serve` fixture
TIMEOUT = 300  # seconds for a whole test's requests: generous, never a measurement


def greedy(model: UsableModel, prompts: list[str], max_new_tokens: int) -> list[str]:
    tokenizer = gpt2_tokenizer()
    outputs = model.gpt.generate([tokenizer.encode(p) for p in prompts], max_new_tokens=max_new_tokens)
    return [tokenizer.decode([t for t in row if t != END_OF_TEXT]) for row in outputs]


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.01)


async def until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    """`wait_until` inside an event loop: its other tasks (the requests) go on meanwhile."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.01)


async def complete(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    """One completion, streamed or not, as {"text", "finish_reason", "completion_tokens"}."""
    if not body.get("stream"):
        answer = await client.post("/v1/completions", json=body)
        assert answer.status_code == 200, answer.text
        data = answer.json()
        choice = data["choices"][0]
        return {"text": choice["text"], "finish_reason": choice["finish_reason"], **data["usage"]}
    text, reason = "", None
    async with client.stream("POST", "/v1/completions", json=body) as answer:
        assert answer.status_code == 200
        async for line in answer.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                choice = json.loads(line[6:])["choices"][0]
                text, reason = text + choice["text"], choice["finish_reason"] or reason
    return {"text": text, "finish_reason": reason}


def test_32_clients_x_4_requests_lose_nothing_and_batch(serve: Serve, random_model: UsableModel) -> None:
    prompts = [f"Request number {i}: tell me about item {i % 7}." for i in range(32)]
    expected = greedy(random_model, prompts, 8)

    async def clients(url: str, batcher: Batcher) -> list[list[dict[str, Any]]]:
        async with httpx.AsyncClient(
            base_url=url, timeout=TIMEOUT, limits=httpx.Limits(max_connections=64)
        ) as c:

            async def one_client(i: int) -> list[dict[str, Any]]:
                body = {"model": "tiny-random", "prompt": prompts[i], "max_tokens": 8}
                return [await complete(c, body | {"stream": r % 2 == 1}) for r in range(4)]

            with batcher.paused():  # the first requests of all 32 clients queue up: a full first batch
                tasks = [asyncio.create_task(one_client(i)) for i in range(32)]
                while batcher.waiting() < 32:
                    await asyncio.sleep(0.01)
            return await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)

    with serve(random_model, max_batch_size=16) as (url, app):
        results = asyncio.run(clients(url, app.state.batcher))
        assert httpx.get(f"{url}/health").json()["status"] == "ok"  # still up
        batcher = app.state.batcher
    assert [[r["text"] for r in rs] for rs in results] == [[e] * 4 for e in expected]
    assert batcher.finished_jobs == 128
    assert batcher.largest_batch == 16 and batcher.batches < 128


def test_each_request_keeps_its_settings_inside_a_batch(serve: Serve, random_model: UsableModel) -> None:
    bodies = [
        {"prompt": "The weather today", "max_tokens": 12},  # greedy
        {"prompt": "A recipe for soup", "max_tokens": 9, "temperature": 1.2, "top_k": 30, "seed": 5},
        {"prompt": "My favourite", "max_tokens": 3},
        {"prompt": "Once upon a time there was", "max_tokens": 7, "temperature": 0.7, "seed": 9},
    ]

    async def send(url: str, batch: list[dict[str, Any]], batcher: Batcher) -> list[dict[str, Any]]:
        async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as c:
            with batcher.paused():
                tasks = [asyncio.create_task(complete(c, body)) for body in batch]
                while batcher.waiting() < len(batch):
                    await asyncio.sleep(0.01)
            return await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)

    with serve(random_model) as (url, app):
        together = asyncio.run(send(url, bodies, app.state.batcher))
        assert app.state.batcher.largest_batch == len(bodies)
        alone = [asyncio.run(send(url, [body], app.state.batcher))[0] for body in bodies]
    assert together == alone
    assert together[0]["text"] == greedy(random_model, ["The weather today"], 12)[0]
    assert [r["completion_tokens"] for r in together] == [12, 9, 3, 7]
    assert {r["finish_reason"] for r in together} == {"length"}


def gated(model: GPT, gate: threading.Event, after: int = 1) -> list[int]:
    """Make every forward pass after the first `after` wait for `gate`; returns the live call count."""
    forward, calls = model.hidden_states, [0]

    def hidden_states(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls[0] += 1
        if calls[0] > after:
            gate.wait()
        return forward(*args, **kwargs)

    model.hidden_states = hidden_states  # type: ignore[method-assign]
    return calls


def submitted(batcher: Batcher) -> list[Job]:
    """The jobs handed to `batcher` from now on (a job cancelled before the worker reaches its gate leaves
    `batcher.running` at once: tests look for the job itself)."""
    jobs: list[Job] = []
    submit = batcher.submit

    def record(job: Job) -> None:
        jobs.append(job)
        submit(job)

    batcher.submit = record  # type: ignore[method-assign]
    return jobs


def fresh_model(seed: int = 0) -> UsableModel:
    """A tiny random model of its own (tests that patch the model must not touch the shared one)."""
    torch.manual_seed(seed)
    gpt = GPT(GPTConfig.from_size("tiny", context_length=256)).eval()
    return UsableModel("instruct", gpt, "alpaca", "m", "")


def test_a_client_that_disconnects_has_its_row_stopped(serve: Serve) -> None:
    model = fresh_model()
    gate = threading.Event()
    gated(model.gpt, gate)
    with serve(model) as (url, app), httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        batcher: Batcher = app.state.batcher
        jobs = submitted(batcher)
        body = {"prompt": "Tell me a long story", "max_tokens": 200, "stream": True}
        with client.stream("POST", "/v1/completions", json=body) as answer:
            assert next(answer.iter_lines()).startswith("data: ")  # the first token arrived
        wait_until(lambda: jobs[0].cancelled, "the server saw it")
        gate.set()
        wait_until(lambda: batcher.finished_jobs == 1, "the row stopped")
        assert batcher.cancelled_rows == 1
        after = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2}).json()
        assert after["usage"]["completion_tokens"] == 2


def test_a_non_streaming_client_that_hangs_up_has_its_row_stopped(serve: Serve) -> None:
    model = fresh_model()
    gate = threading.Event()
    gated(model.gpt, gate, after=4)  # the prompt and 3 steps, then the worker waits
    with serve(model) as (url, app):
        batcher: Batcher = app.state.batcher
        jobs = submitted(batcher)
        body = {"prompt": "Tell me a long story", "max_tokens": 200}
        with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes its connection
            httpx.post(f"{url}/v1/completions", json=body, timeout=1.5)
        wait_until(lambda: bool(jobs) and jobs[0].cancelled, "the server saw it")
        job = jobs[0]
        gate.set()
        wait_until(lambda: batcher.finished_jobs == 1, "the row left the batch")
        decoded = job.decoded
        assert decoded < 10 and batcher.cancelled_rows == 1 and not batcher.rows
        after = httpx.post(f"{url}/v1/completions", json={"prompt": "Hi", "max_tokens": 20}, timeout=TIMEOUT)
        assert after.json()["usage"]["completion_tokens"] == 20  # its place was reused
        assert job.decoded == decoded  # the worker decoded nothing more for the row that left


def test_a_request_joining_mid_decode_answers_as_it_would_alone(serve: Serve) -> None:
    model = fresh_model()
    first, second = "Once upon a time in a land far away", "The weather"
    expected = greedy(model, [first, second], 40)
    alone = greedy(model, [second], 12)
    gate = threading.Event()
    calls = gated(model.gpt, gate, after=6)  # the first request's prompt and 5 decoding steps

    async def send(url: str, batcher: Batcher) -> list[dict[str, Any]]:
        async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as c:
            a = asyncio.create_task(complete(c, {"prompt": first, "max_tokens": 40}))
            # The worker waits in its 6th decoding step: the second request cannot be admitted before.
            await until(lambda: calls[0] > 6, "the first request is mid-decode")
            b = asyncio.create_task(complete(c, {"prompt": second, "max_tokens": 12}))
            await until(lambda: batcher.waiting() == 1, "the second request waits")
            gate.set()
            return await asyncio.wait_for(asyncio.gather(a, b), TIMEOUT)

    with serve(model) as (url, app):
        batcher: Batcher = app.state.batcher
        a, b = asyncio.run(send(url, batcher))
        assert batcher.joined_running == 1 and batcher.largest_batch == 2  # it joined the running row
    assert (a["text"], b["text"]) == (expected[0], alone[0])
    assert b["completion_tokens"] == 12 and a["completion_tokens"] == 40


def test_a_failure_in_one_row_fails_only_that_request(
    serve: Serve, random_model: UsableModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_draw = rows.draw

    def draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        if generator is not None and generator.initial_seed() == 13:
            raise RuntimeError("injected failure in one row")
        return real_draw(probs, generator)

    bodies = [
        {"prompt": "The weather today", "max_tokens": 6},
        {"prompt": "A recipe for soup", "max_tokens": 6, "temperature": 1.0, "seed": 13},  # fails
        {"prompt": "My favourite", "max_tokens": 6, "temperature": 1.0, "seed": 5},
    ]

    async def send(url: str, batcher: Batcher) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as c:
            with batcher.paused():
                tasks = [asyncio.create_task(c.post("/v1/completions", json=b)) for b in bodies]
                while batcher.waiting() < len(bodies):
                    await asyncio.sleep(0.01)
            return await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)

    with serve(random_model) as (url, app):
        alone = [httpx.post(f"{url}/v1/completions", json=b, timeout=TIMEOUT).json() for b in bodies]
        monkeypatch.setattr(rows, "draw", draw)
        greedy_row, failed, sampled = asyncio.run(send(url, app.state.batcher))
        assert app.state.batcher.largest_batch == 3
        assert failed.status_code == 500 and failed.json()["error"]["type"] == "server_error"
        for answer, expected in ((greedy_row, alone[0]), (sampled, alone[2])):
            assert answer.status_code == 200
            assert answer.json()["choices"] == expected["choices"]  # its batch-mates finished unharmed
        assert httpx.get(f"{url}/health").json()["status"] == "ok"


def test_past_max_waiting_a_429_with_retry_after(serve: Serve, random_model: UsableModel) -> None:
    async def send(url: str, batcher: Batcher) -> tuple[list[httpx.Response], httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as c:
            with batcher.paused():
                body = {"prompt": "Hi", "max_tokens": 2}
                tasks = [asyncio.create_task(c.post("/v1/completions", json=body)) for _ in range(2)]
                while batcher.waiting() < 2:
                    await asyncio.sleep(0.01)
                refused = await c.post("/v1/completions", json=body)
            return await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT), refused

    with serve(random_model, max_waiting=2) as (url, app):
        queued, refused = asyncio.run(send(url, app.state.batcher))
    assert [r.status_code for r in queued] == [200, 200]
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "overloaded"


def test_a_request_not_started_by_the_queue_deadline_gets_a_503(
    serve: Serve, random_model: UsableModel
) -> None:
    async def send(url: str, batcher: Batcher) -> httpx.Response:
        async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as c:
            with batcher.paused():
                task = asyncio.create_task(c.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2}))
                await asyncio.sleep(0.5)  # past the deadline while no place opens
            return await asyncio.wait_for(task, TIMEOUT)

    with serve(random_model, queue_timeout_s=0.2) as (url, app):
        late = asyncio.run(send(url, app.state.batcher))
        on_time = httpx.post(f"{url}/v1/completions", json={"prompt": "Hi", "max_tokens": 2}, timeout=TIMEOUT)
    assert late.status_code == 503 and late.json()["error"]["code"] == "queue_timeout"
    assert on_time.status_code == 200


def test_a_dead_worker_makes_health_503_and_requests_fail_at_once(
    serve: Serve, random_model: UsableModel
) -> None:
    def bug() -> list[Any]:
        raise RuntimeError("a bug in the worker loop")

    with serve(random_model) as (url, app):
        assert httpx.get(f"{url}/health").status_code == 200
        app.state.batcher._admit = bug
        first = httpx.post(f"{url}/v1/completions", json={"prompt": "Hi", "max_tokens": 2}, timeout=TIMEOUT)
        health = httpx.get(f"{url}/health")
        later = httpx.post(f"{url}/v1/completions", json={"prompt": "Hi", "max_tokens": 2}, timeout=TIMEOUT)
    assert first.status_code == 503 and first.json()["error"]["code"] == "worker_dead"
    assert health.status_code == 503 and health.json()["status"] == "unavailable"
    assert later.status_code == 503 and "not running" in later.json()["error"]["message"]


@pytest.mark.parametrize("max_batch_size", [1, 3])
def test_batches_never_exceed_max_batch_size(
    serve: Serve, random_model: UsableModel, max_batch_size: int
) -> None:
    async def send(url: str, batcher: Batcher) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as c:
            with batcher.paused():
                tasks = [
                    asyncio.create_task(complete(c, {"prompt": f"x{i}", "max_tokens": 2})) for i in range(5)
                ]
                while batcher.waiting() < 5:
                    await asyncio.sleep(0.01)
            await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)

    with serve(random_model, max_batch_size=max_batch_size) as (url, app):
        asyncio.run(send(url, app.state.batcher))
        assert app.state.batcher.largest_batch == max_batch_size
        assert app.state.batcher.batches == -(-5 // max_batch_size)


def test_an_idle_server_gathers_a_burst_into_one_batch(serve: Serve, random_model: UsableModel) -> None:
    async def burst(url: str) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as c:
            bodies = [{"prompt": f"burst {i}", "max_tokens": 2} for i in range(3)]
            await asyncio.wait_for(asyncio.gather(*(complete(c, b) for b in bodies)), TIMEOUT)

    with serve(random_model, max_batch_size=3, batch_wait_ms=60_000) as (url, app):
        asyncio.run(burst(url))  # a full batch starts without waiting out batch_wait_ms
        assert (app.state.batcher.batches, app.state.batcher.largest_batch) == (1, 3)


def test_bf16_weights_answer_as_their_own_generate(serve: Serve) -> None:
    model = fresh_model()
    cast_for_decoding(model, "bf16")
    assert next(model.gpt.parameters()).dtype == torch.bfloat16
    prompts = ["The weather today", "Once upon a time there was"]
    expected = greedy(model, prompts, 10)
    with serve(model) as (url, _):
        body = {"prompt": prompts, "max_tokens": 10, "logprobs": 1, "echo": True}
        done = httpx.post(f"{url}/v1/completions", json=body, timeout=TIMEOUT).json()
    assert [c["text"] for c in done["choices"]] == [p + e for p, e in zip(prompts, expected, strict=True)]
    assert all(lp is not None for c in done["choices"] for lp in c["logprobs"]["token_logprobs"][1:])
