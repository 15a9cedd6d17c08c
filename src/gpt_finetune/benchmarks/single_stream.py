"""One stream (batch 1): our decoding beside transformers' and llama.cpp's on our own GGUF export.

Each row greedily continues the same prompts, one at a time, for exactly `tokens` new tokens (end-of-text
does not stop it), with the same number of CPU threads; the clock runs from the prompt to the last token.
Rows: ours in fp32 (`GPT.generate`), ours with bf16 weights (chat.py / serve.py `dtype=bf16`),
`transformers.GPT2LMHeadModel` (fp32, its KV cache, greedy), and llama.cpp (llama-cpp-python) on our GGUF
export in f32, f16 and q8_0, where `llama_cpp` imports. Each row says how many of its tokens
agree with ours in fp32 (the identical prefix of each answer, summed).
"""

from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from gpt_finetune.model import GPT
from gpt_finetune.serving.loading import UsableModel

Decode = Callable[[list[int], int], list[int]]  # (prompt, new tokens) -> the new tokens


@dataclass
class Stream:
    name: str
    seconds: float
    answers: list[list[int]]

    def tokens_per_s(self) -> float:
        return sum(len(a) for a in self.answers) / self.seconds


def timed(name: str, decode: Decode, prompts: list[list[int]], tokens: int) -> Stream:
    decode(prompts[0][:8], 2)  # warm-up: first-call allocations
    start = time.perf_counter()
    answers = [decode(prompt, tokens) for prompt in prompts]
    return Stream(name, time.perf_counter() - start, answers)


def ours(model: GPT) -> Decode:
    return lambda prompt, n: model.generate([prompt], max_new_tokens=n, eos_id=None)[0]


def transformers_decode(model: GPT, folder: Path) -> Decode:
    """`transformers.GPT2LMHeadModel` loaded from our saved weights, greedy with its own KV cache."""
    from transformers import GPT2LMHeadModel

    model.save_pretrained(folder)
    hf = GPT2LMHeadModel.from_pretrained(folder, attn_implementation="sdpa").eval()

    @torch.inference_mode()
    def decode(prompt: list[int], n: int) -> list[int]:
        out = hf(torch.tensor([prompt]), use_cache=True)
        new = []
        for _ in range(n):
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            new.append(int(token))
            out = hf(token, past_key_values=out.past_key_values, use_cache=True)
        return new

    return decode


def llama_cpp_decode(usable: UsableModel, path: Path, dtype: str, threads: int) -> Decode:
    """llama.cpp on our GGUF export of `usable` in `dtype`, greedy (argmax of its logits)."""
    import llama_cpp

    from gpt_finetune.export.gguf_file import write_gguf

    write_gguf(usable, path, dtype)  # type: ignore[arg-type]
    context = usable.gpt.config.context_length
    llm = llama_cpp.Llama(
        model_path=str(path), n_ctx=context, n_threads=threads, n_threads_batch=threads, verbose=False
    )

    def decode(prompt: list[int], n: int) -> list[int]:
        new: list[int] = []
        for token in llm.generate(prompt, temp=0.0, reset=True):  # temperature 0: llama.cpp's greedy sampler
            new.append(int(token))
            if len(new) == n:
                break
        return new

    return decode


def agreement(row: Stream, reference: Stream) -> str:
    """How many tokens of `row` equal the reference's before the first difference, of all."""
    same = 0
    for a, b in zip(row.answers, reference.answers, strict=True):
        same += next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), len(a))
    return f"{same}/{sum(len(a) for a in reference.answers)}"


def single_stream_rows(model: GPT, prompts: list[list[int]], tokens: int, threads: int) -> list[Stream]:
    """Every row of the table, measured one after another in this process."""
    rows = [timed("ours, fp32", ours(model), prompts, tokens)]
    rows.append(timed("ours, bf16 weights", ours(copy.deepcopy(model).to(torch.bfloat16)), prompts, tokens))
    with tempfile.TemporaryDirectory(prefix="single-stream-") as folder:
        rows.append(timed("transformers, fp32", transformers_decode(model, Path(folder)), prompts, tokens))
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            return rows
        usable = UsableModel("instruct", model, "alpaca", name="bench", source="random init")
        for dtype in ("f32", "f16", "q8_0"):
            decode = llama_cpp_decode(usable, Path(folder) / f"{dtype}.gguf", dtype, threads)
            rows.append(timed(f"llama.cpp, {dtype} GGUF", decode, prompts, tokens))
    return rows


def print_table(rows: list[Stream], prompts: int, tokens: int) -> None:
    print(f"\nOne stream: {prompts} prompts x {tokens} new tokens, greedy, batch 1")
    print("| decoder | tokens/s | x ours fp32 | tokens as ours fp32 |")
    print("|---|---:|---:|---:|")
    base = rows[0].tokens_per_s()
    for row in rows:
        speed = row.tokens_per_s()
        print(f"| {row.name} | {speed:.1f} | {speed / base:.2f} | {agreement(row, rows[0])} |")
    llama = next((r for r in rows if r.name.startswith("llama.cpp, f32")), None)
    if llama is not None:
        best = max((r for r in rows if r.name.startswith("ours")), key=Stream.tokens_per_s)
        print(
            f"ours fp32 / llama.cpp f32: {base / llama.tokens_per_s():.2f}; "
            f"fastest of ours ({best.name}) / llama.cpp f32: {best.tokens_per_s() / llama.tokens_per_s():.2f}"
        )
