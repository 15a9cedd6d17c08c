"""Batched KV-cache generation against the book's one-prompt, full-recompute loop."""

from __future__ import annotations

import pytest
import torch

from gpt_finetune.model import GPT, GPTConfig


def book_generate(model: GPT, prompt: list[int], max_new_tokens: int, eos_id: int | None) -> list[int]:
    """The book's reference: one prompt, whole context re-encoded each token, cropped to the window."""
    idx = torch.tensor([prompt])
    new: list[int] = []
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits = model(idx[:, -model.config.context_length :])[:, -1]
        token = int(logits.argmax(-1))
        new.append(token)
        if token == eos_id:
            break
        idx = torch.cat([idx, torch.tensor([[token]])], dim=1)
    return new


def random_prompts(n: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randint(0, 50257, (int(torch.randint(1, 20, (1,), generator=g)),), generator=g).tolist()
        for _ in range(n)
    ]


def test_batched_greedy_equals_one_at_a_time(tiny_model: GPT) -> None:
    prompts = random_prompts(6)
    batched = tiny_model.generate(prompts, max_new_tokens=15, eos_id=None)
    assert batched == [book_generate(tiny_model, p, 15, None) for p in prompts]


def test_batch_size_and_no_cache_give_the_same_tokens(tiny_model: GPT) -> None:
    prompts = random_prompts(5, seed=1)
    full = tiny_model.generate(prompts, max_new_tokens=10, eos_id=None)
    assert tiny_model.generate(prompts, max_new_tokens=10, eos_id=None, batch_size=2) == full
    assert tiny_model.generate(prompts, max_new_tokens=10, eos_id=None, use_cache=False) == full


def test_each_row_stops_at_its_own_end_of_text(tiny_model: GPT) -> None:
    prompts = random_prompts(4, seed=2)
    free = tiny_model.generate(prompts, max_new_tokens=12, eos_id=None)
    eos = free[0][4]  # a token row 0 emits at step 5: row 0 must stop there, others where they meet it
    stopped = tiny_model.generate(prompts, max_new_tokens=12, eos_id=eos)
    for row, out in zip(free, stopped, strict=True):
        expected = row[: row.index(eos) + 1] if eos in row else row
        assert out == expected
    assert len(stopped[0]) <= 5 and stopped[0][-1] == eos


def test_context_window_is_cropped_like_the_book() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_size("tiny", context_length=16)).eval()
    prompts = [random_prompts(1, seed=3)[0] + list(range(10)), [5, 6, 7], list(range(100, 130))]
    ours = model.generate(prompts, max_new_tokens=12, eos_id=None)
    assert ours == [book_generate(model, p, 12, None) for p in prompts]


def test_sampling_is_seeded_and_top_k_one_is_greedy(tiny_model: GPT) -> None:
    prompts = random_prompts(3, seed=4)
    a = tiny_model.generate(prompts, max_new_tokens=8, temperature=1.5, top_k=50, seed=7, eos_id=None)
    b = tiny_model.generate(prompts, max_new_tokens=8, temperature=1.5, top_k=50, seed=7, eos_id=None)
    c = tiny_model.generate(prompts, max_new_tokens=8, temperature=1.5, top_k=50, seed=8, eos_id=None)
    assert a == b and a != c
    greedy = tiny_model.generate(prompts, max_new_tokens=8, eos_id=None)
    assert (
        tiny_model.generate(prompts, max_new_tokens=8, temperature=1.0, top_k=1, seed=0, eos_id=None)
        == greedy
    )


def test_top_k_restricts_samples_to_the_k_most_likely(tiny_model: GPT) -> None:
    prompt = [[1, 2, 3]]
    with torch.no_grad():
        top = set(torch.topk(tiny_model(torch.tensor(prompt))[0, -1], 3).indices.tolist())
    firsts = {
        tiny_model.generate(prompt, max_new_tokens=1, temperature=5.0, top_k=3, seed=s, eos_id=None)[0][0]
        for s in range(30)
    }
    assert firsts <= top and len(firsts) > 1


def test_generation_keeps_training_mode_and_rejects_empty_prompts(tiny_model: GPT) -> None:
    tiny_model.train()
    tiny_model.generate([[1, 2]], max_new_tokens=2)
    assert tiny_model.training
    with pytest.raises(ValueError, match="at least one token"):
        tiny_model.generate([[1], []], max_new_tokens=2)


def test_per_row_settings_match_each_prompt_alone(tiny_model: GPT) -> None:
    prompts = random_prompts(4, seed=5)
    limits, temperatures, top_ks, seeds = (
        [3, 9, 0, 6],
        [0.0, 1.3, 0.0, 0.8],
        [None, 20, None, None],
        [None, 11, None, 12],
    )
    batched = tiny_model.generate(
        prompts, max_new_tokens=limits, temperature=temperatures, top_k=top_ks, seed=seeds, eos_id=None
    )
    alone = [
        tiny_model.generate([p], max_new_tokens=n, temperature=t, top_k=k, seed=s, eos_id=None)[0]
        for p, n, t, k, s in zip(prompts, limits, temperatures, top_ks, seeds, strict=True)
    ]
    assert batched == alone
    assert [len(row) for row in batched] == limits
    assert batched[0] == book_generate(tiny_model, prompts[0], 3, None)


def test_per_row_values_must_match_the_prompts(tiny_model: GPT) -> None:
    with pytest.raises(ValueError, match="temperature has 1 values for 2 prompts"):
        tiny_model.generate([[1], [2]], max_new_tokens=2, temperature=[0.5])
