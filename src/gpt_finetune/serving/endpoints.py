"""The OpenAI-compatible endpoints: models, completions, chat completions (JSON or server-sent events),
classification, and the tokenizer endpoints evaluation harnesses read (`/tokenizer_info`, `/tokenize`,
`/detokenize`, vLLM's shapes). Each generation request becomes a batcher job; its answer is built from
the job's events. A client that disconnects, streaming or not, has its job cancelled: its rows leave the
batch at the next step.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from gpt_finetune.export.chat_template import chat_template
from gpt_finetune.serving.api_types import (
    ApiError,
    ChatRequest,
    ClassifyRequest,
    CompletionRequest,
    DetokenizeRequest,
    GenerationRequest,
    TokenizeRequest,
)
from gpt_finetune.serving.batching import Batcher
from gpt_finetune.serving.conversation import prompt_tokens, stop_strings
from gpt_finetune.serving.jobs import Event, Finished, Job, Sampling
from gpt_finetune.serving.loading import UsableModel
from gpt_finetune.serving.responses import Shape
from gpt_finetune.tokenizer import END_OF_TEXT_STRING, gpt2_tokenizer

CREATED = int(time.time())


@dataclass(frozen=True)
class ServerSettings:
    """What `serve.yaml` sets besides the model: batching, admission, limits, the key, request defaults."""

    max_batch_size: int = 16
    batch_wait_ms: float = 0.0  # serve.yaml's default is 50; 0 here keeps tests and benchmarks explicit
    max_waiting: int | None = None  # queued requests past this get a 429 (serve.yaml: 256)
    queue_timeout_s: float | None = None  # a request not started by then gets a 503 (serve.yaml: 300)
    continuous: bool = True  # false: the older per-batch scheduling (the serving benchmark's reference)
    max_body_bytes: int = 1_000_000
    api_key: str | None = None
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None


class ClientGone(Exception):
    """The client disconnected before its answer was complete."""


def add_endpoints(
    app: FastAPI, usable: UsableModel, batcher: Batcher, settings: ServerSettings, authorized: Any
) -> None:
    """Register `/v1/...` and the tokenizer endpoints on `app`, each behind the `authorized` dependency."""
    api = Api(usable, batcher, settings)
    guarded: dict[str, Any] = {"dependencies": [authorized]}

    @app.get("/v1/models", **guarded)
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [api.model_card()]}

    @app.get("/v1/models/{model_id}", **guarded)
    async def model(model_id: str) -> dict[str, Any]:
        api.check_model(model_id)
        return api.model_card()

    @app.post("/v1/completions", **guarded)
    async def completions(body: CompletionRequest, request: Request) -> Response:
        api.require("instruct")
        body.check()
        prompts = [api.prompt_tokens(p) for p in body.prompts()]
        echoes = [p if isinstance(p, str) else api.tokenizer.decode(p) for p in body.prompts()]
        if body.echo and body.stream and body.logprobs is not None:
            message = "echo with logprobs is not available in a stream; send stream=false"
            raise ApiError(400, message, param="echo")
        return await api.generation(request, body, prompts, chat=False, echoes=echoes if body.echo else None)

    @app.post("/v1/chat/completions", **guarded)
    async def chat_completions(body: ChatRequest, request: Request) -> Response:
        api.require("instruct")
        body.check()
        tokens = prompt_tokens([m.as_dict() for m in body.messages], usable.prompt_style)
        return await api.generation(request, body, [tokens], chat=True, echoes=None)

    @app.post("/v1/classify", **guarded)
    async def classify(body: ClassifyRequest) -> dict[str, Any]:
        api.require("classify")
        api.check_model(body.model)
        return await api.classify(body.texts())

    @app.get("/tokenizer_info", **guarded)
    async def tokenizer_info() -> dict[str, Any]:
        return {
            "tokenizer_class": "GPT2Tokenizer",
            "eos_token": END_OF_TEXT_STRING,
            "bos_token": END_OF_TEXT_STRING,
            "pad_token": END_OF_TEXT_STRING,
            "unk_token": END_OF_TEXT_STRING,
            "chat_template": chat_template(usable.prompt_style),
            "model_max_length": api.context,
            "vocab_size": api.vocab_size,
        }

    @app.post("/tokenize", **guarded)
    async def tokenize(body: TokenizeRequest) -> dict[str, Any]:
        body.check()
        if body.messages is not None:
            tokens = prompt_tokens([m.as_dict() for m in body.messages], usable.prompt_style)
        else:
            tokens = api.encode(body.prompt or "")
        return {"count": len(tokens), "max_model_len": api.context, "tokens": tokens}

    @app.post("/detokenize", **guarded)
    async def detokenize(body: DetokenizeRequest) -> dict[str, Any]:
        api.check_token_ids(body.tokens, "tokens")
        return {"prompt": api.tokenizer.decode(body.tokens)}


class Api:
    """What the endpoints share: the model's facts, request checks, jobs and their answers."""

    def __init__(self, usable: UsableModel, batcher: Batcher, settings: ServerSettings) -> None:
        self.usable, self.batcher, self.settings = usable, batcher, settings
        self.context = usable.gpt.config.context_length
        self.vocab_size = usable.gpt.config.vocab_size
        self.tokenizer = gpt2_tokenizer()

    def model_card(self) -> dict[str, Any]:
        return {"id": self.usable.name, "object": "model", "created": CREATED, "owned_by": "gpt-finetune"}

    def check_model(self, requested: str | None) -> None:
        if requested is not None and requested != self.usable.name:
            raise ApiError(
                404,
                f"model {requested!r} is not served here; use {self.usable.name!r} (GET /v1/models)",
                param="model",
                code="model_not_found",
            )

    def require(self, kind: str) -> None:
        """A 400 when the endpoint does not fit the model's kind."""
        if self.usable.kind == kind:
            return
        if self.usable.kind == "classify":
            labels = ", ".join(self.usable.labels)
            message = (
                f"this is a classification model (labels: {labels}); POST /v1/classify {{'input': [...]}}"
            )
        else:
            message = "this is an instruction model; use /v1/chat/completions or /v1/completions"
        raise ApiError(400, message, code="wrong_model_kind")

    def encode(self, text: str) -> list[int]:
        """A raw prompt's tokens; a literal `<|endoftext|>` is the end-of-text token (as in /tokenize)."""
        return self.tokenizer.encode(text, allowed_special={END_OF_TEXT_STRING})

    def check_token_ids(self, tokens: list[int], param: str) -> None:
        bad = [t for t in tokens if not 0 <= t < self.vocab_size]
        if bad:
            message = f"{param}: token id {bad[0]} is not in the vocabulary (0 to {self.vocab_size - 1})"
            raise ApiError(400, message, param=param)

    def prompt_tokens(self, prompt: str | list[int]) -> list[int]:
        """A completions prompt (text or token ids) as token ids, checked."""
        tokens = self.encode(prompt) if isinstance(prompt, str) else prompt
        self.check_token_ids(tokens, "prompt")
        if not tokens:
            raise ApiError(400, "prompt: the prompt is empty; send some text", param="prompt")
        return tokens

    def sampling(self, body: GenerationRequest, prompts: list[list[int]], chat: bool) -> Sampling:
        """The request's decoding settings (server defaults where unset), checked against the model."""
        longest = max(len(p) for p in prompts)
        room = self.context - longest
        limit = body.token_limit()
        where = "messages" if chat else "prompt"
        if room < 1 and limit != 0:
            raise ApiError(
                400,
                f"the prompt is {longest} tokens; the model's context is {self.context} tokens "
                "and needs room for at least one new token; shorten the prompt",
                param=where,
                code="context_length_exceeded",
            )
        if limit is not None and limit > room:
            raise ApiError(
                400,
                f"prompt ({longest} tokens) + max_tokens ({limit}) exceeds the model's context of "
                f"{self.context} tokens; ask for at most {room} tokens or shorten the prompt",
                param="max_tokens",
                code="context_length_exceeded",
            )
        if body.top_k is not None and body.top_k > self.vocab_size:
            raise ApiError(
                400, f"top_k={body.top_k}: at most the vocabulary, {self.vocab_size}", param="top_k"
            )
        bias = tuple((int(k), v) for k, v in (body.logit_bias or {}).items())
        self.check_token_ids([k for k, _ in bias], "logit_bias")
        logprobs = body.top_logprobs_wanted()
        s = self.settings
        return Sampling(
            max_new_tokens=limit if limit is not None else min(s.max_new_tokens, room),
            temperature=body.temperature if body.temperature is not None else s.temperature,
            top_k=body.top_k if body.top_k is not None else s.top_k,
            top_p=body.top_p if body.top_p is not None else s.top_p,
            seed=body.seed,
            stops=body.stops() + (tuple(stop_strings(self.usable.prompt_style)) if chat else ()),
            presence_penalty=body.presence_penalty or 0.0,
            frequency_penalty=body.frequency_penalty or 0.0,
            logit_bias=bias,
            logprobs=logprobs,
            prompt_logprobs=logprobs is not None and bool(getattr(body, "echo", False)),
        )

    async def generation(
        self,
        request: Request,
        body: GenerationRequest,
        prompts: list[list[int]],
        chat: bool,
        echoes: list[str] | None,
    ) -> Response:
        """Queue the prompts; answer with every choice at once, or stream them as server-sent events."""
        self.check_model(body.model)
        sampling = self.sampling(body, prompts, chat)
        job = Job(asyncio.get_running_loop(), prompts, sampling, n=body.choices(), stream=body.stream)
        self.batcher.submit(job)  # refused at once when the queue is full or the worker is dead
        prompt_count = sum(len(p) for p in prompts)
        shape = Shape(self.usable.name, chat, prompt_count, job.n, job.rows, echoes)
        events = job.results()
        try:
            async with cancelled_on_disconnect(request, job):
                first = await anext(events)  # admitted, and the first text (or a failure)
                if body.stream:
                    stream = shape.events(first, events, body.include_usage())
                    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
                    return StreamingResponse(stream, media_type="text/event-stream", headers=headers)
                finished = [e async for e in prepend(first, events) if isinstance(e, Finished)]
        except ClientGone:
            return Response(status_code=499)  # nobody reads it
        return JSONResponse(shape.whole(finished))

    async def classify(self, texts: list[str]) -> dict[str, Any]:
        """Each text's label and probability by label."""
        job = Job(asyncio.get_running_loop(), texts=texts)
        self.batcher.submit(job)
        async for event in job.results():
            if isinstance(event, torch.Tensor):
                return {"object": "list", "model": self.usable.name, "data": self.labelled(event)}
        raise RuntimeError("the job ended without a result")  # pragma: no cover

    def labelled(self, probs: torch.Tensor) -> list[dict[str, Any]]:
        """Per text: the most likely label and every label's probability."""
        labels = self.usable.labels
        return [
            {
                "index": i,
                "label": labels[int(row.argmax())],
                "probabilities": dict(zip(labels, row.tolist(), strict=True)),
            }
            for i, row in enumerate(probs)
        ]


async def prepend(first: Event, rest: AsyncIterator[Event]) -> AsyncIterator[Event]:
    yield first
    async for event in rest:
        yield event


@asynccontextmanager
async def cancelled_on_disconnect(request: Request, job: Job) -> AsyncIterator[None]:
    """While inside, a client that disconnects cancels `job` and wakes its reader with `ClientGone`.

    A streaming response watches for the disconnect itself once it starts (Starlette does), so the
    watch ends when the block does."""

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        job.cancelled = True
        job.events.put_nowait(ClientGone("the client disconnected"))

    task = asyncio.create_task(watch())
    try:
        yield
    finally:
        task.cancel()
