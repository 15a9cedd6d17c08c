"""`python serve.py run_dir=RUN`: an OpenAI-compatible HTTP server and a web page for a trained run."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from omegaconf import DictConfig

from gpt_finetune.config import register_resolvers
from gpt_finetune.errors import UserError, run_command
from gpt_finetune.serving.loading import load_configured
from gpt_finetune.serving.server import ServerSettings, bind, create_app, url_of


class Server(uvicorn.Server):
    """uvicorn's server, except that Ctrl-C / SIGTERM end `run` normally (exit 0) after the clean
    shutdown, instead of being raised again once it is done."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            try:
                yield
            finally:
                getattr(self, "_captured_signals", []).clear()  # what uvicorn would re-raise


def read_api_key(env_name: str | None) -> str | None:
    """The key clients must send: the value of the environment variable `env_name` (None: no key)."""
    if env_name is None:
        return None
    key = os.environ.get(env_name, "").strip()
    if not key:
        raise UserError(
            f"api_key_env={env_name}: the environment variable {env_name} is not set or empty; "
            f"export {env_name}=<key> or drop api_key_env"
        )
    return key


def serve(cfg: DictConfig) -> None:
    """Load the model, bind the port, serve until Ctrl-C or SIGTERM."""
    api_key = read_api_key(cfg.api_key_env)
    if cfg.max_batch_size < 1:
        raise UserError(f"max_batch_size={cfg.max_batch_size}; use 1 (no batching) or more")
    if cfg.batch_wait_ms < 0:
        raise UserError(f"batch_wait_ms={cfg.batch_wait_ms}; use 0 (start at once) or more")
    sock = bind(str(cfg.host), int(cfg.port))  # before the (slow) load: a taken port fails at once
    usable = load_configured(cfg)
    if cfg.model_name is not None:
        usable.name = str(cfg.model_name)
    settings = ServerSettings(
        max_batch_size=int(cfg.max_batch_size),
        batch_wait_ms=float(cfg.batch_wait_ms),
        max_body_bytes=int(cfg.max_body_bytes),
        api_key=api_key,
        max_new_tokens=int(cfg.generate.max_new_tokens),
        temperature=float(cfg.generate.temperature),
        top_k=None if cfg.generate.top_k is None else int(cfg.generate.top_k),
    )
    server = Server(
        uvicorn.Config(
            create_app(usable, settings),
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=5,
        )
    )
    endpoints = "/v1/classify" if usable.kind == "classify" else "/v1/chat/completions, /v1/completions"
    print(
        f"serving {usable.name} ({usable.kind}, {usable.device}) at {url_of(sock)} "
        f"(OpenAI API at {url_of(sock)}v1: /v1/models, {endpoints}); Ctrl-C stops",
        flush=True,
    )
    server.run(sockets=[sock])
    print("server stopped", flush=True)


def main(cfg: DictConfig) -> None:
    """Entry point for `serve.py`: user errors as one line on stderr and exit code 2."""
    register_resolvers()
    run_command(serve, cfg)
