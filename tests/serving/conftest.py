"""Serving fixtures: the server in-process on a free loopback port, and models to serve."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest
import torch
from fastapi import FastAPI

from gpt_finetune.model import GPT, GPTConfig
from gpt_finetune.serving.loading import UsableModel, load_model
from gpt_finetune.serving.server import ServerSettings, background_server, create_app

Serve = Callable[..., AbstractContextManager[tuple[str, FastAPI]]]


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
        with background_server(app) as url:
            yield url, app

    return serving
