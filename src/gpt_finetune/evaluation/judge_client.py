"""A minimal chat client for ollama's `/api/chat` and OpenAI-compatible `/v1/chat/completions` servers.

Requests go through one `httpx.Client` (pooled connections, shared by threads); a loopback server is never
reached through an HTTP proxy, and redirects are not followed. The API key is read from an environment
variable at request time and sent only in the `Authorization` header; it is never stored on the client,
logged or written to a file.
"""

from __future__ import annotations

import ipaddress
import json
import os
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx

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
    """Chat requests to one server (thread-safe: the threads share one connection pool); see `chat`."""

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
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UserError(f"judge.base_url={base_url} is not an http:// or https:// URL")
        # Proxy settings come from the environment (HTTP(S)_PROXY, NO_PROXY), except for loopback.
        self._http = httpx.Client(timeout=timeout_s, trust_env=not is_loopback(self.url))

    def close(self) -> None:
        """Close the pooled connections (the client cannot send afterwards)."""
        self._http.close()

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
        try:
            response = self._http.post(self.url, json=self.payload(messages), headers=self.headers())
        except httpx.TimeoutException:
            raise TransientError(f"no reply from {self.url} within {self.timeout_s:g} s") from None
        except (httpx.ConnectError, httpx.ProxyError) as error:
            raise Unreachable(f"cannot reach {self.url} ({error})") from None
        except httpx.TransportError as error:  # e.g. the server closed the connection mid-reply
            raise TransientError(f"connection to {self.url} failed ({error})") from None
        status = response.status_code
        if status >= 300:  # redirects are not followed: the POST body and key go only to judge.base_url
            detail = response.content[:300].decode("utf-8", "replace").strip()
            if response.has_redirect_location:
                detail = f"redirected to {response.headers['Location']}; set judge.base_url to it"
            message = f"HTTP {status} from {self.url}" + (f": {detail}" if detail else "")
            if status == 429 or status >= 500:
                raise TransientError(message)
            raise RequestRejected(message)
        return self.reply_text(response.content)

    def reply_text(self, body: bytes) -> str:
        """The message content in a chat reply body; TransientError when it is not the expected JSON."""
        try:
            reply = json.loads(body)
            if self.protocol == "ollama":
                return str(reply["message"]["content"])
            return str(reply["choices"][0]["message"]["content"])
        except (ValueError, KeyError, IndexError, TypeError):
            raise TransientError(f"malformed reply from {self.url}: {body[:120]!r}") from None
