"""Bad requests get a 4xx in OpenAI's error shape and leave the server up; the API key; classification."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import AuthenticationError, OpenAI

from gpt_finetune.serving.loading import UsableModel, load_model

Serve = Callable[..., Any]  # the `serve` fixture
GOOD = {"model": "tiny-random", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 3}
CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"


def chat(**changes: Any) -> bytes:
    return json.dumps(GOOD | changes).encode()


BAD_REQUESTS = [  # (path, body, status, a word of the message)
    (CHAT, b"{not json", 400, "not valid JSON"),
    (CHAT, b"[1, 2]", 400, "dictionary"),
    (CHAT, b"", 400, "required"),
    (CHAT, chat(messages=[]), 400, "messages is empty"),
    (CHAT, chat(messages="hello"), 400, "messages"),
    (CHAT, chat(messages=[{"role": "wizard", "content": "hi"}]), 400, "role='wizard'"),
    (CHAT, chat(messages=[{"role": "user"}]), 400, "content"),
    (CHAT, chat(messages=[{"role": "user", "content": 5}]), 400, "content"),
    (CHAT, chat(messages=[{"role": "user", "content": "  "}]), 400, "empty"),
    (CHAT, chat(messages=[{"role": "assistant", "content": "hi"}]), 400, "expected 'user'"),
    (CHAT, chat(max_tokens="10"), 400, "max_tokens"),
    (CHAT, chat(max_tokens=0), 400, "max_tokens"),
    (CHAT, chat(max_tokens=10_000), 400, "exceeds the model's context"),
    (CHAT, chat(messages=[{"role": "user", "content": "word " * 300}]), 400, "context"),
    (CHAT, chat(temperature="hot"), 400, "temperature"),
    (CHAT, chat(temperature=-1), 400, "temperature"),
    (CHAT, chat(top_k=0), 400, "top_k"),
    (CHAT, chat(stop=5), 400, "stop"),
    (CHAT, chat(stop=["a", "b", "c", "d", "e"]), 400, "at most 4"),
    (CHAT, chat(n=2), 400, "n=2 is not supported"),
    (CHAT, chat(top_p=0.5), 400, "top_p"),
    (CHAT, chat(stream="yes"), 400, "stream"),
    (CHAT, chat(model="gpt-4o"), 404, "not served here"),
    (COMPLETIONS, json.dumps({"prompt": ""}).encode(), 400, "empty"),
    (COMPLETIONS, json.dumps({"prompt": ["a", "b"]}).encode(), 400, "one prompt"),
    (COMPLETIONS, json.dumps({"prompt": 7}).encode(), 400, "prompt"),
    (COMPLETIONS, b'{"prompt": "' + b"x" * 3000 + b'"}', 413, "limit"),
    ("/v1/classify", json.dumps({"input": "hi"}).encode(), 400, "instruction model"),
    ("/v1/nothing", b"{}", 404, "Not Found"),
]


@pytest.fixture(scope="module")
def server(serve: Serve, random_model: UsableModel) -> Iterator[str]:
    with serve(random_model, max_body_bytes=2000) as (url, _):
        yield url


@pytest.mark.parametrize(("path", "body", "status", "word"), BAD_REQUESTS)
def test_bad_requests_get_a_4xx_in_openai_shape(
    server: str, path: str, body: bytes, status: int, word: str
) -> None:
    answer = httpx.post(server + path, content=body, headers={"content-type": "application/json"}, timeout=60)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert word in error["message"]
    after = httpx.post(server + CHAT, json=GOOD, timeout=60)  # the server is still up and answers
    assert after.status_code == 200 and after.json()["usage"]["completion_tokens"] == 3


def test_wrong_method_and_chunked_oversized_bodies(server: str) -> None:
    assert httpx.get(server + CHAT).status_code == 405
    chunked = httpx.post(server + CHAT, content=iter([b"{", b" " * 3000, b"}"]))  # no Content-Length
    assert chunked.status_code == 413 and "limit is 2000" in chunked.json()["error"]["message"]


def test_api_key_is_required_when_set(serve: Serve, random_model: UsableModel) -> None:
    with serve(random_model, api_key="s3cret") as (url, _):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            answer = httpx.post(url + CHAT, json=GOOD, headers=headers)
            assert answer.status_code == 401
            assert answer.json()["error"]["code"] == "invalid_api_key"
        with pytest.raises(AuthenticationError):
            OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
        client = OpenAI(base_url=f"{url}/v1", api_key="s3cret", max_retries=0)
        assert [m.id for m in client.models.list()] == ["tiny-random"]
        done = client.chat.completions.create(
            model="tiny-random", messages=[{"role": "user", "content": "Hi"}]
        )
        assert done.choices[0].message.role == "assistant"
        assert httpx.get(url + "/").status_code == 200  # the page itself is public; its requests send the key


@pytest.fixture(scope="module")
def classifier_model(classify_run: Path) -> UsableModel:
    return load_model(str(classify_run), device="cpu")


def test_classify_gives_predict_proba_by_label(serve: Serve, classifier_model: UsableModel) -> None:
    texts = ["WINNER! Claim your free prize now, text WIN to 80082", "See you at lunch tomorrow?", "ok"]
    assert classifier_model.classifier is not None
    expected = classifier_model.classifier.predict_proba(texts).tolist()
    expected_single = classifier_model.classifier.predict_proba(texts[1:2]).tolist()[0]
    labels = classifier_model.labels
    with serve(classifier_model) as (url, _):
        data = httpx.post(f"{url}/v1/classify", json={"input": texts}, timeout=60).json()["data"]
        single = httpx.post(f"{url}/v1/classify", json={"input": texts[1]}, timeout=60).json()["data"]
        wrong = httpx.post(url + CHAT, json=GOOD | {"model": None}, timeout=60)
        empty = httpx.post(f"{url}/v1/classify", json={"input": []}, timeout=60)
    assert [[row["probabilities"][label] for label in labels] for row in data] == expected
    assert [row["label"] for row in data] == [labels[max(range(len(p)), key=p.__getitem__)] for p in expected]
    assert [row["probabilities"][label] for label in labels for row in single] == expected_single
    assert wrong.status_code == 400 and "classification model" in wrong.json()["error"]["message"]
    assert empty.status_code == 400
