"""Property tests: random records through the readers and collates of both tasks give a correct batch or
a one-line UserError naming the file and the place, never a crash or a silently dropped record."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st

from gpt_finetune.data.classification import Example, load_examples
from gpt_finetune.data.classify_datamodule import collate_classification
from gpt_finetune.data.collate import collate_instructions
from gpt_finetune.data.instruct_datamodule import InstructionDataModule, TokenizedInstructions
from gpt_finetune.data.instructions import FIELDS, load_records, split_records
from gpt_finetune.data.prompts import PROMPT_STYLES, format_prompt
from gpt_finetune.errors import UserError
from gpt_finetune.tokenizer import gpt2_tokenizer

EOS, IGNORE = 50256, -100
FILES = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
FAST = settings(max_examples=200, deadline=None)

TRICKY = ["", " ", "<|endoftext|>", "\n", "\r\n", '"quoted"', "\\", "\u2028", "\x85", "ü🙂中", "\x00"]
CHARS = st.characters(exclude_categories=["Cs"])  # all of Unicode but lone surrogates, which UTF-8 lacks
LONG = st.builds(lambda s, n: s * n, st.text(CHARS, min_size=1, max_size=4), st.integers(200, 1000))
UTF8 = st.one_of(st.text(CHARS, max_size=30), st.sampled_from(TRICKY), LONG)
STRINGS = UTF8 | st.text(st.characters(), max_size=5)  # JSON escapes can also give lone surrogates
SCALAR = st.integers() | st.floats(allow_nan=False) | st.booleans()
NOT_NULL = SCALAR | st.lists(SCALAR, max_size=2) | st.dictionaries(st.text(max_size=3), SCALAR, max_size=2)
NOT_STRING = NOT_NULL | st.none()
OPTIONAL = {"input": STRINGS | st.none(), "extra": st.integers()}
RECORD = st.fixed_dictionaries({"instruction": STRINGS, "output": STRINGS}, optional=OPTIONAL)
RECORDS = st.lists(RECORD, min_size=1, max_size=6)


def write(folder: Path, name: str, content: str | bytes) -> Path:
    (folder / name).write_bytes(content.encode() if isinstance(content, str) else content)
    return folder / name


def user_error(function: Callable[..., Any], *args: Any, **kwargs: Any) -> str:
    """The message of the UserError that `function` raises; it must be one line."""
    with pytest.raises(UserError) as info:
        function(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message
    return message


def dumps(value: Any, ascii_only: bool, indent: int | None = None) -> str:
    """JSON text, non-ASCII raw unless `ascii_only` or it holds lone surrogates (which UTF-8 cannot hold)."""
    text = json.dumps(value, ensure_ascii=ascii_only, indent=indent)
    try:
        text.encode()
    except UnicodeEncodeError:
        text = json.dumps(value, indent=indent)
    return text


@st.composite
def bad_item(draw: st.DrawFn) -> Any:
    """A record with a required field missing or a field of the wrong type, or not an object at all."""
    record = draw(RECORD)
    how = draw(st.sampled_from(["missing", "type", "item"]))
    if how == "missing":
        del record[draw(st.sampled_from(["instruction", "output"]))]
    elif how == "type":
        field = draw(st.sampled_from(FIELDS))
        record[field] = draw(NOT_NULL if field == "input" else NOT_STRING)  # a null input means ""
    else:
        return draw(NOT_STRING | STRINGS | st.lists(RECORD, max_size=2))
    return record


def expected_record(item: Any) -> dict[str, str] | None:
    """The validated record the reader should give for `item`, or None where it must refuse it."""
    if not isinstance(item, dict) or "instruction" not in item or "output" not in item:
        return None
    record = {"instruction": item["instruction"], "input": item.get("input"), "output": item["output"]}
    record["input"] = "" if record["input"] is None else record["input"]
    return record if all(isinstance(v, str) for v in record.values()) else None


BLANKS = st.lists(st.sampled_from(["", "  ", "\t", "\r"]), max_size=10)  # "\r" + "\n" is one line break
INSERTS = st.lists(st.tuples(st.integers(0, 6), bad_item()), max_size=2)


@FILES
@given(RECORDS, INSERTS, st.booleans(), st.sampled_from([None, 2]), st.booleans(), BLANKS)
def test_instruction_reader_keeps_every_record_or_names_the_first_bad_one(
    tmp_path: Path, items: list, bad: list, jsonl: bool, indent: int | None, ascii_only: bool, blanks: list
) -> None:
    for position, item in bad:
        items.insert(position, item)
    if jsonl:  # one item per line, blank lines between some of them
        assume(not isinstance(items[0], list))  # a first line "[...]" reads as a JSON array
        lines, numbers = [], []
        for i, item in enumerate(items):
            lines += blanks[i : i + 1]
            numbers.append(len(lines) + 1)
            lines.append(dumps(item, ascii_only))
        path = write(tmp_path, "records.jsonl", "\n".join(lines) + "\n")
    else:
        path = write(tmp_path, "records.json", dumps(items, ascii_only, indent))
    expected = [expected_record(item) for item in items]
    first_bad = next((i for i, record in enumerate(expected) if record is None), None)
    event("all valid" if first_bad is None else "refused")
    if first_bad is None:
        assert load_records(path) == expected
    else:
        where = f"line {numbers[first_bad]}" if jsonl else f"record {first_bad}"
        assert user_error(load_records, path).startswith(f"{path}: {where} ")


@st.composite
def truncated_json(draw: st.DrawFn) -> bytes:
    """A valid array or JSONL file of records, cut at a random character."""
    records = draw(st.lists(RECORD, min_size=1, max_size=3))
    text = dumps(records, True) if draw(st.booleans()) else "\n".join(dumps(r, True) for r in records)
    return text[: draw(st.integers(0, len(text)))].encode()


JSONISH = st.text(alphabet='[]{}",:\\ \n\r0123456789.eE-+tfnul\ufeff\u2028instruco', max_size=80)


@FILES
@example(content=b"[" * 100_000)  # json.loads: RecursionError
@example(content=b'{"instruction": ' + b"7" * 5000 + b"}")  # json.loads: ValueError (4300-digit limit)
@given(content=st.binary(max_size=200) | truncated_json() | JSONISH.map(str.encode))
def test_any_bytes_give_valid_records_or_a_one_line_error(tmp_path: Path, content: bytes) -> None:
    path = write(tmp_path, "records.json", content)
    try:
        records = load_records(path)
    except UserError as error:
        assert "\n" not in str(error) and str(error).startswith(f"{path}: ")
    else:
        assert records and all(list(r) == list(FIELDS) for r in records)
        assert all(isinstance(value, str) for r in records for value in r.values())


def reference_collate(
    seqs: Sequence[Sequence[int]], max_length: int | None, prompt_lengths: Sequence[int] | None
) -> tuple[list[list[int]], list[list[int]]]:
    """DESIGN.md's collate rule written out plainly, one row at a time."""
    longest = max(len(s) for s in seqs)
    inputs, targets = [], []
    for row, seq in enumerate(seqs):
        padded = [*seq, EOS] + [EOS] * (longest - len(seq))
        target = padded[1:]
        # The first end-of-text after the prompt (a conversation prompt has its own), up to the appended one.
        start = max(prompt_lengths[row] - 1, 0) if prompt_lengths is not None else 0
        first = next((j for j in range(start, len(seq)) if target[j] == EOS), None)
        target = [t if t != EOS or j == first else IGNORE for j, t in enumerate(target)]
        if prompt_lengths is not None:
            target = [IGNORE if j < prompt_lengths[row] - 1 else t for j, t in enumerate(target)]
        inputs.append(padded[:-1][:max_length])
        targets.append(target[:max_length])
    return inputs, targets


