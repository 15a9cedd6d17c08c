"""The official `openai` client against the server: models, completions, chat, streaming; greedy parity."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from openai import BadRequestError, NotFoundError, OpenAI

from gpt_finetune.serving.conversation import render_messages
from gpt_finetune.serving.loading import UsableModel
from gpt_finetune.tokenizer import END_OF_TEXT, gpt2_tokenizer

Serve = Callable[..., Any]  # the `serve` fixture
MESSAGES = [{"role": "user", "content": "Name three primary colors."}]


def greedy_text(model: UsableModel, prompt: str, max_new_tokens: int) -> tuple[str, int]:
    """`GPT.generate`'s greedy continuation of `prompt` alone, decoded, and how many tokens it took."""
    tokenizer = gpt2_tokenizer()
    tokens = model.gpt.generate(
        [tokenizer.encode(prompt, disallowed_special=())], max_new_tokens=max_new_tokens
    )[0]
    return tokenizer.decode([t for t in tokens if t != END_OF_TEXT]), len(tokens)


@pytest.fixture(scope="module")
def server(serve: Serve, instruct_model: UsableModel) -> Iterator[tuple[str, FastAPI]]:
    with serve(instruct_model, max_new_tokens=24) as running:
        yield running


@pytest.fixture
def client(server: tuple[str, FastAPI]) -> OpenAI:
    return OpenAI(base_url=f"{server[0]}/v1", api_key="unused", max_retries=0, timeout=120)


def test_models_list_names_the_run(client: OpenAI, instruct_model: UsableModel) -> None:
    assert [m.id for m in client.models.list()] == [instruct_model.name]
    assert client.models.retrieve(instruct_model.name).id == instruct_model.name
    with pytest.raises(NotFoundError, match="not served here"):
        client.models.retrieve("gpt-4o")


def test_completion_is_greedy_generate(client: OpenAI, instruct_model: UsableModel) -> None:
    prompt = "Below is an instruction. Write a response.\n\n### Instruction:\nSay hello.\n\n### Response:\n"
    expected, n_tokens = greedy_text(instruct_model, prompt, 10)
    done = client.completions.create(model=instruct_model.name, prompt=prompt, max_tokens=10, temperature=0)
    assert done.choices[0].text == expected
    assert done.choices[0].finish_reason == ("stop" if n_tokens < 10 else "length")
    assert done.usage is not None and done.usage.completion_tokens == n_tokens
    assert done.usage.prompt_tokens == len(gpt2_tokenizer().encode(prompt))


def test_chat_renders_the_run_prompt_style(client: OpenAI, instruct_model: UsableModel) -> None:
    expected, n_tokens = greedy_text(
        instruct_model, render_messages(MESSAGES, instruct_model.prompt_style), 24
    )
    done = client.chat.completions.create(model=instruct_model.name, messages=MESSAGES)  # type: ignore[arg-type]
    assert done.choices[0].message.content == expected
    assert done.choices[0].message.role == "assistant"
    assert done.usage is not None and done.usage.completion_tokens == n_tokens


def test_streaming_chat_gives_the_same_text_in_pieces(client: OpenAI, instruct_model: UsableModel) -> None:
    expected, n_tokens = greedy_text(
        instruct_model, render_messages(MESSAGES, instruct_model.prompt_style), 24
    )
    chunks = list(
        client.chat.completions.create(
            model=instruct_model.name,
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(pieces) == expected
    assert chunks[0].choices[0].delta.role == "assistant"
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert reasons[-1] == ("stop" if n_tokens < 24 else "length") and set(reasons[:-1]) == {None}
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == n_tokens


def test_streaming_completion_and_stop_strings(
    client: OpenAI, random_model: UsableModel, serve: Serve
) -> None:
    with serve(random_model) as (url, _):
        random_client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
        full, _ = greedy_text(random_model, "Once upon a time", 20)
        stop = full[len(full) // 2 : len(full) // 2 + 3]
        kept = full[: full.index(stop)]
        stream = random_client.completions.create(
            model="tiny-random", prompt="Once upon a time", max_tokens=20, stop=[stop], stream=True
        )
        chunks = list(stream)
        assert "".join(c.choices[0].text for c in chunks) == kept
        assert chunks[-1].choices[0].finish_reason == "stop"
        whole = random_client.completions.create(
            model="tiny-random", prompt="Once upon a time", max_tokens=20
        )
        assert whole.choices[0].text == full and whole.choices[0].finish_reason == "length"


def test_seeded_sampling_is_reproducible(client: OpenAI, instruct_model: UsableModel) -> None:
    settings = {"max_tokens": 12, "temperature": 1.0, "extra_body": {"top_k": 40}}
    a = client.chat.completions.create(model=instruct_model.name, messages=MESSAGES, seed=3, **settings)  # type: ignore[arg-type]
    b = client.chat.completions.create(model=instruct_model.name, messages=MESSAGES, seed=3, **settings)  # type: ignore[arg-type]
    assert a.choices[0].message.content == b.choices[0].message.content


def test_client_errors_are_raised_as_openai_errors(client: OpenAI, instruct_model: UsableModel) -> None:
    with pytest.raises(BadRequestError, match="tools: not supported by this server"):
        tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
        client.chat.completions.create(model=instruct_model.name, messages=MESSAGES, tools=tools)  # type: ignore[arg-type]
    with pytest.raises(BadRequestError, match="exceeds the model's context"):
        client.completions.create(model=instruct_model.name, prompt="hi", max_tokens=100_000)
    with pytest.raises(NotFoundError, match="not served here"):
        client.completions.create(model="gpt-4o", prompt="hi")
