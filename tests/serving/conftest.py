"""Serving fixtures: the server in-process on a free loopback port, and models to serve."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest
import torch
import uvicorn
from fastapi import FastAPI

from gpt_finetune.model import GPT, GPTConfig
from gpt_finetune.serve import bind, url_of
from gpt_finetune.serving.loading import UsableModel, load_model
from gpt_finetune.serving.server import ServerSettings, create_app

Serve = Callable[..., AbstractContextManager[tuple[str, FastAPI]]]


@contextmanager
def running(app: FastAPI, timeout: float = 60.0) -> Iterator[str]:
    """`app` served by uvicorn in a background thread on a free 127.0.0.1 port; yields its base URL."""
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield url_of(sock).rstrip("/")
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()


@pytest.fixture(scope="session")
def instruct_model(quickstart_run: Path) -> UsableModel:
    """The quickstart run loaded as `serve.py run_dir=...` loads it (on the CPU)."""
    return load_model(str(quickstart_run), device="cpu")


@pytest.fixture(scope="session")
def random_model() -> UsableModel:
    """A tiny random-init instruction model (it rarely ends a text by itself: long streams); seed 1
    answers the page's question with words, not only newlines."""
    torch.manual_seed(1)
    gpt = GPT(GPTConfig.from_size("tiny", context_length=256)).eval()
    return UsableModel("instruct", gpt, "alpaca", name="tiny-random", source="random init")


@pytest.fixture(scope="session")
def serve() -> Serve:
    """`with serve(usable, **settings) as (url, app):` the server for `usable`, running."""

    @contextmanager
    def serving(usable: UsableModel, **settings: object) -> Iterator[tuple[str, FastAPI]]:
        app = create_app(usable, ServerSettings(**settings))  # type: ignore[arg-type]
        with running(app) as url:
            yield url, app

    return serving