TOKENS = st.integers(0, EOS) | st.sampled_from([0, EOS])


def batches(longest: int) -> st.SearchStrategy[list[list[int]]]:
    """One to six token sequences of 1 to `longest` ids, end-of-text ids more often than by chance."""
    return st.lists(st.lists(TOKENS, min_size=1, max_size=longest), min_size=1, max_size=6)


MAX_LENGTH = st.none() | st.integers(1, 250)


@FAST
@given(seqs=batches(200), data=st.data())
def test_collate_matches_the_design_rule_on_any_tokens(seqs: list[list[int]], data: st.DataObject) -> None:
    max_length = data.draw(MAX_LENGTH)
    prompt_lengths = data.draw(st.none() | st.tuples(*(st.integers(0, len(s) + 1) for s in seqs)))
    batch = collate_instructions(seqs, max_length=max_length, prompt_lengths=prompt_lengths)
    inputs, targets = reference_collate(seqs, max_length, prompt_lengths)
    assert batch["input_ids"].dtype == batch["targets"].dtype == torch.long
    assert batch["input_ids"].tolist() == inputs and batch["targets"].tolist() == targets


TEXT_RECORD = st.fixed_dictionaries({"instruction": UTF8, "input": UTF8, "output": UTF8})
TEXT_RECORDS, STYLES = st.lists(TEXT_RECORD, min_size=1, max_size=4), st.sampled_from(sorted(PROMPT_STYLES))


