"""LLM judge against a loopback server that speaks ollama and OpenAI chat, and misbehaves on request."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from gpt_finetune.errors import UserError
from gpt_finetune.evaluate import build_judge, evaluate, main
from gpt_finetune.evaluation.judge import Judge, judge_prompt, parse_score
from gpt_finetune.evaluation.judge_client import endpoint

SLOW_S = 2.5  # the server's delay for SLOW; the client's timeout is 1 s (ample for the other replies)


@dataclass
class Served:
    """What the loopback server saw: per-marker request counts, Authorization headers, request bodies."""

    counts: Counter[str] = field(default_factory=Counter)
    auth: list[str | None] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def reply_for(marker: str, messages: list[dict[str, str]], seen: int) -> tuple[int, str | None]:
    """(HTTP status, assistant text) for a record whose response is `marker`; seen = earlier requests."""
    if marker.startswith("SCORE="):
        return 200, marker.removeprefix("SCORE=")
    if marker == "WORDY":
        return 200, "Score: 85/100"
    if marker == "GARBAGE":
        return 200, "This response is quite good."
    if marker == "GARBAGE-ONCE":  # answers properly when reminded
        return 200, "70" if len(messages) == 3 else "Pretty good, I would say."
    if marker == "FAIL500":
        return 500, None
    if marker == "FLAKY":  # one 500, then a score
        return (500, None) if seen == 0 else (200, "90")
    if marker == "BUSY":  # one 429 (rate limited), then a score
        return (429, None) if seen == 0 else (200, "60")
    if marker == "MOVED":  # answered with a redirect, which the client must not follow
        return 307, None
    if marker == "SLOW":
        time.sleep(SLOW_S)
        return 200, "50"
    return 200, "no marker"


def make_handler(served: Served) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            marker = body["messages"][0]["content"].split("score the model response `")[1].split("`")[0]
            with served.lock:
                seen = served.counts[marker]
                served.counts[marker] += 1
                served.auth.append(self.headers.get("Authorization"))
                served.bodies.append(body)
            if body["model"] == "missing":
                return self.answer(404, json.dumps({"error": "model 'missing' not found, try pulling it"}))
            status, text = reply_for(marker, body["messages"], seen)
            message = {"role": "assistant", "content": text}
            if status == 307:
                return self.answer(status, "", location="http://elsewhere.invalid/v1/chat/completions")
            if self.path == "/api/chat":
                self.answer(status, json.dumps({"model": body["model"], "message": message, "done": True}))
            elif self.path == "/v1/chat/completions":
                self.answer(status, json.dumps({"choices": [{"index": 0, "message": message}]}))
            else:
                self.answer(404, "no such path")

        def answer(self, status: int, text: str, location: str | None = None) -> None:
            data = text.encode()
            try:
                self.send_response(status)
                if location is not None:
                    self.send_header("Location", location)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except OSError:  # the client gave up (timeout) and closed the connection
                pass

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def server() -> Iterator[tuple[str, Served]]:
    """A loopback chat server on a free port, in a thread; yields (http://127.0.0.1:PORT, what it saw)."""
    served = Served()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(served))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", served
    httpd.shutdown()
    httpd.server_close()


def record(marker: str) -> dict[str, Any]:
    return {"instruction": f"Rate {marker}.", "input": "", "output": "The answer.", "model_response": marker}


MARKERS = ["SCORE=80", "WORDY", "GARBAGE", "GARBAGE-ONCE", "FAIL500", "FLAKY", "SLOW", "SCORE=0"]
# Scored: 80, 85, 70, 90, 0 -> 5 of 8, average 65.


def fast_judge(protocol: str, base_url: str, **overrides: Any) -> Judge:
    settings = dict(timeout_s=1.0, retries=1, retry_backoff_s=0.01, concurrency=4, seed=7) | overrides
    return Judge(protocol, base_url if protocol == "ollama" else f"{base_url}/v1", "judge-model", **settings)


@pytest.mark.parametrize(
    ("reply", "score"),
    [
        ("85", 85), (" 85.\n", 85), ("**70**", 70), ("Score: 85/100", 85), ("85 out of 100", 85),
        ("100", 100), ("0", 0), ("72.6", 73), ("<think>maybe 40 or 50</think>\n45", 45), ("great", None),
        ("", None), ("150", None), ("-5", None), ("On a scale of 0 to 100, I give it 80", None),
        ("80 or 90", None),
    ],
)  # fmt: skip
def test_parse_score(reply: str, score: int | None) -> None:
    assert parse_score(reply) == score


