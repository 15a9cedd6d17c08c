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
    (CHAT, chat(stream="yes"), 400, "stream"),
    (CHAT, chat(model="gpt-4o"), 404, "not served here"),
    (COMPLETIONS, json.dumps({"prompt": ""}).encode(), 400, "empty"),
    (COMPLETIONS, json.dumps({"prompt": []}).encode(), 400, "prompt list is empty"),
    (COMPLETIONS, json.dumps({"prompt": ["a", ""]}).encode(), 400, "empty"),
    (COMPLETIONS, json.dumps({"prompt": "a", "max_tokens": 0}).encode(), 400, "needs echo=true"),
    (COMPLETIONS, json.dumps({"prompt": 7}).encode(), 400, "prompt"),
    (COMPLETIONS, b'{"prompt": "' + b"x" * 5000 + b'"}', 413, "limit"),
    ("/v1/classify", json.dumps({"input": "hi"}).encode(), 400, "instruction model"),
    ("/v1/nothing", b"{}", 404, "Not Found"),
]


OUT_OF_RANGE = [  # (endpoint, field, value): every value a client can send is bounded
    (CHAT, "temperature", 1e-40),  # denormal: NaN probabilities
    (CHAT, "temperature", 2.5),
    (CHAT, "temperature", -1),
    (CHAT, "top_k", 0),
    (CHAT, "top_k", 10**30),
    (CHAT, "top_k", 50258),  # past the vocabulary
    (CHAT, "top_p", 0),
    (CHAT, "top_p", 1.5),
    (CHAT, "seed", -1),
    (CHAT, "seed", 2**63),
    (CHAT, "seed", 2**64),
    (CHAT, "n", 0),
    (CHAT, "n", 9),
    (CHAT, "stop", ["a", "b", "c", "d", "e"]),
    (CHAT, "stop", ["x" * 65]),
    (CHAT, "presence_penalty", 2.5),
    (CHAT, "frequency_penalty", -3),
    (CHAT, "logit_bias", {"50257": 1}),  # not a token id of the vocabulary
    (CHAT, "logit_bias", {"eos": 1}),
    (CHAT, "logit_bias", {"50256": -101}),
    (CHAT, "logit_bias", {str(i): 1 for i in range(301)}),
    (CHAT, "top_logprobs", 21),
    (CHAT, "top_logprobs", 2),  # without logprobs=true
    (CHAT, "max_completion_tokens", 0),
    (CHAT, "response_format", {"type": "json_object"}),
    (CHAT, "tools", [{"type": "function", "function": {"name": "f"}}]),
    (CHAT, "tool_choice", "required"),
    (CHAT, "functions", [{"name": "f"}]),
    (CHAT, "audio", {"voice": "alloy", "format": "wav"}),
    (COMPLETIONS, "logprobs", 21),
    (COMPLETIONS, "logprobs", -1),
    (COMPLETIONS, "best_of", 2),
    (COMPLETIONS, "suffix", "and then"),
    (COMPLETIONS, "prompt", [1, 50257]),  # a token id past the vocabulary
    (COMPLETIONS, "prompt", [[1], [-1]]),
    (COMPLETIONS, "n", 64),  # 8 prompts x n=8 = 64 rows is the most; n alone is bounded by 8
    (COMPLETIONS, "max_tokens", -1),
]


@pytest.mark.parametrize(("path", "field", "value"), OUT_OF_RANGE)
def test_each_out_of_range_value_is_a_400_naming_its_field(
    server: str, path: str, field: str, value: Any
) -> None:
    base = dict(json.loads(chat())) if path == CHAT else {"prompt": "Hi", "max_tokens": 2}
    answer = httpx.post(server + path, json=base | {field: value}, timeout=60)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"] == field and field in error["message"], error


def test_a_refused_field_with_its_harmless_value_is_accepted(server: str) -> None:
    harmless = {"response_format": {"type": "text"}, "tool_choice": "none", "tools": [], "user": "u1"}
    assert httpx.post(server + CHAT, json=json.loads(chat()) | harmless, timeout=60).status_code == 200
    plain = {"prompt": "Hi", "max_tokens": 2, "best_of": 1, "suffix": "", "metadata": {"a": "b"}}
    assert httpx.post(server + COMPLETIONS, json=plain, timeout=60).status_code == 200


@pytest.fixture(scope="module")
def server(serve: Serve, random_model: UsableModel) -> Iterator[str]:
    with serve(random_model, max_body_bytes=4000) as (url, _):
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
    chunked = httpx.post(server + CHAT, content=iter([b"{", b" " * 5000, b"}"]))  # no Content-Length
    assert chunked.status_code == 413 and "limit is 4000" in chunked.json()["error"]["message"]


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