@FAST
@given(TEXT_RECORDS, STYLES, st.booleans(), MAX_LENGTH, st.data())
def test_tokenised_records_collate_to_shifted_targets_with_the_prompt_masked(
    records: list[dict[str, str]], style: str, mask_prompt: bool, max_length: int | None, data: st.DataObject
) -> None:
    tokenizer, dataset = gpt2_tokenizer(), TokenizedInstructions(records, style)
    picks = data.draw(st.lists(st.integers(0, len(records) - 1), min_size=1, max_size=6))
    items = [dataset[i] for i in picks]
    module = InstructionDataModule("unread.json", style, max_length=max_length, mask_prompt=mask_prompt)
    batch = module.collate(items)
    longest = max(len(ids) for ids, _ in items)
    width = longest if max_length is None else min(longest, max_length)
    assert batch["input_ids"].dtype == batch["targets"].dtype == torch.long
    assert batch["input_ids"].shape == batch["targets"].shape == (len(items), width)
    for row, (ids, prompt_length) in enumerate(items):
        record, prompt = records[picks[row]], format_prompt(records[picks[row]], style)
        assert EOS not in ids and tokenizer.decode(ids) == prompt + record["output"]
        if not record["output"][:1].isspace():  # else BPE may merge the prompt's last "\n" into the output
            assert ids[:prompt_length] == tokenizer.encode(prompt, disallowed_special=())
        masked = prompt_length - 1 if mask_prompt else 0
        target = [IGNORE if j < masked else t for j, t in enumerate([*ids[1:], EOS])]
        pad = longest - len(ids)
        assert batch["targets"][row].tolist() == (target + [IGNORE] * pad)[:width]
        assert batch["input_ids"][row].tolist() == (ids + [EOS] * pad)[:width]


FRACTION = st.floats(-0.2, 1.2) | st.sampled_from([0.0, 0.05, 0.1, 0.85, 1.0, math.nan])


@FAST
@given(n=st.integers(0, 60), train=FRACTION, test=FRACTION, shuffle=st.booleans())
def test_split_sizes_follow_the_fractions_or_name_the_empty_split(
    n: int, train: float, test: float, shuffle: bool
) -> None:
    records = [{"instruction": str(i), "input": "", "output": ""} for i in range(n)]
    if not (0 < train < 1 and 0 <= test < 1 and train + test < 1):
        assert "data.train_fraction" in user_error(split_records, records, train, test, shuffle)
        return
    sizes = {"train": int(n * train), "test": int(n * test)}
    sizes["val"] = n - sizes["train"] - sizes["test"]
    empty = [name for name, size in sizes.items() if size == 0]
    if empty:
        assert f"the {empty[0]} split is empty" in user_error(split_records, records, train, test, shuffle)
        return
    splits = split_records(records, train, test, shuffle)
    assert {name: len(part) for name, part in splits.items()} == sizes
    joined = splits["train"] + splits["test"] + splits["val"]
    if shuffle:
        joined.sort(key=lambda record: int(record["instruction"]))
    assert joined == records


CELL_CHARS = st.characters(exclude_categories=["Cs"], exclude_characters="\t\n\r")
NAME = st.text(CELL_CHARS, min_size=1, max_size=6)
LABEL_NAMES = st.lists(NAME.map(str.strip).filter(bool), min_size=2, max_size=3, unique=True)
CELL = st.one_of(
    st.text(CELL_CHARS, max_size=30),
    st.sampled_from(["", " ", '"', 'say "hi"', "<|endoftext|>", "\u2028", "\x0b", "ü🙂中"]),
    st.builds(lambda s, n: s * n, st.sampled_from(["ab ", "é", "🙂"]), st.integers(200, 1000)),
)


