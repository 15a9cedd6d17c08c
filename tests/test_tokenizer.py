"""The offline GPT-2 tokenizer: pinned files, known ids, round trips, agreement with a reference BPE."""

from __future__ import annotations

import shutil

import pytest

from gpt_finetune.errors import UserError
from gpt_finetune.tokenizer import END_OF_TEXT, SHA256, bpe_files, gpt2_tokenizer, verify

SAMPLES = [
    "Hello, world",
    "  leading spaces and trailing   ",
    "Ünïcödé: café, naïve, 東京, Привет, مرحبا, emoji 🤖🎉, math ∑∫√",
    "tabs\tand\nnewlines\r\n and 'quotes' don't won't I'll we've",
    "numbers 3.14159 1,000,000 0x1F",
]


def test_known_ids() -> None:
    tok = gpt2_tokenizer()
    assert tok.encode("Hello, world") == [15496, 11, 995]
    assert tok.encode("<|endoftext|>", allowed_special={"<|endoftext|>"}) == [END_OF_TEXT]
    assert tok.n_vocab == 50257
    with pytest.raises(ValueError):
        tok.encode("<|endoftext|>")  # special text is refused unless allowed


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip(text: str) -> None:
    tok = gpt2_tokenizer()
    assert tok.decode(tok.encode(text)) == text


@pytest.mark.parametrize("text", SAMPLES)
def test_same_ids_as_transformers_reference_bpe(text: str, tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    files = bpe_files()
    shutil.copy(files["encoder.json"], tmp_path / "vocab.json")
    shutil.copy(files["vocab.bpe"], tmp_path / "merges.txt")
    reference = transformers.GPT2Tokenizer.from_pretrained(tmp_path)
    assert gpt2_tokenizer().encode(text) == reference.encode(text)


def test_cached_per_process() -> None:
    assert gpt2_tokenizer() is gpt2_tokenizer()


def test_hash_mismatch_and_missing_file_are_one_line_errors(tmp_path) -> None:
    files = {name: tmp_path / name for name in SHA256}
    with pytest.raises(UserError, match="tokenizer file missing"):
        verify(files)
    for name, source in bpe_files().items():
        shutil.copy(source, files[name])
    verify(files)  # intact copies pass
    files["vocab.bpe"].write_text("#version: 0.2\n")
    with pytest.raises(UserError, match=r"SHA-256 .* is not GPT-2's") as error:
        verify(files)
    assert "\n" not in str(error.value)