@pytest.mark.parametrize(
    ("protocol", "base", "url"),
    [
        ("ollama", "http://localhost:11434", "http://localhost:11434/api/chat"),
        ("ollama", "http://h:1/api/chat", "http://h:1/api/chat"),
        ("openai", "http://localhost:8080", "http://localhost:8080/v1/chat/completions"),
        ("openai", "https://api.openai.com/v1/", "https://api.openai.com/v1/chat/completions"),
        ("openai", "http://h:1/v1/chat/completions", "http://h:1/v1/chat/completions"),
    ],
)
def test_endpoint(protocol: str, base: str, url: str) -> None:
    assert endpoint(protocol, base) == url  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("choice", "url", "key_env"),
    [
        ("none", None, None),
        ("ollama", "http://localhost:11434/api/chat", None),
        ("openai", "http://localhost:11434/v1/chat/completions", "OPENAI_API_KEY"),
    ],
)
def test_judge_configs_instantiate(
    choice: str, url: str | None, key_env: str | None, evaluate_config
) -> None:
    judge = build_judge(evaluate_config(f"judge={choice}").judge)
    if url is None:
        assert judge is None
    else:
        assert judge is not None and judge.client.url == url
        assert (judge.settings["temperature"], judge.settings["model"]) == (0.0, "llama3")
        assert judge.client.api_key_env == key_env


def test_prompt_is_the_books() -> None:
    entry = {"instruction": "Name a colour.", "input": "", "output": "Blue.", "model_response": "Red."}
    assert judge_prompt(entry, "alpaca") == (
        "Given the input `Below is an instruction that describes a task. Write a response that "
        "appropriately completes the request.\n\n### Instruction:\nName a colour.\n\n### Response:` "
        "and correct output `Blue.`, score the model response `Red.` on a scale from 0 to 100, "
        "where 100 is the best score. Respond with the integer number only."
    )


@pytest.mark.parametrize("protocol", ["ollama", "openai"])
def test_scores_retries_and_failures(server: tuple[str, Served], protocol: str) -> None:
    base_url, served = server
    started = time.perf_counter()
    result = fast_judge(protocol, base_url).judge([record(m) for m in MARKERS], "alpaca")
    assert time.perf_counter() - started < 20  # a hang guard, not a speed test
    by_marker = {e["instruction"].removeprefix("Rate ").rstrip("."): e for e in result["records"]}
    assert {m: e["score"] for m, e in by_marker.items()} == {
        "SCORE=80": 80, "WORDY": 85, "GARBAGE": None, "GARBAGE-ONCE": 70,
        "FAIL500": None, "FLAKY": 90, "SLOW": None, "SCORE=0": 0,
    }  # fmt: skip
    assert (result["scored"], result["total"], result["average"]) == (5, 8, 65.0)
    assert result["summary"] == "5 of 8 scored, average 65.00"
    assert "after one retry" in by_marker["GARBAGE"]["error"]
    assert "HTTP 500" in by_marker["FAIL500"]["error"]
    assert "within 1 s" in by_marker["SLOW"]["error"]
    assert by_marker["FLAKY"]["error"] is None and by_marker["GARBAGE-ONCE"]["error"] is None
    # One retry for unparseable replies; `retries`=1 repeat for HTTP errors and timeouts.
    assert dict(served.counts) == {
        "SCORE=80": 1, "WORDY": 1, "GARBAGE": 2, "GARBAGE-ONCE": 2,
        "FAIL500": 2, "FLAKY": 2, "SLOW": 2, "SCORE=0": 1,
    }  # fmt: skip
    assert result["requests"] == sum(served.counts.values()) == 13
    body = served.bodies[0]
    assert body["model"] == "judge-model" and body["messages"][0]["role"] == "user"
    options = body["options"] if protocol == "ollama" else body
    assert (options["temperature"], options["seed"]) == (0.0, 7)
    assert body.get("stream") is (False if protocol == "ollama" else None)


def test_rejected_request_is_a_user_error(server: tuple[str, Served]) -> None:
    base_url, served = server
    judge = Judge("ollama", base_url, "missing", timeout_s=2, retries=3, retry_backoff_s=0.01, concurrency=1)
    with pytest.raises(UserError, match=r"HTTP 404 .*model 'missing' not found"):
        judge.judge([record("SCORE=1")], "alpaca")
    assert sum(served.counts.values()) == 1  # a 4xx is not repeated


@pytest.mark.parametrize("protocol", ["ollama", "openai"])
def test_rate_limit_is_retried_redirect_rejected_and_loopback_never_proxied(
    server: tuple[str, Served], protocol: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    base_url, served = server
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):  # a proxy that is not there
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    result = fast_judge(protocol, base_url).judge([record("BUSY")], "alpaca")
    assert [e["score"] for e in result["records"]] == [60] and served.counts["BUSY"] == 2
    with pytest.raises(UserError, match=r"HTTP 307 .*redirected to http://elsewhere.invalid/"):
        fast_judge(protocol, base_url).judge([record("MOVED")], "alpaca")
    assert served.counts["MOVED"] == 1  # a redirect is neither followed nor repeated