def expected_examples(items: list[tuple[int, Any]], names: list[str]) -> list[Example] | str:
    """What load_examples gives for (line, item) pairs, or how its error goes on after the path."""
    for line, item in items:  # keys are checked for every line before any label or text
        for role in ("label", "text"):
            if not isinstance(item, dict) or role not in item:
                return f"line {line} has no {role} key"
    examples = []
    for line, item in items:
        label, text = str(item["label"]).strip(), item["text"]
        if label not in names:
            return f"line {line}: label"
        if not isinstance(text, str):
            return f"line {line}: text is"
        if not text.strip():
            return f"line {line}: empty text"
        examples.append(Example(text, names.index(label), line))
    present = {e.label for e in examples}
    if not examples:
        return "no records"
    if len(present) == 1:
        return "every record is"
    return "no records labelled" if len(present) < len(names) else examples


@st.composite
def labelled_items(draw: st.DrawFn, names: list[str], jsonl: bool) -> list[Any]:
    """Records of a known (maybe padded) label and a text, with a few bad ones inserted."""
    known = st.builds(lambda name, pad: pad + name + pad, st.sampled_from(names), st.sampled_from(["", " "]))
    junk = NOT_STRING if jsonl else st.nothing()  # JSONL also has wrong types, missing keys, non-objects
    bad_text = st.sampled_from(["", " \x0b"]) | junk
    bad = st.builds(dict, label=NAME | junk, text=CELL) | st.builds(dict, label=known, text=bad_text)
    if jsonl:
        bad = bad | NOT_STRING | st.builds(dict, text=CELL) | st.builds(dict, label=known)
    good = st.builds(dict, label=known, text=CELL.filter(str.strip))
    records = draw(st.lists(good, min_size=1, max_size=10))
    if draw(st.booleans()):  # often every class, so that many files are valid
        records += [{"label": name, "text": draw(CELL.filter(str.strip))} for name in names]
    for position, record in draw(st.lists(st.tuples(st.integers(0, 10), bad), max_size=2)):
        records.insert(position, record)
    return records


@FILES
@given(names=LABEL_NAMES, jsonl=st.booleans(), blanks=BLANKS, data=st.data())
def test_classification_reader_maps_labels_to_ids_or_names_the_bad_line(
    tmp_path: Path, names: list[str], jsonl: bool, blanks: list[str], data: st.DataObject
) -> None:
    records = data.draw(labelled_items(names, jsonl))
    lines: list[str] = []
    items: list[tuple[int, Any]] = []
    for i, record in enumerate(records):
        lines += blanks[i : i + 1]
        if jsonl or str(record["label"]).strip() or record["text"].strip():  # else a blank line, skipped
            items.append((len(lines) + 1, record))
        lines.append(json.dumps(record) if jsonl else f"{record['label']}\t{record['text']}")
    path = write(tmp_path, "data.jsonl" if jsonl else "data.tsv", "\n".join(lines) + "\n")
    columns = {"text_column": "text", "label_column": "label"} if jsonl else {}
    expected = expected_examples(items, names)
    event(re.sub(r"\d+", "N", expected) if isinstance(expected, str) else "valid")
    if isinstance(expected, str):
        assert user_error(load_examples, str(path), names, **columns).startswith(f"{path}: {expected}")
    else:
        assert load_examples(str(path), names, **columns) == expected


@FAST
@given(batches(60), st.none() | st.integers(1, 80), st.none() | st.integers(1, 80), st.data())
def test_classification_collate_cuts_and_pads_every_row(
    seqs: list[list[int]], width: int | None, max_length: int | None, data: st.DataObject
) -> None:
    labels = data.draw(st.lists(st.integers(0, 4), min_size=len(seqs), max_size=len(seqs)))
    batch = collate_classification(seqs, labels, width=width, max_length=max_length)
    limits = [v for v in (width, max_length) if v is not None]
    kept = [min([len(s), *limits]) for s in seqs]
    columns = width if width is not None else max(kept)
    assert all(t.dtype == torch.long for t in batch.values())
    assert batch["input_ids"].shape == (len(seqs), columns)
    assert batch["lengths"].tolist() == kept and batch["labels"].tolist() == labels
    for row, (seq, n) in enumerate(zip(seqs, kept, strict=True)):
        assert batch["input_ids"][row].tolist() == seq[:n] + [EOS] * (columns - n)
