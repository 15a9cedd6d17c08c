"""Request bodies of the OpenAI-compatible API (strictly typed), and its error in OpenAI's shape.

Fields OpenAI defines that this server does not use (presence_penalty, user, ...) are accepted and
ignored; ones whose value would change the answer in a way we cannot honour (n > 1, top_p < 1, logprobs)
are refused with a 400 that says so.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_STOPS = 4
MAX_CLASSIFY_TEXTS = 256


class ApiError(Exception):
    """An HTTP error answered as `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(
    message: str, type: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class Strict(BaseModel):
    """No type coercion ("5" is not an integer); unknown fields ignored as OpenAI clients send extras."""

    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(Strict):
    include_usage: bool = False


class GenerationRequest(Strict):
    """What completions and chat completions share."""

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_k: int | None = Field(default=None, ge=1)  # not OpenAI's; 1 = greedy
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: bool | int | None = None

    @field_validator("n")
    @classmethod
    def one_choice(cls, n: int | None) -> int | None:
        if n is not None and n != 1:
            raise ValueError(f"n={n} is not supported; this server returns one choice (n=1)")
        return n

    @field_validator("top_p")
    @classmethod
    def no_nucleus(cls, top_p: float | None) -> float | None:
        if top_p is not None and top_p != 1.0:
            raise ValueError("top_p is not supported; use top_k (an extra field) or temperature")
        return top_p

    @field_validator("logprobs")
    @classmethod
    def no_logprobs(cls, logprobs: bool | int | None) -> bool | int | None:
        if logprobs not in (None, False, 0):
            raise ValueError("logprobs are not supported")
        return logprobs

    @field_validator("stop")
    @classmethod
    def few_stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if isinstance(stop, list) and len(stop) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop strings")
        return stop

    def stops(self) -> tuple[str, ...]:
        """The stop strings as a tuple (empty ones dropped)."""
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        return tuple(s for s in stops if s)

    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def token_limit(self) -> int | None:
        """The most tokens to generate, when the request sets it."""
        return self.max_tokens


class CompletionRequest(GenerationRequest):
    prompt: str | list[str]
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def one_prompt(cls, prompt: str | list[str]) -> str | list[str]:
        if isinstance(prompt, list) and len(prompt) != 1:
            raise ValueError(f"{len(prompt)} prompts; send one prompt per request (n=1)")
        return prompt

    @field_validator("echo")
    @classmethod
    def no_echo(cls, echo: bool) -> bool:
        if echo:
            raise ValueError("echo is not supported")
        return echo

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class TextPart(Strict):
    type: Literal["text"]
    text: str


class ChatMessage(Strict):
    role: str
    content: str | list[TextPart]
    name: str | None = None

    def as_dict(self) -> dict[str, str]:
        """`{"role", "content"}` as `render_messages` takes it (text parts joined; developer = system)."""
        content = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": content}


class ChatRequest(GenerationRequest):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = Field(default=None, ge=1)  # the newer name of max_tokens

    def token_limit(self) -> int | None:
        """`max_completion_tokens`, or `max_tokens` (when the request sets one)."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class ClassifyRequest(Strict):
    model: str | None = None
    input: str | list[str] = Field(min_length=1)

    @field_validator("input")
    @classmethod
    def some_texts(cls, texts: str | list[str]) -> str | list[str]:
        items = [texts] if isinstance(texts, str) else texts
        if len(items) > MAX_CLASSIFY_TEXTS:
            raise ValueError(f"{len(items)} texts; send at most {MAX_CLASSIFY_TEXTS} per request")
        if any(not t.strip() for t in items):
            raise ValueError("empty text; send the texts to classify")
        return texts

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)
