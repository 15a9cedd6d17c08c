"""Prompt styles: how an instruction record becomes the text the model reads and continues."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from gpt_finetune.errors import UserError

ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)


def alpaca(instruction: str, input: str) -> str:
    """The book's Alpaca prompt, ending where the response begins."""
    text = f"{ALPACA_PREAMBLE}\n\n### Instruction:\n{instruction}"
    if input:
        text += f"\n\n### Input:\n{input}"
    return text + "\n\n### Response:\n"


def phi3(instruction: str, input: str) -> str:
    """The Phi-3 chat prompt, ending where the response begins."""
    text = f"<|user|>\n{instruction}"
    if input:
        text += f"\n{input}"
    return text + "\n<|assistant|>:\n"


def chatml(instruction: str, input: str) -> str:
    """The ChatML prompt (`<|im_start|>user ... <|im_end|>`), ending where the assistant's turn begins."""
    text = f"<|im_start|>user\n{instruction}"
    if input:
        text += f"\n{input}"
    return text + "<|im_end|>\n<|im_start|>assistant\n"


PROMPT_STYLES: dict[str, Callable[[str, str], str]] = {"alpaca": alpaca, "phi3": phi3, "chatml": chatml}


def prompt_style(name: str) -> Callable[[str, str], str]:
    """The style registered under `name`; a one-line error lists the valid names."""
    if name not in PROMPT_STYLES:
        raise UserError(f"unknown prompt style {name!r}; valid styles: {', '.join(PROMPT_STYLES)}")
    return PROMPT_STYLES[name]


def format_prompt(record: Mapping[str, str], style: str = "alpaca") -> str:
    """The prompt for `record` (instruction + optional input), without the response."""
    return prompt_style(style)(record["instruction"], record.get("input", ""))


def format_example(record: Mapping[str, str], style: str = "alpaca") -> str:
    """Prompt followed by the expected output: the text trained on."""
    return format_prompt(record, style) + record["output"]
