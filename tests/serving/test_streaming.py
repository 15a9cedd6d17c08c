"""Streamed generation: `on_token` sees every token as it is made, can stop rows, and TextStream decodes."""

from __future__ import annotations

import pytest
import torch

from gpt_finetune.model import GPT, GPTConfig
from gpt_finetune.serving.streaming import TextStream
from gpt_finetune.tokenizer import END_OF_TEXT, gpt2_tokenizer


@pytest.fixture
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig.from_size("tiny")).eval()


PROMPTS = [[464, 3290, 318], [40, 588], [15496, 11, 995, 0]]


@pytest.mark.parametrize("batch_size", [None, 1, 2])
def test_on_token_sees_exactly_the_generated_tokens(model: GPT, batch_size: int | None) -> None:
    seen: dict[int, list[int]] = {}

    def on_token(new: dict[int, int]) -> None:
        for index, token in new.items():
            seen.setdefault(index, []).append(token)

    plain = model.generate(PROMPTS, max_new_tokens=6, eos_id=None)
    streamed = model.generate(
        PROMPTS, max_new_tokens=6, eos_id=None, on_token=on_token, batch_size=batch_size
    )
    assert streamed == plain
    assert seen == dict(enumerate(plain))


def test_a_stopped_row_ends_there_and_the_others_are_unchanged(model: GPT) -> None:
    plain = model.generate(PROMPTS, max_new_tokens=6, eos_id=None)
    counts: dict[int, int] = {}

    def stop_row_one_after_two(new: dict[int, int]) -> list[int]:
        for index in new:
            counts[index] = counts.get(index, 0) + 1
        return [1] if counts.get(1) == 2 else []

    streamed = model.generate(PROMPTS, max_new_tokens=6, eos_id=None, on_token=stop_row_one_after_two)
    assert streamed[1] == plain[1][:2]
    assert streamed[0] == plain[0] and streamed[2] == plain[2]
    assert counts[1] == 2  # a stopped row is not reported again


def test_rows_that_reach_end_of_text_are_reported_once_with_it(model: GPT) -> None:
    eos_after_first = {}

    def on_token(new: dict[int, int]) -> None:
        for index, token in new.items():
            assert index not in eos_after_first, "a finished row was reported again"
            if token == END_OF_TEXT:
                eos_after_first[index] = True

    with torch.no_grad():  # make end-of-text the only likely token: every row stops at step 1
        model.lm_head.bias = None
        model.lm_head.weight.zero_()
        model.lm_head.weight[END_OF_TEXT] = 1.0
        model.transformer.ln_f.bias.fill_(1.0)
    out = model.generate(PROMPTS, max_new_tokens=5, on_token=on_token)
    assert out == [[END_OF_TEXT]] * 3 and len(eos_after_first) == 3


def test_text_stream_whole_characters_and_stop_strings() -> None:
    tokenizer = gpt2_tokenizer()
    ids = tokenizer.encode("héllo wörld 🙂 then ### more")
    stream = TextStream(stops=["###"])
    pieces = [stream.feed(t) for t in ids]
    assert all("\ufffd" not in p for p in pieces)  # never half a character
    assert "".join(pieces) + stream.finish() == "héllo wörld 🙂 then "
    assert stream.done and stream.stopped_by == "stop"


def test_text_stream_holds_a_possible_stop_then_releases_it() -> None:
    tokenizer = gpt2_tokenizer()
    stream = TextStream(stops=["##!"])
    out = "".join(stream.feed(t) for t in tokenizer.encode("a ## b"))
    assert out + stream.finish() == "a ## b" and stream.stopped_by == "length"


def test_text_stream_ends_at_end_of_text() -> None:
    stream = TextStream()
    tokens = [*gpt2_tokenizer().encode("done"), END_OF_TEXT, *gpt2_tokenizer().encode(" after")]
    text = "".join(stream.feed(t) for t in tokens)
    assert text == "done" and stream.stopped_by == "stop"
