"""Generate a model's responses to instruction records, formatted with the style it was trained on."""

from __future__ import annotations

from gpt_finetune.data.instructions import Record
from gpt_finetune.data.prompts import format_prompt
from gpt_finetune.model import GPT
from gpt_finetune.model.generation import EOS_ID
from gpt_finetune.tokenizer import gpt2_tokenizer


def generate_responses(
    model: GPT,
    records: list[Record],
    style: str = "alpaca",
    *,
    max_new_tokens: int = 256,
    batch_size: int = 32,
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int | None = None,
) -> list[dict[str, object]]:
    """Each record plus `model_response` (text up to end-of-text) and `stopped` (whether it reached it)."""
    tokenizer = gpt2_tokenizer()
    prompts = [tokenizer.encode(format_prompt(r, style), disallowed_special=()) for r in records]
    room = model.config.context_length - max_new_tokens
    if room < 1:
        raise ValueError(
            f"max_new_tokens={max_new_tokens} leaves no room in a {model.config.context_length} context"
        )
    outputs = model.generate(
        [p[-room:] for p in prompts],
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        seed=seed,
        batch_size=batch_size,
    )
    results = []
    for record, tokens in zip(records, outputs, strict=True):
        stopped = bool(tokens) and tokens[-1] == EOS_ID
        text = tokenizer.decode(tokens[:-1] if stopped else tokens)
        results.append({**record, "model_response": text.strip(), "stopped": stopped})
    return results
