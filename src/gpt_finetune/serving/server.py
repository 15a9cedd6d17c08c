"""The FastAPI app: OpenAI-compatible endpoints over one batching worker, a web page at `/`.

Every failure a client can cause is answered as a 4xx in OpenAI's error shape and leaves the server up.
Admission: past `max_waiting` queued requests a 429 with `Retry-After`; a request not started within
`queue_timeout_s` a 503; a dead worker a 503 (and `/health` says 503 too).
"""

from __future__ import annotations

import hmac
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from importlib import resources

import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gpt_finetune.errors import UserError
from gpt_finetune.serving.api_types import ApiError, error_body
from gpt_finetune.serving.batching import Batcher
from gpt_finetune.serving.endpoints import ServerSettings, add_endpoints
from gpt_finetune.serving.jobs import Overloaded, QueueTimeout, ServerStopping, WorkerDead
from gpt_finetune.serving.loading import UsableModel

log = logging.getLogger(__name__)
DRAINED = 16  # an oversized body is read (and dropped) up to this many times the limit before the 413


def create_app(usable: UsableModel, settings: ServerSettings) -> FastAPI:
    """The app serving `usable`; its batching worker runs while the app's lifespan does."""
    batcher = Batcher(
        usable,
        settings.max_batch_size,
        settings.batch_wait_ms / 1000,
        max_waiting=settings.max_waiting,
        queue_timeout_s=settings.queue_timeout_s,
        continuous=settings.continuous,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        try:
            yield
        finally:
            batcher.stop()

    app = FastAPI(
        title="gpt-finetune",
        lifespan=lifespan,
        docs_url=None,  # the docs pages load assets from a CDN; the server works offline
        redoc_url=None,
    )
    app.state.batcher, app.state.usable, app.state.settings = batcher, usable, settings
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    add_error_handlers(app)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(web_page(usable, settings))

    @app.get("/health")
    async def health() -> JSONResponse:
        facts = {
            "status": "ok" if batcher.alive() else "unavailable",
            "model": usable.name,
            "kind": usable.kind,
            "running": len(batcher.rows),
            "waiting": batcher.waiting(),
            "batches": batcher.batches,
            "steps": batcher.steps,
            "largest_batch": batcher.largest_batch,
        }
        return JSONResponse(facts, status_code=200 if batcher.alive() else 503)

    add_endpoints(app, usable, batcher, settings, Depends(api_key_check(settings.api_key)))
    return app


def web_page(usable: UsableModel, settings: ServerSettings) -> str:
    """`page.html` with the model's id, kind, labels, context and answer length injected (JSON, safe
    inside <script>)."""
    page = resources.files("gpt_finetune.serving").joinpath("page.html").read_text(encoding="utf-8")
    facts = {
        "model": usable.name,
        "kind": usable.kind,
        "labels": usable.labels,
        "auth": settings.api_key is not None,
        "context": usable.gpt.config.context_length,
        "max_new_tokens": settings.max_new_tokens,
    }
    injected = json.dumps(facts).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return page.replace("/*SERVER_FACTS*/null", injected)


def api_key_check(api_key: str | None) -> Callable[[Request], Awaitable[None]]:
    """A dependency: with `api_key` set, `Authorization: Bearer <api_key>` or a 401."""

    async def check(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise ApiError(
                401,
                "missing or incorrect API key; send the header Authorization: Bearer <key>",
                code="invalid_api_key",
            )

    return check


def add_error_handlers(app: FastAPI) -> None:
    """Every error as OpenAI's `{"error": {...}}`: validation 400, HTTP errors, our ApiError, 500."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
        return JSONResponse(error.body(), status_code=error.status, headers=headers)

    @app.exception_handler(UserError)
    async def user_error(request: Request, error: UserError) -> JSONResponse:
        return JSONResponse(error_body(str(error), param="messages"), status_code=400)

    @app.exception_handler(ServerStopping)
    async def stopping(request: Request, error: ServerStopping) -> JSONResponse:
        return JSONResponse(error_body(str(error), "server_error", code="shutting_down"), status_code=503)

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, error: Overloaded) -> JSONResponse:
        body = error_body(str(error), "server_error", code="overloaded")
        return JSONResponse(body, status_code=429, headers={"Retry-After": "1"})

    @app.exception_handler(QueueTimeout)
    async def queue_timeout(request: Request, error: QueueTimeout) -> JSONResponse:
        body = error_body(str(error), "server_error", code="queue_timeout")
        return JSONResponse(body, status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(WorkerDead)
    async def worker_dead(request: Request, error: WorkerDead) -> JSONResponse:
        return JSONResponse(error_body(str(error), "server_error", code="worker_dead"), status_code=503)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        message, param = validation_message(error)
        return JSONResponse(error_body(message, param=param), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(error.status_code)
        return JSONResponse(error_body(str(error.detail), code=code), status_code=error.status_code)

    @app.exception_handler(Exception)
    async def crashed(request: Request, error: Exception) -> JSONResponse:
        log.exception("request failed")
        message = f"internal error ({type(error).__name__}); see the server's log"
        return JSONResponse(error_body(message, "server_error"), status_code=500)


def validation_message(error: RequestValidationError) -> tuple[str, str | None]:
    """A one-line message for pydantic's errors (the first three), and the top-level field at fault."""
    problems, params = [], []
    for item in error.errors()[:3]:
        if item.get("type") == "json_invalid":
            detail = item.get("ctx", {}).get("error", "")
            return f"the request body is not valid JSON ({detail})", None
        loc = [str(part) for part in item.get("loc", ())[1:]]  # drop "body"
        message = str(item.get("msg", "invalid")).removeprefix("Value error, ")
        problems.append(f"{'.'.join(loc)}: {message}" if loc else message)
        params.append(loc[0] if loc else None)
    return "; ".join(problems) or "invalid request", params[0] if params else None


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` (declared or streamed) gets a 413."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunks, size, more = [], 0, True
        while more and size <= DRAINED * self.max_bytes:
            # Read the body first (keeping at most max_bytes): a client still sending misses a 413.
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size, more = size + len(body), bool(message.get("more_body", False))
            if size <= self.max_bytes:
                chunks.append(body)
        if size > self.max_bytes:
            await self.too_large(send, size)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: the disconnect a streaming response waits for
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def too_large(self, send: Send, size: int) -> None:
        message = f"the request body is {size} bytes; the limit is {self.max_bytes} (max_body_bytes)"
        body = json.dumps(error_body(message, code="request_too_large")).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on `host:port` (port 0: a free one); a one-line error when taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as error:
        raise UserError(
            f"cannot listen on {host}:{port} ({error.strerror}); pass another port=N or host="
        ) from None


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


@contextmanager
def background_server(app: FastAPI, host: str = "127.0.0.1", timeout: float = 60.0) -> Iterator[str]:
    """`app` served by uvicorn in a thread on a free port of `host` until the block ends; yields the URL
    (no trailing slash). For tests and benchmarks; `serve.py` runs uvicorn in the main thread. The host
    process's logging is left as it is (`log_config=None`): uvicorn's own setup would close the handlers
    already installed, and with them the streams they write to."""
    sock = bind(host, 0)
    config = uvicorn.Config(app, log_level="warning", access_log=False, log_config=None)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    try:
        yield url_of(sock).rstrip("/")
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()
