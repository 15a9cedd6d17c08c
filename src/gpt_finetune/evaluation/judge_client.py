"""A minimal chat client for ollama's `/api/chat` and OpenAI-compatible `/v1/chat/completions` servers.

Standard library only (urllib). The API key is read from an environment variable at request time and sent
only in the `Authorization` header; it is never stored on the client, logged or written to a file.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import urllib.error
import urllib.request
from typing import Any, Literal
from urllib.parse import urlsplit

from gpt_finetune.errors import UserError

Protocol = Literal["ollama", "openai"]
Message = dict[str, str]


class TransientError(Exception):
    """A request that may succeed when repeated: HTTP 5xx / 429, a timeout, a malformed reply."""


class Unreachable(TransientError):
    """No connection to the server at all (refused, unknown host)."""


class RequestRejected(Exception):
    """An HTTP 4xx answer (bad model name, bad key, ...): repeating the request will not help."""


def is_loopback(url: str) -> bool:
    """Whether `url` points at this machine (such requests never go through an HTTP proxy)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def endpoint(protocol: Protocol, base_url: str) -> str:
    """The chat URL: `{base}/api/chat` (ollama) or `{base}/chat/completions` (`/v1` added to a bare host)."""
    base = base_url.rstrip("/")
    if protocol == "ollama":
        return base if base.endswith("/api/chat") else f"{base}/api/chat"
    if base.endswith("/chat/completions"):
        return base
    return (
        f"{base}/chat/completions" if urlsplit(base).path not in ("", "/") else f"{base}/v1/chat/completions"
    )


class ChatClient:
    """One chat request at a time (thread-safe: no shared mutable state); see `chat`."""

    def __init__(
        self,
        protocol: Protocol,
        base_url: str,
        model: str,
        *,
        temperature: float = 0.0,
        seed: int | None = 123,
        timeout_s: float = 60.0,
        max_tokens: int | None = None,
        num_ctx: int | None = 2048,
        api_key_env: str | None = None,
    ) -> None:
        if protocol not in ("ollama", "openai"):
            raise UserError(f"judge.protocol={protocol} is not one of ollama, openai")
        self.protocol, self.model, self.url = protocol, model, endpoint(protocol, base_url)
        self.temperature, self.seed, self.timeout_s = temperature, seed, timeout_s
        self.max_tokens, self.num_ctx, self.api_key_env = max_tokens, num_ctx, api_key_env
        handlers = [urllib.request.ProxyHandler({})] if is_loopback(self.url) else []
        self._opener = urllib.request.build_opener(*handlers)

    def payload(self, messages: list[Message]) -> dict[str, Any]:
        """The JSON body of a non-streaming chat request."""
        if self.protocol == "ollama":
            options: dict[str, Any] = {
                "temperature": self.temperature,
                "seed": self.seed,
                "num_ctx": self.num_ctx,
            }
            options["num_predict"] = self.max_tokens
            options = {k: v for k, v in options.items() if v is not None}
            return {"model": self.model, "messages": messages, "stream": False, "options": options}
        body = {"model": self.model, "messages": messages, "temperature": self.temperature, "seed": self.seed}
        body["max_tokens"] = self.max_tokens
        return {k: v for k, v in body.items() if v is not None}

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def chat(self, messages: list[Message]) -> str:
        """The assistant's reply text; raises TransientError, Unreachable or RequestRejected."""
        data = json.dumps(self.payload(messages)).encode()
        request = urllib.request.Request(self.url, data=data, headers=self.headers(), method="POST")
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                body = response.read()
        except urllib.error.HTTPError as error:
            detail = error.read()[:300].decode("utf-8", "replace").strip()
            message = f"HTTP {error.code} from {self.url}" + (f": {detail}" if detail else "")
            if error.code == 429 or error.code >= 500:
                raise TransientError(message) from None
            raise RequestRejected(message) from None
        except TimeoutError as error:
            raise TransientError(f"no reply from {self.url} within {self.timeout_s:g} s") from error
        except urllib.error.URLError as error:
            if isinstance(error.reason, (TimeoutError, socket.timeout)):
                raise TransientError(f"no reply from {self.url} within {self.timeout_s:g} s") from None
            raise Unreachable(f"cannot reach {self.url} ({error.reason})") from None
        except (ConnectionError, OSError) as error:  # e.g. the server closed the connection mid-reply
            raise TransientError(f"connection to {self.url} failed ({error})") from None
        return self.reply_text(body)

    def reply_text(self, body: bytes) -> str:
        """The message content in a chat reply body; TransientError when it is not the expected JSON."""
        try:
            reply = json.loads(body)
            if self.protocol == "ollama":
                return str(reply["message"]["content"])
            return str(reply["choices"][0]["message"]["content"])
        except (ValueError, KeyError, IndexError, TypeError):
            raise TransientError(f"malformed reply from {self.url}: {body[:120]!r}") from None
