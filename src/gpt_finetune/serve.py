"""`python serve.py run_dir=RUN`: an OpenAI-compatible HTTP server and a web page for a trained run."""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from omegaconf import DictConfig

from gpt_finetune.config import register_resolvers
from gpt_finetune.errors import UserError, run_command
from gpt_finetune.model.sampling import sampling_problems
from gpt_finetune.serving.loading import DECODE_DTYPES, cast_for_decoding, load_configured
from gpt_finetune.serving.server import ServerSettings, bind, create_app, url_of
from gpt_finetune.tokenizer import gpt2_tokenizer


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


def settings_problems(cfg: DictConfig) -> list[str]:
    """What is wrong with serve.yaml's own settings and `generate.*` request defaults, each naming its key."""
    found = []
    if cfg.max_batch_size < 1:
        found.append(f"max_batch_size={cfg.max_batch_size}: use 1 (no batching) or more")
    if cfg.batch_wait_ms < 0:
        found.append(f"batch_wait_ms={cfg.batch_wait_ms}: use 0 (start at once) or more")
    if cfg.max_waiting is not None and cfg.max_waiting < 1:
        found.append(f"max_waiting={cfg.max_waiting}: use a positive number of requests, or null (no limit)")
    if cfg.queue_timeout_s is not None and not cfg.queue_timeout_s > 0:
        found.append(f"queue_timeout_s={cfg.queue_timeout_s}: use a positive number of seconds, or null")
    if cfg.dtype not in DECODE_DTYPES:
        found.append(f"dtype={cfg.dtype}: use {' or '.join(DECODE_DTYPES)}")
    g = cfg.generate
    if g.max_new_tokens < 1:
        found.append(f"generate.max_new_tokens={g.max_new_tokens}: use a positive number of tokens")
    vocab = gpt2_tokenizer().n_vocab
    found += [f"generate.{p}" for p in sampling_problems(g.temperature, g.top_k, g.top_p, None, vocab)]
    return found


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may well be reachable from elsewhere


def serve(cfg: DictConfig) -> None:
    """Check the settings, load the model, bind the port, serve until Ctrl-C or SIGTERM."""
    problems = settings_problems(cfg)
    if problems:
        raise UserError("; ".join(problems))
    api_key = read_api_key(cfg.api_key_env)
    if api_key is None and not is_loopback(str(cfg.host)):
        print(
            f"warning: host={cfg.host} serves beyond this machine with no key; anyone who can reach it "
            "can use the model (set api_key_env=VAR with the key in $VAR)",
            file=sys.stderr,
            flush=True,
        )
    sock = bind(str(cfg.host), int(cfg.port))  # before the (slow) load: a taken port fails at once
    usable = load_configured(cfg)
    cast_for_decoding(usable, str(cfg.dtype))
    if cfg.model_name is not None:
        usable.name = str(cfg.model_name)
    settings = ServerSettings(
        max_batch_size=int(cfg.max_batch_size),
        batch_wait_ms=float(cfg.batch_wait_ms),
        max_waiting=None if cfg.max_waiting is None else int(cfg.max_waiting),
        queue_timeout_s=None if cfg.queue_timeout_s is None else float(cfg.queue_timeout_s),
        max_body_bytes=int(cfg.max_body_bytes),
        api_key=api_key,
        max_new_tokens=int(cfg.generate.max_new_tokens),
        temperature=float(cfg.generate.temperature),
        top_k=None if cfg.generate.top_k is None else int(cfg.generate.top_k),
        top_p=None if cfg.generate.top_p is None else float(cfg.generate.top_p),
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
