"""Instruction data: golden prompts, the book's split, readers and their errors, URL cache, DataModule."""

from __future__ import annotations

import codecs
import json
import logging
import random
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import torch

from gpt_finetune.data.download import cached_path
from gpt_finetune.data.instruct_datamodule import InstructionDataModule
from gpt_finetune.data.instructions import Record, load_records, split_records
from gpt_finetune.data.prompts import format_example, format_prompt
from gpt_finetune.errors import UserError
from gpt_finetune.tokenizer import gpt2_tokenizer

PREAMBLE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)
WITH_INPUT = {"instruction": "Fix the spelling.", "input": "freind", "output": "friend"}
NO_INPUT = {"instruction": "Name a colour.", "input": "", "output": "Blue."}
RECORDS = [WITH_INPUT, NO_INPUT, {"instruction": "Say hi.", "output": "hi"}, {**NO_INPUT, "input": None}]
EXPECTED = [WITH_INPUT, NO_INPUT, {"instruction": "Say hi.", "input": "", "output": "hi"}, NO_INPUT]
NOT_UTF8 = b'[{"instruction": "caf\xe9", "output": "b"}]'


def write(folder: Path, name: str, content: str | bytes) -> Path:
    path = folder / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def user_error(function: Callable[..., Any], *args: Any, **kwargs: Any) -> str:
    """The message of the UserError that `function` raises; it must be one line."""
    with pytest.raises(UserError) as info:
        function(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


ALPACA_WITH_INPUT = (
    f"{PREAMBLE}\n\n### Instruction:\nFix the spelling.\n\n### Input:\nfreind\n\n### Response:\n"
)


@pytest.mark.parametrize(
    ("record", "style", "prompt"),
    [
        (WITH_INPUT, "alpaca", ALPACA_WITH_INPUT),
        (NO_INPUT, "alpaca", f"{PREAMBLE}\n\n### Instruction:\nName a colour.\n\n### Response:\n"),
        (WITH_INPUT, "phi3", "<|user|>\nFix the spelling.\nfreind\n<|assistant|>:\n"),
        (NO_INPUT, "phi3", "<|user|>\nName a colour.\n<|assistant|>:\n"),
        (
            WITH_INPUT,
            "chatml",
            "<|im_start|>user\nFix the spelling.\nfreind<|im_end|>\n<|im_start|>assistant\n",
        ),
        (NO_INPUT, "chatml", "<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n"),
    ],
)
def test_golden_prompts(record: Record, style: str, prompt: str) -> None:
    assert format_prompt(record, style) == prompt
    assert format_example(record, style) == prompt + record["output"]
    no_input_key = {k: v for k, v in record.items() if k != "input" or v}
    assert format_prompt(no_input_key, style) == prompt


def test_unknown_style_lists_valid_styles() -> None:
    message = user_error(format_prompt, WITH_INPUT, "nope")
    assert "'nope'" in message and "alpaca, phi3" in message


def test_book_data_splits_935_110_55_in_file_order(shared_data) -> None:
    path = shared_data("instruction-data.json")
    raw = json.loads(path.read_text(encoding="utf-8"))
    records = load_records(path)
    assert len(records) == 1100 and records == raw
    splits = split_records(records)
    assert {name: len(part) for name, part in splits.items()} == {"train": 935, "test": 110, "val": 55}
    assert splits["train"][0] == raw[0] and splits["test"][0] == raw[935] and splits["val"][0] == raw[1045]
    assert splits["train"] + splits["test"] + splits["val"] == records


def test_shuffled_split_is_a_seeded_permutation(shared_data) -> None:
    records = load_records(shared_data("instruction-data.json"))
    shuffled = split_records(records, shuffle=True, seed=7)
    assert shuffled == split_records(records, shuffle=True, seed=7)
    assert shuffled != split_records(records, shuffle=True, seed=8)
    assert shuffled["train"] != split_records(records)["train"]
    assert [len(part) for part in shuffled.values()] == [935, 110, 55]
    every = [json.dumps(r, sort_keys=True) for part in shuffled.values() for r in part]
    assert sorted(every) == sorted(json.dumps(r, sort_keys=True) for r in records)


def test_json_array_jsonl_and_bom_read_the_same(tmp_path: Path) -> None:
    array = write(tmp_path, "a.json", json.dumps(RECORDS, indent=2))
    lines = write(tmp_path, "a.jsonl", "\n\n".join(json.dumps(r) for r in RECORDS) + "\n  \n")
    bom = write(tmp_path, "bom.json", codecs.BOM_UTF8 + json.dumps(RECORDS).encode())
    assert load_records(array) == load_records(lines) == load_records(bom) == EXPECTED


ONE_OBJECT = ("holds one JSON object where a list of records belongs",)
BAD_FILES = {
    "malformed-array": (
        '[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "c" "output": "d"}\n]',
        ("invalid JSON at line 3", "fix the file"),
    ),
    "malformed-jsonl": (
        '{"instruction": "a", "output": "b"}\n\n{"instruction": "c", "output": \n',
        ("line 3 is not valid JSON", "one JSON object per line"),
    ),
    "missing-output": (
        '[{"instruction": "a", "output": "b"}, {"instruction": "c"}]',
        ("record 1 has no 'output' field", "every record needs instruction and output"),
    ),
    "number-instruction": (
        '[{"instruction": 7, "output": "b"}]',
        ("record 0 field 'instruction' is a number, not a string", "make it a string"),
    ),
    "null-output": (
        '{"instruction": "a", "output": "b"}\n{"instruction": "a", "output": null}',
        ("line 2 field 'output' is null", "make it"),
    ),
    "one-object": (json.dumps(NO_INPUT), (*ONE_OBJECT, "wrap the records in [", "one record per line")),
    "one-object-pretty": (json.dumps(NO_INPUT, indent=2), ONE_OBJECT),
    "records-under-a-key": (
        json.dumps({"data": RECORDS, "version": 2}),
        (*ONE_OBJECT, "its 'data' key holds a list of 4: save that list alone"),
    ),
    "not-an-object": (
        '{"instruction": "a", "output": "b"}\n["a", "b"]\n',
        ("line 2 is an array, not an object", "write each record as"),
    ),
    "empty-array": ("[]", ("no records", "add at least one")),
    "empty-file": ("", ("no records", "add at least one")),
    "blank-file": ("\n \n", ("no records", "add at least one")),
    "not-utf8": (NOT_UTF8, (f"not UTF-8 text (byte {NOT_UTF8.index(0xE9)})", "re-save the file as UTF-8")),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_file_is_a_one_line_error_naming_file_place_and_fix(tmp_path: Path, case: str) -> None:
    content, fragments = BAD_FILES[case]
    path = write(tmp_path, "records.json", content)
    message = user_error(load_records, path)
    assert message.startswith(f"{path}: ")
    for fragment in fragments:
        assert fragment in message


def test_jsonl_file_of_one_record_is_read_but_one_object_over_several_lines_is_not(tmp_path: Path) -> None:
    assert load_records(write(tmp_path, "one.jsonl", json.dumps(NO_INPUT) + "\n")) == [NO_INPUT]
    pretty = write(tmp_path, "pretty.jsonl", json.dumps(NO_INPUT, indent=2))
    assert user_error(load_records, pretty).startswith(f"{pretty}: {ONE_OBJECT[0]}; ")


def test_missing_file_names_the_setting(tmp_path: Path) -> None:
    message = user_error(load_records, tmp_path / "absent.json")
    assert str(tmp_path / "absent.json") in message and "no such file" in message and "data.path" in message


def test_empty_split_names_the_split() -> None:
    message = user_error(split_records, EXPECTED[:3])
    assert "the test split is empty (3 records" in message and "data.test_fraction" in message


class RecordServer:
    """A loopback HTTP server for `files` (path -> body) that counts the requests it answers."""

    def __init__(self, files: dict[str, bytes], truncated: frozenset[str] = frozenset()) -> None:
        self.requests = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests += 1
                if self.path not in files:
                    self.send_error(404)
                    return
                body = files[self.path]
                self.send_response(200)
                # A truncated body: promise more bytes than are sent, then close.
                self.send_header("Content-Length", str(len(body) + 100 * (self.path in truncated)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def close(self) -> None:
        """Stop serving and free the port; safe to call twice."""
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[RecordServer]:
    monkeypatch.setenv("no_proxy", "*")  # never route loopback requests through a proxy
    body = json.dumps(RECORDS).encode()
    records = RecordServer({"/data.json": body, "/short.json": body}, truncated=frozenset({"/short.json"}))
    yield records
    records.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cached_files(cache: Path) -> list[Path]:
    return sorted(p for p in cache.rglob("*") if p.is_file()) if cache.exists() else []


def test_url_is_downloaded_once_then_read_from_cache(server: RecordServer, tmp_path: Path) -> None:
    url, cache = f"{server.url}/data.json", tmp_path / "cache"
    assert load_records(url, cache_dir=cache) == EXPECTED
    assert load_records(url, cache_dir=cache) == EXPECTED
    assert server.requests == 1
    server.close()
    assert load_records(url, cache_dir=cache) == EXPECTED
    assert cached_files(cache) == [cached_path(url, cache)]


@pytest.mark.parametrize(
    ("path", "fragment"), [("/missing.json", "HTTP 404 Not Found"), ("/short.json", "IncompleteRead")]
)
def test_failed_download_leaves_no_file(
    server: RecordServer, tmp_path: Path, path: str, fragment: str
) -> None:
    message = user_error(load_records, server.url + path, cache_dir=tmp_path / "cache")
    assert "cannot download" in message and fragment in message and "data.path=FILE" in message
    assert server.requests == 1
    assert cached_files(tmp_path / "cache") == []


@pytest.mark.parametrize("port", ["closed", "notaport"])
def test_unreachable_url_says_cannot_download_and_the_fix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, port: str
) -> None:
    monkeypatch.setenv("no_proxy", "*")
    url = f"http://127.0.0.1:{closed_port() if port == 'closed' else port}/x.json"
    message = user_error(load_records, url, cache_dir=tmp_path / "cache")
    assert message.startswith(f"{url}: cannot download") and "data.path=FILE" in message
    assert cached_files(tmp_path / "cache") == []


@pytest.mark.parametrize("url", ["ftp://example.com/data.json", "file:///etc/hostname"])
def test_non_http_scheme_is_refused(tmp_path: Path, url: str) -> None:
    message = user_error(load_records, url, cache_dir=tmp_path / "cache")
    assert "only http(s) URLs" in message and "local path" in message
    assert not (tmp_path / "cache").exists()


def varied_records(n: int) -> list[Record]:
    """`n` distinct records whose outputs run from 1 to 60 words."""
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    return [
        {
            "instruction": f"Repeat some words, case {i}.",
            "input": "" if i % 3 else "slowly",
            "output": " ".join(rng.choices(words, k=rng.randint(1, 60))),
        }
        for i in range(n)
    ]


def datamodule(tmp_path: Path, records: list[Record], **kwargs: Any) -> InstructionDataModule:
    path = write(tmp_path, "records.json", json.dumps(records))
    module = InstructionDataModule(path=str(path), **{"batch_size": 4, **kwargs})
    module.setup("fit")
    return module


def test_datasets_hold_token_ids_and_prompt_lengths(tmp_path: Path) -> None:
    records = varied_records(30)
    module = datamodule(tmp_path, records, style="phi3")
    tokenizer = gpt2_tokenizer()
    assert module.splits == split_records(records)
    for name, part in module.splits.items():
        assert len(module.datasets[name]) == len(part)
        for index, record in enumerate(part):
            prompt = format_prompt(record, "phi3")
            expected = (tokenizer.encode(prompt + record["output"]), len(tokenizer.encode(prompt)))
            assert module.datasets[name][index] == expected


def test_masked_training_batch_learns_only_the_response(tmp_path: Path) -> None:
    module = datamodule(tmp_path, varied_records(30), mask_prompt=True, max_length=None)
    items = module.datasets["train"].items
    batch = next(iter(module.train_dataloader()))
    assert batch["input_ids"].shape == batch["targets"].shape and len(batch["targets"]) == 4
    for inputs, targets in zip(batch["input_ids"].tolist(), batch["targets"].tolist(), strict=True):
        ids, prompt_length = next(item for item in items if inputs[: len(item[0])] == item[0])
        assert targets[: prompt_length - 1] == [-100] * (prompt_length - 1)
        assert targets[prompt_length - 1 : len(ids) - 1] == ids[prompt_length:]
        assert targets[len(ids) - 1] == 50256
        assert set(targets[len(ids) :]) <= {-100}


def test_long_records_are_truncated_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    records, max_length = varied_records(30), 64
    long = sum(len(gpt2_tokenizer().encode(format_example(r))) > max_length for r in records)
    assert 0 < long < len(records)
    with caplog.at_level(logging.WARNING, logger="gpt_finetune"):
        module = datamodule(tmp_path, records, max_length=max_length, drop_last=False)
    assert f"{long} of {len(records)} records are longer than max_length={max_length}" in caplog.text
    loaders = (module.train_dataloader(), module.val_dataloader(), module.test_dataloader())
    widths = [batch["targets"].shape[1] for loader in loaders for batch in loader]
    assert max(widths) == max_length


def mean_spread(batches: list[list[int]], lengths: list[int]) -> float:
    """Mean over batches of (longest - shortest) length: the padding a batch wastes."""
    return sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)


def test_length_grouped_batches_cover_every_index_with_similar_lengths(tmp_path: Path) -> None:
    module = datamodule(tmp_path, varied_records(200), batch_size=8, group_by_length=True, drop_last=False)
    lengths = [len(ids) for ids, _ in module.datasets["train"].items]
    loader = module.train_dataloader()
    epochs = []
    for epoch in (0, 1):
        loader.sampler.set_epoch(epoch)
        epochs.append([list(batch) for batch in loader.batch_sampler])
        assert sorted(i for batch in epochs[-1] for i in batch) == list(range(len(lengths)))
    assert epochs[0] != epochs[1]
    first = next(iter(loader))  # the loader batches what the sampler orders (epoch 1 here)
    assert first["input_ids"].shape[1] == max(lengths[i] for i in epochs[1][0])
    shuffled = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0)).tolist()
    random_batches = [shuffled[i : i + 8] for i in range(0, len(shuffled), 8)]
    assert mean_spread(epochs[0], lengths) < mean_spread(random_batches, lengths) / 4
