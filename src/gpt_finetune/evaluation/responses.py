"""Generate a model's responses to instruction records (or conversations), formatted with the style it was
trained on."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar
from tqdm import tqdm

from gpt_finetune.data.conversation_prompts import prompt_tokens
from gpt_finetune.data.instructions import Record
from gpt_finetune.data.prompts import format_prompt
from gpt_finetune.model import GPT
from gpt_finetune.tokenizer import END_OF_TEXT, gpt2_tokenizer


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
    progress: bool = False,
    trainer: L.Trainer | None = None,
) -> list[dict[str, object]]:
    """Each record plus `model_response` (text up to end-of-text) and `stopped` (whether it reached it);
    a record with `messages` (a conversation's turns before its last answer) answers them.

    `progress` shows a bar of the records done: a row in the `trainer`'s live rich progress bar where it
    has one (a second live display cannot run beside it), else a tqdm bar on stderr.
    """
    tokenizer = gpt2_tokenizer()
    prompts = [record_prompt(r, style) for r in records]
    room = model.config.context_length - max_new_tokens
    if room < 1:
        raise ValueError(
            f"max_new_tokens={max_new_tokens} leaves no room in a {model.config.context_length} context"
        )
    with progress_bar(len(records), progress, trainer) as advance:
        outputs = model.generate(
            [p[-room:] for p in prompts],
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            seed=seed,
            batch_size=batch_size,
            on_batch=advance,
        )
    results = []
    for record, tokens in zip(records, outputs, strict=True):
        stopped = bool(tokens) and tokens[-1] == END_OF_TEXT
        text = tokenizer.decode(tokens[:-1] if stopped else tokens)
        results.append({**record, "model_response": text.strip(), "stopped": stopped})
    return results


def record_prompt(record: Mapping[str, Any], style: str) -> list[int]:
    """The tokens a model answers for `record`: its conversation (`messages`), else its instruction."""
    if "messages" in record:
        return prompt_tokens(record["messages"], style)
    return gpt2_tokenizer().encode(format_prompt(record, style), disallowed_special=())


@contextmanager
def progress_bar(
    total: int, shown: bool, trainer: L.Trainer | None
) -> Iterator[Callable[[int], None] | None]:
    """`advance(n)` for `total` responses: a row in the trainer's live rich bar, a tqdm bar, or None."""
    if not shown:
        yield None
        return
    bar = trainer.progress_bar_callback if trainer is not None else None
    live = bar.progress if isinstance(bar, RichProgressBar) and bar.is_enabled else None
    if live is not None and live.live.is_started:
        task = live.add_task("Responses", total=total)
        try:
            yield lambda n: live.update(task, advance=n, refresh=True)
        finally:
            live.update(task, visible=False)  # the bar's rows are Lightning's again
        return
    # mininterval=0: every batch shows (a batch takes seconds; tqdm would skip updates within 0.1 s)
    with tqdm(total=total, desc="responses", unit="record", dynamic_ncols=True, mininterval=0) as records:
        yield records.update
