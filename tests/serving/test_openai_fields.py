"""The OpenAI fields standard clients send, through the official `openai` client, each checked against a
hand computation: `n`, `top_p`, `logprobs` / `top_logprobs`, `echo`, `logit_bias`, penalties, lists of
prompts and token-id prompts; every stream ends with `data: [DONE]`; the tokenizer endpoints."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import jinja2
import pytest
import torch
import torch.nn.functional as F
from openai import OpenAI

from gpt_finetune.model import GPT, GPTConfig
from gpt_finetune.serving import rows
from gpt_finetune.serving.conversation import render_messages
from gpt_finetune.serving.loading import UsableModel
from gpt_finetune.tokenizer import END_OF_TEXT, gpt2_tokenizer

Serve = Callable[..., Any]  # the `serve` fixture
MESSAGES = [{"role": "user", "content": "Name three primary colors."}]
TIMEOUT = 120


def tiny(seed: int, name: str) -> UsableModel:
    torch.manual_seed(seed)
    gpt = GPT(GPTConfig.from_size("tiny", context_length=128, tie_embeddings=False)).eval()
    return UsableModel("instruct", gpt, "alpaca", name=name, source="random init")


def peaky() -> UsableModel:
    """Logits spread wide (std ~4): a nucleus of a few tokens holds 90 % and a long tail the rest."""
    model = tiny(2, "peaky")
    with torch.no_grad():
        model.gpt.lm_head.weight.mul_(25)
    return model


def eos_first() -> UsableModel:
    """A model whose greedy answer is end-of-text at once (its logit is exactly 100, the others ~0)."""
    model = tiny(3, "eos-first")
    with torch.no_grad():
        ln_f = model.gpt.transformer.ln_f
        ln_f.weight[0], ln_f.bias[0] = 0.0, 1.0  # hidden dimension 0 is always 1
        model.gpt.lm_head.weight[:, 0] = 0.0
        model.gpt.lm_head.weight[END_OF_TEXT] = 0.0
        model.gpt.lm_head.weight[END_OF_TEXT, 0] = 100.0
    return model


@pytest.fixture(scope="module")
def servers(serve: Serve) -> Iterator[dict[str, tuple[UsableModel, OpenAI, str]]]:
    """One server per model, all running for the module: {name: (model, client, url)}."""
    models = [tiny(1, "plain"), peaky(), eos_first()]
    with serve(models[0]) as (a, _), serve(models[1]) as (b, _), serve(models[2]) as (c, _):
        yield {
            m.name: (m, OpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0, timeout=TIMEOUT), url)
            for m, url in zip(models, (a, b, c), strict=True)
        }


def direct_logprobs(model: UsableModel, tokens: list[int]) -> torch.Tensor:
    """(T, V) log p(next token | tokens up to each position), one plain forward pass."""
    with torch.no_grad():
        return F.log_softmax(model.gpt(torch.tensor([tokens]))[0].float(), dim=-1)


def token_of(raw: list[int]) -> int:
    """The token id whose bytes are `raw` (GPT-2's vocabulary maps bytes to ids one to one)."""
    return gpt2_tokenizer().encode_single_token(bytes(raw))


def chat_prompt(model: UsableModel) -> list[int]:
    return gpt2_tokenizer().encode(render_messages(MESSAGES, model.prompt_style), disallowed_special=())


def test_n_choices_are_distinct_and_reproducible_with_a_seed(servers: dict[str, Any]) -> None:
    _, client, _ = servers["plain"]
    settings: dict[str, Any] = {"model": "plain", "messages": MESSAGES, "max_tokens": 8, "temperature": 1.0}
    three = client.chat.completions.create(n=3, seed=7, **settings)
    again = client.chat.completions.create(n=3, seed=7, **settings)
    texts = [c.message.content for c in three.choices]
    assert [c.index for c in three.choices] == [0, 1, 2] and len(set(texts)) == 3
    assert [c.message.content for c in again.choices] == texts
    # Choice j draws from seed + j: the same text as one choice asked with that seed.
    assert [
        client.chat.completions.create(seed=7 + j, **settings).choices[0].message.content for j in range(3)
    ] == texts
    assert three.usage is not None and three.usage.completion_tokens == 24


def nucleus(model: UsableModel, prompt: list[int], top_p: float) -> set[int]:
    """The nucleus by hand: the most likely tokens, in order, until their probability reaches `top_p`."""
    probs = direct_logprobs(model, prompt)[-1].double().exp()
    kept, total = set(), 0.0
    for p, token in zip(*probs.sort(descending=True), strict=True):
        kept.add(int(token))
        total += float(p)
        if total >= top_p:
            return kept
    return kept


def test_top_p_samples_only_from_the_nucleus(servers: dict[str, Any]) -> None:
    model, client, _ = servers["peaky"]
    kept = nucleus(model, chat_prompt(model), 0.9)
    assert 1 < len(kept) < 100

    def first_tokens(**extra: Any) -> list[int]:
        drawn = []
        for seed in range(8):
            done = client.chat.completions.create(
                model="peaky", messages=MESSAGES, max_tokens=1, temperature=1.0, n=8, seed=seed * 8,
                logprobs=True, **extra,
            )  # fmt: skip
            drawn += [token_of(c.logprobs.content[0].bytes) for c in done.choices]  # type: ignore[union-attr, arg-type]
        return drawn

    nucleus_draws = first_tokens(top_p=0.9)
    assert set(nucleus_draws) <= kept and len(set(nucleus_draws)) > 1
    assert not set(first_tokens()) <= kept  # the same seeds without top_p reach the tail


def test_logprobs_and_top_logprobs_equal_a_direct_forward_pass(servers: dict[str, Any]) -> None:
    model, client, _ = servers["plain"]
    prompt = chat_prompt(model)
    done = client.chat.completions.create(
        model="plain",
        messages=MESSAGES,
        max_tokens=6,
        logprobs=True,
        top_logprobs=5,  # type: ignore[arg-type]
    )
    content = done.choices[0].logprobs.content  # type: ignore[union-attr]
    tokens = [token_of(entry.bytes) for entry in content]  # type: ignore[arg-type]
    assert gpt2_tokenizer().decode(tokens) == done.choices[0].message.content
    expected = direct_logprobs(model, prompt + tokens)[len(prompt) - 1 :]
    for row, token, entry in zip(expected, tokens, content, strict=False):
        assert entry.logprob == pytest.approx(float(row[token]), abs=1e-4)
        best = torch.topk(row, 5)
        assert [token_of(t.bytes) for t in entry.top_logprobs] == best.indices.tolist()  # type: ignore[arg-type]
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx(best.values.tolist(), abs=1e-4)
        assert token == best.indices[0]  # greedy


def test_echo_returns_the_prompts_logprobs_first_none(servers: dict[str, Any]) -> None:
    model, client, _ = servers["plain"]
    text = "The cat sat on the mat"
    prompt = gpt2_tokenizer().encode(text)
    done = client.completions.create(model="plain", prompt=text, max_tokens=1, echo=True, logprobs=1)
    choice = done.choices[0]
    logprobs = choice.logprobs
    assert logprobs is not None and logprobs.token_logprobs is not None and logprobs.tokens is not None
    assert choice.text.startswith(text) and "".join(logprobs.tokens) == choice.text
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None  # type: ignore[index]
    expected = direct_logprobs(model, prompt)
    assert logprobs.token_logprobs[1 : len(prompt)] == pytest.approx(
        [float(expected[i - 1, t]) for i, t in enumerate(prompt) if i > 0], abs=1e-4
    )
    assert len(logprobs.token_logprobs) == len(prompt) + 1 and logprobs.text_offset[:2] == [0, 3]  # type: ignore[index]
    scored = client.completions.create(model="plain", prompt=prompt, max_tokens=0, echo=True, logprobs=0)
    assert scored.choices[0].logprobs.token_logprobs == logprobs.token_logprobs[:-1]  # type: ignore[union-attr]


def test_a_bias_against_end_of_text_runs_to_the_token_limit(servers: dict[str, Any]) -> None:
    _, client, _ = servers["eos-first"]
    plain = client.completions.create(model="eos-first", prompt="Hello", max_tokens=5)
    assert (plain.choices[0].finish_reason, plain.usage.completion_tokens) == ("stop", 1)  # type: ignore[union-attr]
    biased = client.completions.create(
        model="eos-first", prompt="Hello", max_tokens=5, logit_bias={str(END_OF_TEXT): -100}
    )
    assert (biased.choices[0].finish_reason, biased.usage.completion_tokens) == ("length", 5)  # type: ignore[union-attr]


def penalized_greedy(model: UsableModel, prompt: list[int], n: int, frequency: float, presence: float) -> str:
    """Greedy decoding with OpenAI's penalties on the generated tokens, a full forward pass per token."""
    tokens, counts = list(prompt), torch.zeros(model.gpt.config.vocab_size)
    for _ in range(n):
        with torch.no_grad():
            logits = model.gpt(torch.tensor([tokens]))[0, -1].float()
        token = int((logits - frequency * counts - presence * (counts > 0).float()).argmax())
        tokens.append(token)
        counts[token] += 1
    return gpt2_tokenizer().decode(tokens[len(prompt) :])


def test_penalties_match_a_hand_loop(servers: dict[str, Any]) -> None:
    model, client, _ = servers["plain"]
    prompt = gpt2_tokenizer().encode("Hello there")
    plain = client.completions.create(model="plain", prompt=prompt, max_tokens=12).choices[0].text
    penalized = client.completions.create(
        model="plain", prompt=prompt, max_tokens=12, frequency_penalty=1.5, presence_penalty=0.5
    )
    assert penalized.choices[0].text == penalized_greedy(model, prompt, 12, 1.5, 0.5) != plain


def test_lists_of_prompts_give_one_choice_per_prompt_in_order(servers: dict[str, Any]) -> None:
    model, client, _ = servers["plain"]
    tokenizer = gpt2_tokenizer()
    texts = ["Once upon a time", "The weather", "My favourite food is"]
    ids = [tokenizer.encode(t) for t in texts]
    alone = [
        tokenizer.decode([t for t in model.gpt.generate([p], max_new_tokens=5)[0] if t != END_OF_TEXT])
        for p in ids
    ]
    for prompt in (texts, ids):
        done = client.completions.create(model="plain", prompt=prompt, max_tokens=5, n=2)
        assert [c.index for c in done.choices] == list(range(6))
        assert [c.text for c in done.choices] == [a for a in alone for _ in range(2)]
        assert done.usage is not None and done.usage.prompt_tokens == sum(len(p) for p in ids)
    single = client.completions.create(model="plain", prompt=ids[1], max_tokens=5)
    assert [c.text for c in single.choices] == [alone[1]]


def sse_lines(url: str, path: str, body: dict[str, Any]) -> list[str]:
    with httpx.stream("POST", url + path, json=body | {"stream": True}, timeout=TIMEOUT) as answer:
        assert answer.status_code == 200
        return [line for line in answer.iter_lines() if line]


def test_every_stream_ends_with_done(servers: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, url = servers["plain"]
    chat = {"messages": MESSAGES, "max_tokens": 4, "n": 2, "stream_options": {"include_usage": True}}
    lines = sse_lines(url, "/v1/chat/completions", chat)
    assert lines[-1] == "data: [DONE]" and lines.count("data: [DONE]") == 1
    assert json.loads(lines[-2][6:])["usage"]["completion_tokens"] == 8
    lines = sse_lines(url, "/v1/completions", {"prompt": ["a", "b"], "max_tokens": 3, "echo": True})
    assert lines[-1] == "data: [DONE]"
    finished = [json.loads(x[6:])["choices"][0] for x in lines[:-1]]
    assert {c["index"] for c in finished if c["finish_reason"] == "length"} == {0, 1}
    assert [c["text"] for c in finished[:2]] == ["a", "b"]  # the echoes come first

    real_draw, draws = rows.draw, [0]

    def second_draw_fails(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        draws[0] += 1
        if draws[0] == 2:
            raise RuntimeError("injected")
        return real_draw(probs, generator)

    monkeypatch.setattr(rows, "draw", second_draw_fails)
    lines = sse_lines(url, "/v1/completions", {"prompt": "a", "max_tokens": 3, "temperature": 1.0})
    assert lines[-1] == "data: [DONE]" and "generation failed: injected" in lines[-2]
    assert len(lines) == 3  # the first token's text, the error, [DONE]


def test_tokenizer_endpoints_in_vllms_shapes(servers: dict[str, Any]) -> None:
    model, _, url = servers["plain"]
    info = httpx.get(f"{url}/tokenizer_info").json()
    assert (info["eos_token"], info["bos_token"], info["model_max_length"]) == ("<|endoftext|>",) * 2 + (128,)
    template = jinja2.Environment().from_string(info["chat_template"])
    conversation = [*MESSAGES, {"role": "assistant", "content": "Red."}, {"role": "user", "content": "More?"}]
    assert template.render(messages=conversation, add_generation_prompt=True) == render_messages(
        conversation, model.prompt_style
    )
    tokenizer = gpt2_tokenizer()
    text = "Hello <|endoftext|> world"
    tokens = httpx.post(f"{url}/tokenize", json={"prompt": text, "add_special_tokens": False}).json()
    assert tokens["tokens"] == tokenizer.encode(text, allowed_special={"<|endoftext|>"})
    assert END_OF_TEXT in tokens["tokens"] and tokens["count"] == len(tokens["tokens"])
    rendered = httpx.post(f"{url}/tokenize", json={"messages": MESSAGES}).json()["tokens"]
    assert rendered == chat_prompt(model)
    back = httpx.post(f"{url}/detokenize", json={"tokens": tokens["tokens"]}).json()
    assert back == {"prompt": text}
    bad = httpx.post(f"{url}/detokenize", json={"tokens": [1, 50257]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"
