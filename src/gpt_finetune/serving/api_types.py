"""Request bodies of the OpenAI-compatible API (strictly typed, every value bounded), and its error shape.

Every value a client sends is checked here, before it reaches the worker: temperature 0 or in
[0.01, 2], `top_p` in (0, 1], `top_k` >= 1 (and at most the vocabulary, checked against the model), a seed
in [0, 2**63), `n` in 1..8, at most 4 non-empty stop strings of at most 64 characters, penalties in
[-2, 2], `logit_bias` values in [-100, 100] for at most 300 token ids, `logprobs` / `top_logprobs` in
0..20. A field that would change the answer in a way this server does not implement (`response_format`
other than text, `tools`, `tool_choice`, `functions`, `best_of` > 1, `suffix`, audio output) is refused
with a 400 that names it; fields that change nothing here (`user`, `metadata`, `store`, ...) are ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from gpt_finetune.model.sampling import MAX_TEMPERATURE, MIN_TEMPERATURE, SEED_LIMIT, sampling_problems

MAX_STOPS = 4
MAX_STOP_CHARS = 64
MAX_CHOICES = 8  # n
MAX_ROWS = 64  # prompts x n in one completions request
MAX_LOGPROBS = 20
MAX_BIASED_TOKENS = 300
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


def refused(field: str, why: str) -> ValueError:
    """The error of a field this server does not implement (pydantic names the field before it)."""
    return ValueError(f"not supported by this server ({why}); leave {field} out")


class GenerationRequest(Strict):
    """What completions and chat completions share."""

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = None
    top_k: int | None = Field(default=None, ge=1)  # not OpenAI's; 1 = greedy
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0, lt=SEED_LIMIT)
    n: int | None = Field(default=None, ge=1, le=MAX_CHOICES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    response_format: dict[str, Any] | None = None
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    functions: list[Any] | None = None
    function_call: str | dict[str, Any] | None = None
    audio: dict[str, Any] | None = None

    @field_validator("temperature")
    @classmethod
    def usable_temperature(cls, temperature: float | None) -> float | None:
        if temperature is not None and sampling_problems(temperature):
            raise ValueError(f"use 0 (greedy) or a value in [{MIN_TEMPERATURE}, {MAX_TEMPERATURE}]")
        return temperature

    @field_validator("stop")
    @classmethod
    def few_stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        stops = [stop] if isinstance(stop, str) else (stop or [])
        if len(stops) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop strings")
        if any(len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"a stop string may have at most {MAX_STOP_CHARS} characters")
        return stop

    @field_validator("logit_bias")
    @classmethod
    def bounded_bias(cls, bias: dict[str, float] | None) -> dict[str, float] | None:
        if bias is None:
            return None
        if len(bias) > MAX_BIASED_TOKENS:
            raise ValueError(f"at most {MAX_BIASED_TOKENS} token ids")
        for key, value in bias.items():
            if not key.isdigit():
                raise ValueError(f"{key!r} is not a token id (a non-negative integer as a string)")
            if not -100 <= value <= 100:
                raise ValueError(f"the bias of token {key} is {value}; use a value in [-100, 100]")
        return bias

    @field_validator("response_format")
    @classmethod
    def text_format(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and value.get("type", "text") != "text":
            raise refused("response_format", "answers are plain text; JSON modes are not enforced")
        return value

    @field_validator("tools", "functions")
    @classmethod
    def no_tools(cls, value: list[Any] | None, info: ValidationInfo) -> list[Any] | None:
        if value:
            raise refused(str(info.field_name), "the model cannot call tools")
        return value

    @field_validator("tool_choice", "function_call")
    @classmethod
    def no_tool_choice(cls, value: Any, info: ValidationInfo) -> Any:
        if value not in (None, "none"):
            raise refused(str(info.field_name), "the model cannot call tools")
        return value

    @field_validator("audio")
    @classmethod
    def no_audio(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            raise refused("audio", "text only")
        return value

    def check(self) -> None:
        """Raise a 400 naming the field for what the fields' own checks cannot see."""

    def stops(self) -> tuple[str, ...]:
        """The stop strings as a tuple (empty ones dropped)."""
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        return tuple(s for s in stops if s)

    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def token_limit(self) -> int | None:
        """The most tokens to generate, when the request sets it."""
        return self.max_tokens

    def choices(self) -> int:
        return self.n or 1

    def top_logprobs_wanted(self) -> int | None:
        """None: no log-probs; k: each chosen token's log-prob and the k most likely tokens."""
        raise NotImplementedError


Prompt = str | list[str] | list[int] | list[list[int]]


class CompletionRequest(GenerationRequest):
    prompt: Prompt
    max_tokens: int | None = Field(default=None, ge=0)  # 0 with echo: score the prompt only
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    best_of: int | None = None
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def some_prompt(cls, prompt: Prompt) -> Prompt:
        if isinstance(prompt, list) and not prompt:
            raise ValueError("the prompt list is empty; send a string, token ids, or a list of either")
        return prompt

    @field_validator("best_of")
    @classmethod
    def one_best(cls, best_of: int | None) -> int | None:
        if best_of not in (None, 1):
            raise refused("best_of", "every choice is returned; use n")
        return best_of

    @field_validator("suffix")
    @classmethod
    def no_suffix(cls, suffix: str | None) -> str | None:
        if suffix:
            raise refused("suffix", "there is no insertion mode")
        return suffix

    def check(self) -> None:
        if self.max_tokens == 0 and not self.echo:
            raise ApiError(400, "max_tokens=0 needs echo=true (scoring the prompt only)", param="max_tokens")
        if len(self.prompts()) * self.choices() > MAX_ROWS:
            message = f"{len(self.prompts())} prompts x n={self.choices()} is over {MAX_ROWS} answers"
            raise ApiError(400, message + "; send fewer prompts or a smaller n", param="n")

    def prompts(self) -> list[str | list[int]]:
        """Each prompt, as text or token ids (a choice per prompt, in order)."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if isinstance(p[0], int):
            return [p]  # type: ignore[list-item]  # one prompt of token ids
        return list(p)  # type: ignore[arg-type]  # strings, or lists of token ids

    def top_logprobs_wanted(self) -> int | None:
        return self.logprobs


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
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)

    def check(self) -> None:
        if self.top_logprobs is not None and not self.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs=true", param="top_logprobs")

    def token_limit(self) -> int | None:
        """`max_completion_tokens`, or `max_tokens` (when the request sets one)."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def top_logprobs_wanted(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


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


class TokenizeRequest(Strict):
    """`POST /tokenize` (vLLM's shape, as lm-evaluation-harness's remote tokenizer sends it)."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = False
    add_generation_prompt: bool = True

    def check(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ApiError(400, "send either prompt (text) or messages (a conversation)", param="prompt")


class DetokenizeRequest(Strict):
    model: str | None = None
    tokens: list[int]
