"""`python serve.py` as a user runs it: the URL line, the openai client, SIGTERM / Ctrl-C end it cleanly.

The settings' refusals, which come before the server starts, run serve's `main` in this process
(`command_in_process`: the same exit code and output, without a process's seconds of imports).
"""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI

from gpt_finetune.serving.conversation import render_messages
from gpt_finetune.serving.loading import load_model
from gpt_finetune.tokenizer import END_OF_TEXT, gpt2_tokenizer

ROOT = Path(__file__).resolve().parents[2]


class ServeProcess:
    """`python serve.py ARGS` with its output lines readable as they come."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "serve.py", *args],
            cwd=ROOT,
            env={k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | (env or {}),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # a terminal's Ctrl-C reaches the server's process group only
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, pattern: str, timeout: float = 180) -> re.Match[str]:
        while True:
            line = self.lines.get(timeout=timeout)
            assert line is not None, f"serve.py ended: {''.join(self.output)}"
            self.output.append(line)
            if found := re.search(pattern, line):
                return found

    def stop(self, signum: int) -> int:
        self.process.send_signal(signum)
        code = self.process.wait(timeout=60)
        while (line := self.lines.get(timeout=10)) is not None:
            self.output.append(line)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def serve_process() -> Iterator[type[ServeProcess]]:
    started: list[ServeProcess] = []

    class Started(ServeProcess):
        def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
            super().__init__(*args, env=env)
            started.append(self)

    yield Started
    for process in started:
        process.kill()


@pytest.mark.parametrize(
    ("signum", "host", "key"), [(signal.SIGTERM, "127.0.0.1", "k3y"), (signal.SIGINT, "0.0.0.0", None)]
)
def test_serve_py_answers_the_openai_client_and_stops_cleanly(
    quickstart_run: Path, serve_process: type[ServeProcess], signum: int, host: str, key: str | None
) -> None:
    """With a key on loopback; and without one beyond it, which it warns about before it serves."""
    server = serve_process(
        f"run_dir={quickstart_run}",
        f"host={host}",
        "port=0",
        "device=cpu",
        *(["api_key_env=GPTF_TEST_KEY"] if key else []),
        "generate.max_new_tokens=12",
        env={"GPTF_TEST_KEY": key} if key else {},
    )
    if key is None:
        warning = server.wait_for(r"^warning: ").string
        assert f"host={host} serves beyond this machine with no key" in warning and "api_key_env" in warning
    port = server.wait_for(rf"at http://{re.escape(host)}:(\d+)/").group(1)
    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key or "-", max_retries=0, timeout=120)
    messages = [{"role": "user", "content": "Give me a synonym for quick."}]
    done = client.chat.completions.create(model=quickstart_run.name, messages=messages)  # type: ignore[arg-type]

    model = load_model(str(quickstart_run), device="cpu")
    tokenizer = gpt2_tokenizer()
    prompt = tokenizer.encode(render_messages(messages, model.prompt_style))
    expected = [t for t in model.gpt.generate([prompt], max_new_tokens=12)[0] if t != END_OF_TEXT]
    assert done.choices[0].message.content == tokenizer.decode(expected)

    assert server.stop(signum) == 0
    assert "server stopped" in "".join(server.output)
    assert "Traceback" not in "".join(server.output)


def test_a_missing_key_variable_is_one_error_line(
    quickstart_run: Path, command_in_process, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GPTF_NO_SUCH_VARIABLE", raising=False)
    args = (f"run_dir={quickstart_run}", "port=0", "api_key_env=GPTF_NO_SUCH_VARIABLE")
    done = command_in_process("serve", *args)
    assert done.returncode == 2 and done.stdout == ""
    assert re.fullmatch(
        r"error: api_key_env=GPTF_NO_SUCH_VARIABLE: the environment variable .* is not set.*\n", done.stderr
    )


def test_a_taken_port_is_one_error_line(quickstart_run: Path, command_in_process) -> None:
    with socket.socket() as taken:  # as another server holds it
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = command_in_process("serve", f"run_dir={quickstart_run}", f"port={port}", "device=cpu")
    assert done.returncode == 2 and done.stdout == ""
    assert re.fullmatch(
        rf"error: cannot listen on 127\.0\.0\.1:{port} .*pass another port=N.*\n", done.stderr
    )


def test_bad_request_defaults_are_one_error_line_before_loading(command_in_process) -> None:
    args = (
        "run_dir=/nonexistent/run",  # never reached: the settings are checked first
        "generate.temperature=1e-40",
        "generate.top_k=0",
        "generate.top_p=1.5",
        "max_waiting=0",
        "dtype=fp16",
    )
    done = command_in_process("serve", *args)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == (
        "error: max_waiting=0: use a positive number of requests, or null (no limit); "
        "dtype=fp16: use fp32 or bf16; generate.temperature=1e-40: use 0 (greedy) or a value in [0.01, 2.0]; "
        "generate.top_k=0: use a positive integer up to the vocabulary size 50257, or null (all tokens); "
        "generate.top_p=1.5: use a value in (0, 1], or null (1: all tokens)\n"
    )
