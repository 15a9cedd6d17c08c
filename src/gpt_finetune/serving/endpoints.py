"""The OpenAI-compatible endpoints: models, completions, chat completions (JSON or server-sent events),
and classification. Each request becomes a batcher job; its answer is built from the job's events."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import torch
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response, StreamingResponse

from gpt_finetune.serving.api_types import (
    ApiError,
    ChatRequest,
    ClassifyRequest,
    CompletionRequest,
    GenerationRequest,
    error_body,
)
from gpt_finetune.serving.batching import Batcher, Finished, Job, Sampling
from gpt_finetune.serving.conversation import prompt_tokens
from gpt_finetune.serving.loading import UsableModel
from gpt_finetune.tokenizer import gpt2_tokenizer

CREATED = int(time.time())


@dataclass(frozen=True)
class ServerSettings:
    """What `serve.yaml` sets besides the model: batching, limits, the key, request defaults."""

    max_batch_size: int = 16
    batch_wait_ms: float = 0.0  # serve.yaml's default is 50; 0 here keeps tests and benchmarks explicit
    max_body_bytes: int = 1_000_000
    api_key: str | None = None
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_k: int | None = None


def add_endpoints(
    app: FastAPI, usable: UsableModel, batcher: Batcher, settings: ServerSettings, authorized: Any
) -> None:
    """Register `/v1/...` on `app`, each behind the `authorized` dependency."""
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
    async def completions(body: CompletionRequest) -> Response:
        api.require("instruct")
        return await api.generation(body, body.text(), chat=False)

    @app.post("/v1/chat/completions", **guarded)
    async def chat_completions(body: ChatRequest) -> Response:
        api.require("instruct")
        prompt = prompt_tokens([m.as_dict() for m in body.messages], usable.prompt_style)
        return await api.generation(body, prompt, chat=True)

    @app.post("/v1/classify", **guarded)
    async def classify(body: ClassifyRequest) -> dict[str, Any]:
        api.require("classify")
        api.check_model(body.model)
        return await api.classify(body.texts())


class Api:
    """What the endpoints share: the model's facts, request checks, jobs and response shapes."""

    def __init__(self, usable: UsableModel, batcher: Batcher, settings: ServerSettings) -> None:
        self.usable, self.batcher, self.settings = usable, batcher, settings
        self.context = usable.gpt.config.context_length
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

    def sampling(self, body: GenerationRequest, prompt_tokens: int) -> Sampling:
        """The request's decoding settings (server defaults where unset), checked against the context."""
        room = self.context - prompt_tokens
        if room < 1:
            raise ApiError(
                400,
                f"the prompt is {prompt_tokens} tokens; the model's context is {self.context} tokens "
                "and needs room for at least one new token; shorten the prompt",
                param="messages" if isinstance(body, ChatRequest) else "prompt",
                code="context_length_exceeded",
            )
        limit = body.token_limit()
        if limit is not None and limit > room:
            raise ApiError(
                400,
                f"prompt ({prompt_tokens} tokens) + max_tokens ({limit}) exceeds the model's context of "
                f"{self.context} tokens; ask for at most {room} tokens or shorten the prompt",
                param="max_tokens",
                code="context_length_exceeded",
            )
        return Sampling(
            max_new_tokens=limit if limit is not None else min(self.settings.max_new_tokens, room),
            temperature=body.temperature if body.temperature is not None else self.settings.temperature,
            top_k=body.top_k if body.top_k is not None else self.settings.top_k,
            seed=body.seed,
            stops=body.stops(),
        )

    async def generation(self, body: GenerationRequest, prompt: str | list[int], chat: bool) -> Response:
        """Queue the prompt (text, or a chat's tokens); answer with the whole text, or stream it as
        server-sent events."""
        self.check_model(body.model)
        tokens = self.tokenizer.encode(prompt, disallowed_special=()) if isinstance(prompt, str) else prompt
        if not tokens:
            raise ApiError(400, "the prompt is empty; send some text", param="prompt")
        job = Job(asyncio.get_running_loop(), tokens, self.sampling(body, len(tokens)), stream=body.stream)
        self.batcher.submit(job)
        shape = Shape(self.usable.name, chat, len(tokens))
        if body.stream:
            events = shape.events(job, body.include_usage())
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            return StreamingResponse(events, media_type="text/event-stream", headers=headers)
        async for event in job.results():
            if isinstance(event, Finished):
                return JSONResponse(shape.whole(event))
        raise RuntimeError("the job ended without a result")  # pragma: no cover - results() ends on one

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


class Shape:
    """OpenAI's response and chunk objects for one generation request (completion or chat)."""

    def __init__(self, model: str, chat: bool, prompt_tokens: int) -> None:
        self.model, self.chat, self.prompt_tokens = model, chat, prompt_tokens
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())

    def usage(self, completion_tokens: int) -> dict[str, int]:
        total = self.prompt_tokens + completion_tokens
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": total,
        }

    def envelope(self, kind: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }

    def whole(self, done: Finished) -> dict[str, Any]:
        """The non-streaming response."""
        if self.chat:
            message = {"role": "assistant", "content": done.text}
            choice = {"index": 0, "message": message, "finish_reason": done.finish_reason, "logprobs": None}
            response = self.envelope("chat.completion", [choice])
        else:
            choice = {"index": 0, "text": done.text, "finish_reason": done.finish_reason, "logprobs": None}
            response = self.envelope("text_completion", [choice])
        return response | {"usage": self.usage(done.completion_tokens)}

    def chunk(self, text: str | None, finish_reason: str | None = None, role: bool = False) -> dict[str, Any]:
        """One streamed piece: `text` (none in the closing chunk, which carries `finish_reason`)."""
        if self.chat:
            delta: dict[str, str] = {"role": "assistant"} if role else {}
            if text is not None:
                delta["content"] = text
            choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
            return self.envelope("chat.completion.chunk", [choice])
        choice = {"index": 0, "text": text or "", "finish_reason": finish_reason, "logprobs": None}
        return self.envelope("text_completion", [choice])

    async def events(self, job: Job, include_usage: bool) -> AsyncIterator[str]:
        """Server-sent events: the pieces as they come, the finish reason, usage if asked, `[DONE]`."""
        if self.chat:
            yield sse(self.chunk("", role=True))
        try:
            async for event in job.results():
                if isinstance(event, str):
                    yield sse(self.chunk(event))
                elif isinstance(event, Finished):
                    yield sse(self.chunk(None, event.finish_reason))
                    if include_usage:
                        kind = "chat.completion.chunk" if self.chat else "text_completion"
                        yield sse(self.envelope(kind, []) | {"usage": self.usage(event.completion_tokens)})
        except Exception as error:  # the model failed or the server stops: say so in the stream
            yield sse(error_body(f"generation failed: {error}", "server_error"))
        yield "data: [DONE]\n\n"


def sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"
