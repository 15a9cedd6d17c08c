"""One rendering rule, five renderers: training, chat.py, serve.py's chat completions, the exported Hugging
Face chat template and the ollama Modelfile TEMPLATE render a multi-turn conversation with a system message
identically, in every prompt style (as text, and as the tokens a model reads)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import torch
from test_modelfile import render_go, template_of
from transformers import AutoTokenizer

from gpt_finetune.chat import Conversation, Settings
from gpt_finetune.data.conversation_datamodule import fit_conversation
from gpt_finetune.data.prompts import PROMPT_STYLES
from gpt_finetune.export.chat_template import chat_template
from gpt_finetune.export.hf import write_tokenizer
from gpt_finetune.export.modelfile import modelfile
from gpt_finetune.model import GPT, GPTConfig
from gpt_finetune.serving.conversation import prompt_tokens, render_conversation, render_messages
from gpt_finetune.serving.loading import UsableModel
from gpt_finetune.serving.server import ServerSettings, background_server, create_app
from gpt_finetune.tokenizer import END_OF_TEXT, gpt2_tokenizer

PROMPT = [  # a conversation to answer: system, two exchanges, a third question
    {"role": "system", "content": 'You are terse. Quote "exactly".'},
    {"role": "user", "content": "My word is moon.\nRemember it."},
    {"role": "assistant", "content": "Noted: moon."},
    {"role": "user", "content": "And a colour?"},
    {"role": "assistant", "content": "Blue, {{ as }} ever."},
    {"role": "user", "content": "What was my word?"},
]
WHOLE = [*PROMPT, {"role": "assistant", "content": "Moon."}]  # the same conversation as a training example


def go_messages(messages: list[dict[str, str]]) -> dict[str, object]:
    return {"Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages]}


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig.from_size("tiny", context_length=256)).eval()


@pytest.mark.parametrize("style", sorted(PROMPT_STYLES))
def test_the_text_is_the_same_from_every_renderer(tmp_path: Path, style: str) -> None:
    write_tokenizer(tmp_path, 1024, chat_template(style))
    hf = AutoTokenizer.from_pretrained(tmp_path)
    go = template_of(modelfile(style, 1024))
    prompt = render_messages(PROMPT, style)
    assert hf.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True) == prompt
    assert render_go(go, go_messages(PROMPT)) == prompt
    example = render_conversation(WHOLE, style)
    assert example == prompt + "Moon.<|endoftext|>"
    assert hf.apply_chat_template(WHOLE, tokenize=False) == example
    assert render_go(go, go_messages(WHOLE)) == example
    # The exported tokenizer reads the turn ends as the end-of-text token: the tokens a model reads too.
    assert hf(prompt)["input_ids"] == prompt_tokens(PROMPT, style)


@pytest.mark.parametrize("style", sorted(PROMPT_STYLES))
def test_training_chat_and_the_server_read_the_same_tokens(model: GPT, style: str) -> None:
    prompt = prompt_tokens(PROMPT, style)
    assert gpt2_tokenizer().decode(prompt) == render_messages(PROMPT, style)
    assert prompt.count(END_OF_TEXT) == 2  # each earlier answer ends with the end-of-text token

    trained = fit_conversation(WHOLE, style, "all_assistant", None)  # what the data module trains on
    assert [*trained.inputs, trained.targets[-1]][: len(prompt)] == prompt

    usable = UsableModel("instruct", model, style, name="tiny", source="random init")
    chat = Conversation(usable, Settings(max_new_tokens=4), system=PROMPT[0]["content"])
    chat.turns = [dict(m) for m in PROMPT[1:]]
    assert chat.fitted_prompt() == prompt  # what chat.py answers from

    expected = model.generate([prompt], max_new_tokens=4)[0]
    with background_server(create_app(usable, ServerSettings())) as url:
        body = {"messages": PROMPT, "max_tokens": 4, "temperature": 0}
        done = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60).json()
    assert done["usage"]["prompt_tokens"] == len(prompt)
    assert done["choices"][0]["message"]["content"] == gpt2_tokenizer().decode(
        [t for t in expected if t != END_OF_TEXT]
    )