def test_base_url_must_be_http() -> None:
    with pytest.raises(UserError, match=r"judge.base_url=localhost:11434 is not an http"):
        Judge("ollama", "localhost:11434", "llama3")


def synthetic_run(folder: Path) -> Path:
    """A run dir as train.py leaves it, minus checkpoints: config, metrics, responses, TensorBoard losses."""
    folder.mkdir()
    (folder / "config.yaml").write_text("seed: 123\ntask:\n  prompt_style: alpaca\n")
    (folder / "metrics.json").write_text(json.dumps({"global_step": 4, "test/loss": 2.5}))
    responses = [{**record(m), "stopped": True} for m in ("SCORE=40", "SCORE=60", "GARBAGE")]
    (folder / "test_responses.json").write_text(json.dumps(responses))
    with SummaryWriter(log_dir=str(folder / "tensorboard")) as writer:
        for step in range(5):
            writer.add_scalar("train/loss", 3.0 - 0.2 * step, step)
        writer.add_scalar("val/loss", 2.8, 4)
    return folder


def test_evaluate_with_judge_writes_scores_everywhere_but_never_the_key(
    server: tuple[str, Served],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    evaluate_config,
) -> None:
    base_url, served = server
    secret = f"sk-test-{uuid.uuid4().hex}"
    monkeypatch.setenv("GPT_FINETUNE_TEST_JUDGE_KEY", secret)
    run_dir = synthetic_run(tmp_path / "run")
    summary = evaluate(evaluate_config(
        f"run_dir={run_dir}", "judge=openai", f"judge.base_url={base_url}",
        "judge.api_key_env=GPT_FINETUNE_TEST_JUDGE_KEY", "judge.retry_backoff_s=0.01", "judge.timeout_s=2",
    ))  # fmt: skip
    assert served.auth and set(served.auth) == {f"Bearer {secret}"}  # the key was sent ...
    written = [p for p in run_dir.rglob("*") if p.is_file()]
    names = {p.name for p in written}
    assert {"judge_scores.json", "report.html", "response_metrics.json", "loss.png"} <= names
    for path in written:  # ... and is in no file, and was not printed
        assert secret.encode() not in path.read_bytes(), path
    captured = capsys.readouterr()
    assert secret not in captured.out + captured.err

    scores = json.loads((run_dir / "judge_scores.json").read_text())
    assert scores["summary"] == "2 of 3 scored, average 50.00" and summary["judge_average"] == 50.0
    assert [e["score"] for e in scores["records"]] == [40, 60, None]
    html = (run_dir / "report.html").read_text()
    assert "2 of 3 scored, average 50.00" in html and "<th>Judge score</th>" in html
    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    assert [(e.step, e.value) for e in events.Scalars("judge/average")] == [(4, 50.0)]
    assert any(tag.startswith("judge/summary") for tag in events.Tags()["tensors"])


def test_a_dpo_run_is_judged_with_its_starting_models_answers_beside(
    server: tuple[str, Served], tmp_path: Path, evaluate_config
) -> None:
    """A DPO run's responses hold the pair and the starting model's answer: the judge scores the DPO model's,
    the report shows both, in aligned columns."""
    base_url, _ = server
    run_dir = synthetic_run(tmp_path / "dpo")
    responses = json.loads((run_dir / "test_responses.json").read_text())
    for i, response in enumerate(responses):
        response.update(chosen="The answer.", rejected="An answer.", reference_response=f"BEFORE-{i}")
    (run_dir / "test_responses.json").write_text(json.dumps(responses))
    summary = evaluate(evaluate_config(
        f"run_dir={run_dir}", "judge=ollama", f"judge.base_url={base_url}", "judge.retry_backoff_s=0.01",
    ))  # fmt: skip
    assert summary["judge_average"] == 50.0  # SCORE=40, SCORE=60: the DPO model's responses were judged
    html = (run_dir / "report.html").read_text()
    header = html.split("<table id='records'>")[1].split("</thead>")[0]
    columns = header.count("<th>")
    assert "<th>Before (starting model)</th>" in header and "<th>Judge score</th>" in header
    rows = html.split("<table id='records'>")[1].split("<tbody>")[1].split("</tr>")[:-1]
    assert len(rows) == 3 and all(row.count("<td") == columns for row in rows)
    assert all(f"BEFORE-{i}" in row for i, row in enumerate(rows))


def test_unreachable_judge_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], evaluate_config
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the block ends: nothing listens there
    run_dir = synthetic_run(tmp_path / "run")
    config = evaluate_config(
        f"run_dir={run_dir}", "judge=ollama", f"judge.base_url=http://127.0.0.1:{port}",
        "judge.retries=1", "judge.retry_backoff_s=0.01",
    )  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main(config)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert error.startswith("error: judge: cannot reach")
    assert f"127.0.0.1:{port}" in error and "judge.base_url" in error
    assert (run_dir / "report.html").is_file() and not (run_dir / "judge_scores.json").exists()
