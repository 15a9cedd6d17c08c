"""How the next token is chosen: the nucleus against a hand computation, the bounds every caller checks,
top-p in `generate`; the slot cache against a plain forward pass."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gpt_finetune.model import GPT
from gpt_finetune.model.kv_cache import KVCache, SlotCache
from gpt_finetune.model.sampling import filter_logits, outside_nucleus, sampling_problems

INF = float("inf")


def test_the_nucleus_is_the_fewest_likely_tokens_reaching_top_p() -> None:
    probs = torch.tensor([[0.05, 0.40, 0.10, 0.30, 0.15], [0.96, 0.01, 0.01, 0.01, 0.01]])
    logits = probs.log()
    # Row 0 by hand, most likely first: 0.40, 0.30 (0.70), 0.15 (0.85 < 0.9), 0.10 (0.95 >= 0.9): keep 4.
    # Row 1: 0.96 >= 0.9 alone.
    dropped = outside_nucleus(logits, torch.tensor([0.9, 0.9]))
    assert dropped.tolist() == [[True, False, False, False, False], [False, True, True, True, True]]
    assert not outside_nucleus(logits, torch.tensor([1.0, 1.0])).any()  # p = 1 keeps every token
    assert outside_nucleus(logits, torch.tensor([0.3, 0.3])).sum(dim=1).tolist() == [4, 4]  # the top one


def test_filter_logits_applies_temperature_then_top_k_then_top_p() -> None:
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    hot = filter_logits(logits, torch.tensor([2.0]))
    assert hot.tolist() == [[2.0, 1.5, 1.0, 0.5, 0.0]]
    top2 = filter_logits(logits, torch.tensor([1.0]), top_ks=torch.tensor([2]))
    assert top2.tolist() == [[4.0, 3.0, -INF, -INF, -INF]]
    expected = (F.softmax(logits / 2.0, dim=-1).cumsum(-1) - F.softmax(logits / 2.0, dim=-1))[0] < 0.5
    nucleus = filter_logits(logits, torch.tensor([2.0]), top_ps=torch.tensor([0.5]))
    assert (nucleus[0] > -INF).tolist() == expected.tolist() == [True, True, False, False, False]


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"temperature": 1e-40}, "temperature=1e-40"),
        ({"temperature": 2.5}, "temperature=2.5"),
        ({"temperature": -1.0}, "temperature=-1.0"),
        ({"temperature": float("nan")}, "temperature=nan"),
        ({"temperature": 1.0, "top_k": 0}, "top_k=0"),
        ({"temperature": 1.0, "top_k": 10**30}, "top_k=1000000000000000000000000000000"),
        ({"temperature": 1.0, "top_p": 0.0}, "top_p=0.0"),
        ({"temperature": 1.0, "top_p": float("nan")}, "top_p=nan"),
        ({"temperature": 1.0, "seed": 2**63}, "seed=9223372036854775808"),
        ({"temperature": 1.0, "seed": -1}, "seed=-1"),
    ],
)
def test_values_that_would_break_decoding_are_named(settings: dict, named: str) -> None:
    [problem] = sampling_problems(vocab_size=50257, **settings)
    assert problem.startswith(named + ":")


def test_usable_values_have_no_problems() -> None:
    assert sampling_problems(0.0) == sampling_problems(0.01, 1, 1.0, 0, 50257) == []
    assert sampling_problems(2.0, 50257, 1e-6, 2**63 - 1, 50257) == []


def test_generate_samples_from_the_nucleus_only(tiny_model: GPT) -> None:
    prompt = [464, 3290, 318]
    with torch.no_grad():
        logits = tiny_model(torch.tensor([prompt]))[0, -1] * 30  # peaky: temperature 1/30
    kept = ~outside_nucleus(logits[None], torch.tensor([0.8]))[0]
    assert 1 < int(kept.sum()) < 1000

    def first_tokens(top_p: float | None) -> list[int]:
        rows = tiny_model.generate(
            [prompt] * 40, max_new_tokens=1, temperature=1 / 30, top_p=top_p, seed=list(range(40))
        )  # each row its own seed
        return [row[0] for row in rows]

    drawn = first_tokens(0.8)
    assert all(kept[t] for t in drawn) and len(set(drawn)) > 1
    assert not all(kept[t] for t in first_tokens(None))  # the same seeds without top_p reach the tail


def test_a_slot_cache_step_equals_a_plain_forward_pass(tiny_model: GPT) -> None:
    """Rows of different lengths in slots, one decoding step for all: each row's logits as alone."""
    config = tiny_model.config
    prompts = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]
    head_dim = config.emb_dim // config.n_heads
    slots = SlotCache(
        config.n_layers, 4, config.n_heads, head_dim, max_capacity=32, device=torch.device("cpu"),
        dtype=torch.float32,
    )  # fmt: skip
    with torch.no_grad():
        for slot, prompt in enumerate(prompts):
            cache = KVCache(
                config.n_layers, 1, config.n_heads, len(prompt), head_dim, device="cpu", dtype=torch.float32
            )  # type: ignore[arg-type]
            tiny_model.hidden_states(torch.tensor([prompt]), cache=cache)
            slots.reserve(len(prompt))
            slots.store(slot, cache, 0, len(prompt))
        slots.keys[:, 1, :, :6] = float("nan")  # a row of 6 that went NaN in slot 1, then left
        slots.values[:, 1, :, :6] = float("nan")
        slots.lengths[1] = 6
        slots.move(2, 1)  # row 2 (3 positions) takes its slot; the step reads to 6, positions 4-5 masked
        rows = [prompts[0], prompts[2]]
        positions, mask = slots.step(2)
        step = tiny_model(torch.tensor([[40], [41]]), position_ids=positions, attn_mask=mask, cache=slots)
        for i, (row, token) in enumerate(zip(rows, (40, 41), strict=True)):
            alone = tiny_model(torch.tensor([[*row, token]]))[0, -1]
            assert torch.allclose(step[i, -1], alone, atol=1e-5)
    assert slots.lengths[:2].tolist() == [6, 4]
