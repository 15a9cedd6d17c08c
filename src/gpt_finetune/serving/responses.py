"""OpenAI's response and chunk objects for one generation request: choices, log-probs, usage, events."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

from gpt_finetune.serving.api_types import error_body
from gpt_finetune.serving.jobs import Event, Finished, Piece, TokenLogprob
from gpt_finetune.tokenizer import gpt2_tokenizer


def token_text(token: int) -> str:
    """A token as text (a piece of a multi-byte character shows as U+FFFD, as in OpenAI's `token`)."""
    return gpt2_tokenizer().decode_single_token_bytes(token).decode("utf-8", errors="replace")


def token_bytes(token: int) -> list[int]:
    return list(gpt2_tokenizer().decode_single_token_bytes(token))


def chat_logprobs(entries: Sequence[TokenLogprob]) -> dict[str, Any]:
    """Chat's `logprobs` object: per token its text, log-prob, bytes and the most likely alternatives."""

    def item(token: int, logprob: float) -> dict[str, Any]:
        return {"token": token_text(token), "logprob": logprob, "bytes": token_bytes(token)}

    content = [
        item(e.token, e.logprob or 0.0) | {"top_logprobs": [item(t, lp) for t, lp in e.top]} for e in entries
    ]
    return {"content": content, "refusal": None}


def legacy_logprobs(entries: Sequence[TokenLogprob], offset: int = 0) -> dict[str, Any]:
    """Completions' `logprobs` object: tokens, token_logprobs, top_logprobs (the chosen token among
    them, as OpenAI does; None for a prompt's first token) and each token's text offset."""
    tokens = [token_text(e.token) for e in entries]
    offsets = []
    for text in tokens:
        offsets.append(offset)
        offset += len(text)
    top: list[dict[str, float] | None] = [
        None if e.logprob is None else {token_text(t): lp for t, lp in (*e.top, (e.token, e.logprob))}
        for e in entries
    ]
    return {
        "tokens": tokens,
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": top,
        "text_offset": offsets,
    }


class Shape:
    """The responses of one request: `chat` or completions; `rows` choices, `n` per prompt; `echoes`
    (each prompt's text, when echoed)."""

    def __init__(
        self, model: str, chat: bool, prompt_tokens: int, n: int, rows: int, echoes: list[str] | None
    ) -> None:
        self.model, self.chat, self.prompt_tokens, self.echoes = model, chat, prompt_tokens, echoes
        self.n, self.rows = n, rows
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.kind = "chat.completion" if chat else "text_completion"

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

    def echo(self, index: int) -> str:
        return self.echoes[index // self.n] if self.echoes is not None else ""

    def whole(self, finished: list[Finished]) -> dict[str, Any]:
        """The non-streaming response: one choice per row, in index order."""
        choices = [self.choice(done) for done in sorted(finished, key=lambda f: f.index)]
        usage = self.usage(sum(done.completion_tokens for done in finished))
        return self.envelope(self.kind, choices) | {"usage": usage}

    def choice(self, done: Finished) -> dict[str, Any]:
        base = {"index": done.index, "finish_reason": done.finish_reason}
        if self.chat:
            logprobs = None if done.logprobs is None else chat_logprobs(done.logprobs)
            return base | {"message": {"role": "assistant", "content": done.text}, "logprobs": logprobs}
        echo = self.echo(done.index)
        legacy = None
        if done.logprobs is not None:
            entries = (*(done.prompt_logprobs or ()), *done.logprobs)
            legacy = legacy_logprobs(entries)
        return base | {"text": echo + done.text, "logprobs": legacy}

    def chunk(self, index: int, text: str | None, logprobs: Sequence[TokenLogprob] = (), **extra: Any) -> str:
        """One server-sent event for choice `index`: `text` (none in a closing chunk), its tokens'
        log-probs when asked, `finish_reason` / `role` in `extra`."""
        finish_reason = extra.get("finish_reason")
        if self.chat:
            delta: dict[str, str] = {"role": "assistant"} if extra.get("role") else {}
            if text is not None:
                delta["content"] = text
            shown = chat_logprobs(logprobs) if logprobs else None
            choice = {"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": shown}
        else:
            shown = legacy_logprobs(logprobs) if logprobs else None
            choice = {"index": index, "text": text or "", "finish_reason": finish_reason, "logprobs": shown}
        return sse(self.envelope(f"{self.kind}.chunk" if self.chat else self.kind, [choice]))

    async def events(
        self, first: Event, rest: AsyncGenerator[Event, None], include_usage: bool
    ) -> AsyncIterator[str]:
        """Server-sent events: openings, the pieces as they come, each choice's finish reason, usage if
        asked, then `[DONE]`, always (a failure mid-stream is an error event before it)."""
        for index in range(self.rows if (self.chat or self.echoes is not None) else 0):
            yield self.chunk(index, "" if self.chat else self.echo(index), role=self.chat)
        tokens = 0
        try:
            event: Event | None = first
            while event is not None:
                if isinstance(event, Piece):
                    yield self.chunk(event.index, event.text, event.logprobs)
                elif isinstance(event, Finished):
                    tokens += event.completion_tokens
                    yield self.chunk(event.index, None, finish_reason=event.finish_reason)
                event = await anext(rest, None)
            if include_usage:
                kind = f"{self.kind}.chunk" if self.chat else self.kind
                yield sse(self.envelope(kind, []) | {"usage": self.usage(tokens)})
        except Exception as error:  # the model failed or the server stops: say so in the stream
            yield sse(error_body(f"generation failed: {error}", "server_error"))
        finally:
            await rest.aclose()  # a client that left mid-stream: cancels the job now, not at collection
        yield "data: [DONE]\n\n"


def sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"
