"""A loopback HTTP server that imitates just enough of the Hugging Face Hub for one test.

`LoopbackServer` answers GET/HEAD from `routes` (404 otherwise) and POST through `on_post`, and records
every request; `serving(server)` runs it on a thread. Tests point huggingface_hub at it with `HF_ENDPOINT`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


class LoopbackServer(ThreadingHTTPServer):
    """HTTP on a free loopback port: answers GET/HEAD from `routes[path]` (404 otherwise) and POST with
    `on_post(path, body, headers)` (headers read case-insensitively); records each request in `requests`."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), RouteHandler)
        self.routes: dict[str, Reply] = {}
        self.requests: list[str] = []
        self.on_post: Callable[[str, bytes, Message], Reply] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class RouteHandler(BaseHTTPRequestHandler):
    server: LoopbackServer

    def do_HEAD(self) -> None:
        self.reply(with_body=False)

    def do_GET(self) -> None:
        self.reply(with_body=True)

    def do_POST(self) -> None:
        self.server.requests.append(f"{self.command} {self.path}")
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        on_post = self.server.on_post
        reply = on_post(self.path, body, self.headers) if on_post is not None else Reply(404)
        self.send(reply, with_body=True)

    def reply(self, with_body: bool) -> None:
        self.server.requests.append(f"{self.command} {self.path}")
        self.send(self.server.routes.get(self.path, Reply(404, {"X-Error-Code": "EntryNotFound"})), with_body)

    def send(self, reply: Reply, with_body: bool) -> None:
        self.send_response(reply.status)
        for name, value in {"Content-Length": str(len(reply.body)), **reply.headers}.items():
            self.send_header(name, value)
        self.end_headers()
        if with_body:
            self.wfile.write(reply.body)

    def log_message(self, format: str, *args: object) -> None:
        """Silent: the test reads `server.requests` instead."""


@contextmanager
def serving(server: LoopbackServer) -> Iterator[LoopbackServer]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
