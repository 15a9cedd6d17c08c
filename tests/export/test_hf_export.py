"""format=hf: transformers loads the directory and computes what we compute; its chat template renders
exactly `render_messages`; a last_token classifier becomes an equal GPT2ForSequenceClassification."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hf_compat import DTYPE_ARG
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from gpt_finetune.data.prompts import PROMPT_STYLES
from gpt_finetune.errors import UserError
from gpt_finetune.export.chat_template import chat_template, user_turn
from gpt_finetune.export.hf import check_exportable, fold_head_bias, write_hf, write_tokenizer
from gpt_finetune.serving.conversation import render_messages
from gpt_finetune.serving.loading import UsableModel, load_model
from gpt_finetune.tasks.classify import Classification
from gpt_finetune.tokenizer import gpt2_tokenizer

MakeUsable = Callable[..., UsableModel]

STYLES = sorted(PROMPT_STYLES)
CONVERSATIONS = {
    "one user turn": [{"role": "user", "content": "Name three primary colours."}],
    "system and two turns": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Red."},
        {"role": "user", "content": "Another?"},
    ],
    "awkward text": [
        {"role": "user", "content": 'Quote "this" and {{ that }}\n\tthen a tab, é, 😀'},
        {"role": "assistant", "content": "{% raw %} \\n ' \""},
        {"role": "user", "content": "### Response:\n<|user|> <|im_end|>"},
    ],
}
TEXT = (
    "Below is an instruction.\n\n### Instruction:\nSay hello in French, then count to 3.\n\n### Response:\n"
)


@pytest.fixture(scope="module")
def style_tokenizers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """An exported tokenizer per prompt style, loaded by transformers' AutoTokenizer."""
    tokenizers = {}
    for style in STYLES:
        folder = tmp_path_factory.mktemp(f"tokenizer-{style}")
        write_tokenizer(folder, 1024, chat_template(style))
        tokenizers[style] = AutoTokenizer.from_pretrained(folder)
    return tokenizers


@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
@pytest.mark.parametrize("style", STYLES)
def test_chat_template_renders_exactly_what_render_messages_does(
    style_tokenizers: dict, style: str, conversation: str
) -> None:
    messages = CONVERSATIONS[conversation]
    tokenizer = style_tokenizers[style]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == render_messages(messages, style)
    # Without the generation prompt the last user turn stops before the text that begins the answer.
    bare = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    assert bare + user_turn(style)[1] == rendered


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
        [{"role": "assistant", "content": "a"}],
        [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}],
        [{"role": "tool", "content": "a"}],
    ],
)
def test_chat_template_refuses_what_render_messages_refuses(style_tokenizers: dict, messages: list) -> None:
    with pytest.raises(Exception, match=r"alternate|first|roles"):
        style_tokenizers["alpaca"].apply_chat_template(messages, tokenize=False)


def test_exported_tokenizer_encodes_like_ours(style_tokenizers: dict) -> None:
    tokenizer = style_tokenizers["phi3"]
    text = TEXT + " naïve café, 1234567 tokens!\n\n  spaces"
    assert tokenizer(text)["input_ids"] == gpt2_tokenizer().encode(text)
    assert tokenizer.eos_token_id == tokenizer.pad_token_id == 50256


