"""llama.cpp runs our GGUF exports of a trained run as we do: the same greedy answers, and it stops at
`<|endoftext|>` by itself (the most common complaint about exported fine-tunes is a model that never stops).

f32 and f16 give the trained model's answers exactly. Q8_0 also rounds the activations inside llama.cpp's
matrix products, which can flip a near-tie: there one answer in six may differ (measured: 11 of 12 the same on
the quickstart run, also against our model with the Q8_0-rounded weights), and every answer still stops.

Needs llama-cpp-python: CI installs the wheel from ../shared/wheels/ into the test virtualenv; elsewhere the
test skips, saying so.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gpt_finetune.data.prompts import format_prompt
from gpt_finetune.export.gguf_file import write_gguf
from gpt_finetune.serving.loading import load_model
from gpt_finetune.tokenizer import gpt2_tokenizer

pytestmark = pytest.mark.slow
END_OF_TEXT = 50256
ANSWERS = 6


@pytest.mark.parametrize(("dtype", "differing"), [("f32", 0), ("f16", 0), ("q8_0", 1)])
def test_llama_cpp_gives_our_greedy_answers_and_stops_at_end_of_text(
    readme_quickstart: Path, tmp_path: Path, dtype: str, differing: int
) -> None:
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (CI installs it)")
    usable = load_model(str(readme_quickstart), device="cpu")
    path = tmp_path / "model.gguf"
    write_gguf(usable, path, dtype)  # type: ignore[arg-type]
    records = json.loads((readme_quickstart / "test_responses.json").read_text())
    tokenizer = gpt2_tokenizer()
    prompts = [tokenizer.encode(format_prompt(r, usable.prompt_style)) for r in records]
    ours = usable.gpt.generate(prompts, max_new_tokens=100)
    ended = [i for i, tokens in enumerate(ours) if tokens[-1:] == [END_OF_TEXT]][:ANSWERS]
    assert len(ended) == ANSWERS  # the trained quickstart ends its answers (README: 12 of 12)
    llm = llama_cpp.Llama(
        model_path=str(path),
        n_ctx=usable.gpt.config.context_length,
        n_threads=torch.get_num_threads(),
        verbose=False,
    )
    same = 0
    for i in ended:
        completion = llm.create_completion(
            prompts[i], max_tokens=-1, temperature=0.0, top_k=1, repeat_penalty=1.0
        )  # no token limit: only end-of-text (or the context's end) stops it
        choice = completion["choices"][0]
        assert choice["finish_reason"] == "stop", (dtype, i, choice)
        same += choice["text"] == tokenizer.decode(ours[i][:-1])
    assert same >= ANSWERS - differing, f"{dtype}: {same} of {ANSWERS} answers as ours"