@pytest.mark.parametrize(
    "shape",
    [{"tie_embeddings": False}, {"tie_embeddings": True, "qkv_bias": False}],
    ids=["untied", "tied-nobias"],
)
def test_transformers_loads_the_directory_with_equal_logits_and_greedy_tokens(
    make_usable: MakeUsable, tmp_path: Path, shape: dict
) -> None:
    usable = make_usable("chatml", **shape)
    write_hf(usable, tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    ids = tokenizer(TEXT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = usable.gpt(ids)
        assert (model(ids).logits - logits).abs().max() <= 1e-4
        assert len(set(logits.argmax(-1)[0].tolist())) > 2  # logits that differ position to position
        theirs = model.generate(ids, max_new_tokens=16, do_sample=False)[0, ids.shape[1] :].tolist()
    ours = usable.gpt.generate(ids, max_new_tokens=16)[0]
    assert theirs == ours
    generation = json.loads((tmp_path / "generation_config.json").read_text())
    assert generation["eos_token_id"] == generation["pad_token_id"] == 50256
    assert generation["max_length"] == usable.gpt.config.context_length


@pytest.mark.parametrize(("dtype", "torch_dtype"), [("f16", torch.float16), ("bf16", torch.bfloat16)])
def test_half_precision_directories_store_that_dtype(
    make_usable: MakeUsable, tmp_path: Path, dtype: str, torch_dtype: torch.dtype
) -> None:
    usable = make_usable()
    write_hf(usable, tmp_path, dtype)  # type: ignore[arg-type]
    with safe_open(tmp_path / "model.safetensors", framework="pt") as weights:
        assert {weights.get_tensor(name).dtype for name in weights.keys()} == {torch_dtype}  # noqa: SIM118
    model = AutoModelForCausalLM.from_pretrained(tmp_path, **{DTYPE_ARG: "auto"})
    assert model.dtype == torch_dtype
    ids = torch.tensor([gpt2_tokenizer().encode(TEXT)])
    with torch.no_grad():
        logits = model(ids).logits.float()
        reference = usable.gpt(ids)
    assert (logits - reference).abs().max() <= 0.05 * reference.abs().max()


def test_fold_head_bias_gives_a_bias_free_head_with_equal_logits() -> None:
    torch.manual_seed(0)
    weight, bias, ln_bias = torch.randn(3, 64), torch.randn(3), torch.randn(64)
    score, folded = fold_head_bias(weight, bias, ln_bias)
    normed = torch.randn(10, 64)  # final-norm outputs before the norm's bias
    assert torch.allclose((normed + folded) @ score.T, (normed + ln_bias) @ weight.T + bias, atol=1e-5)
    with pytest.raises(UserError, match="dependent rows"):
        fold_head_bias(torch.ones(2, 64), torch.tensor([0.0, 1.0]), ln_bias)


def test_pooling_other_than_last_token_is_refused_naming_the_one_that_exports() -> None:
    task = Classification(model={"size": "tiny", "pretrained": False}, labels=["ham", "spam"], pooling="mean")
    usable = UsableModel(
        "classify", task.model, "alpaca", name="c", source="t", classifier=task, labels=task.labels
    )
    with pytest.raises(UserError, match=r"task\.pooling=mean.*task\.pooling=last_token"):
        check_exportable(usable)


def test_classify_run_exports_as_sequence_classification_with_equal_probabilities(
    classify_run: Path, export_config, tmp_path: Path
) -> None:
    from gpt_finetune.export.command import export

    out = export(export_config(f"run_dir={classify_run}", f"out={tmp_path / 'hf'}"))
    usable = load_model(str(classify_run), device="cpu")
    assert usable.classifier is not None and usable.gpt.lm_head.bias.abs().max() > 0  # the fold is exercised
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["GPT2ForSequenceClassification"]
    assert config["id2label"] == {"0": "ham", "1": "spam"} and config["pad_token_id"] == 50256
    assert not (out / "generation_config.json").exists()
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    texts = ["WINNER!! Claim your free prize now, call 0800 123 456", "ok see you at lunch", "Hi", "Call me"]
    batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    assert (
        batch["input_ids"].shape[1] > 2
    )  # rows of different lengths: the pad-token rule decides the pooling
    with torch.no_grad():
        theirs = model(**batch).logits.softmax(-1)
    ours = usable.classifier.predict_proba(texts)
    assert (theirs - ours).abs().max() <= 1e-5
    card = (out / "README.md").read_text()
    assert "AutoModelForSequenceClassification" in card and "pooling last_token" in card
