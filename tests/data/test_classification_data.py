"""Classification data rules, each with a golden example: readers, errors, balancing, split, padding."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import pytest

from gpt_finetune.config import bundled_path
from gpt_finetune.data.classification import (
    Example,
    balance,
    check_splits,
    load_examples,
    resolve_format,
    split_examples,
)
from gpt_finetune.data.classify_datamodule import ClassificationDataModule, collate_classification
from gpt_finetune.data.download import cached_path
from gpt_finetune.errors import UserError
from gpt_finetune.tokenizer import gpt2_tokenizer

P = 50256  # the pad id: <|endoftext|>
LABELS = ["ham", "spam"]


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def letters(n: int, first: str = "a") -> str:
    """A text of exactly `n` GPT-2 tokens ("a b c" is 3)."""
    start = ord(first)
    return " ".join(chr(start + i) for i in range(n))


# ---------------------------------------------------------------- readers


def test_uci_layout_reads_label_tab_text_verbatim(tmp_path: Path) -> None:
    path = write(
        tmp_path, "SMSSpamCollection", 'ham\tHi "there", ok?\nspam\tWIN £100 now!!\n\nham\t2moro x\n'
    )
    assert load_examples(path, LABELS) == [
        Example('Hi "there", ok?', 0, 1),  # quotes are text, not CSV quoting
        Example("WIN £100 now!!", 1, 2),
        Example("2moro x", 0, 4),  # line numbers count the blank line
    ]


def test_csv_with_header_names_and_three_classes(tmp_path: Path) -> None:
    text = 'id,sentiment,review\n1,pos,"Great, loved it"\n2,neg,"Awful.\nReally."\n3,neutral,Fine\n'
    path = write(tmp_path, "reviews.csv", text)
    examples = load_examples(path, ["neg", "neutral", "pos"], text_column="review", label_column="sentiment")
    assert examples == [
        Example("Great, loved it", 2, 2),
        Example("Awful.\nReally.", 0, 3),
        Example("Fine", 1, 5),
    ]


def test_tsv_with_header_and_jsonl_with_numeric_labels(tmp_path: Path) -> None:
    tsv = write(tmp_path, "data.tsv", "text\tlabel\nhello\tham\nprize\tspam\n")
    assert load_examples(tsv, LABELS, text_column="text", label_column="label") == [
        Example("hello", 0, 2),
        Example("prize", 1, 3),
    ]
    jsonl = write(tmp_path, "data.jsonl", '{"text": "a", "label": 1}\n\n{"text": "b", "label": 0}\n')
    assert load_examples(jsonl, [0, 1], text_column="text", label_column="label") == [
        Example("a", 1, 1),
        Example("b", 0, 3),
    ]


def test_a_tab_inside_tsv_text_is_kept(tmp_path: Path) -> None:
    path = write(tmp_path, "d.tsv", "ham\thello\tworld\nspam\tprize\n")
    assert load_examples(path, LABELS) == [Example("hello\tworld", 0, 1), Example("prize", 1, 2)]
    header = write(tmp_path, "h.tsv", "label\tid\ttext\nham\t1\ta\tb\tc\nspam\t2\td\n")
    assert load_examples(header, LABELS, text_column="text", label_column="label") == [
        Example("a\tb\tc", 0, 2),
        Example("d", 1, 3),
    ]


def test_a_field_longer_than_csvs_default_limit_is_read(tmp_path: Path) -> None:
    long = "a" * 131073  # the csv module's default field limit is 131072
    path = write(tmp_path, "d.tsv", f"ham\t{long}\nspam\tb\n")
    assert [e.text for e in load_examples(path, LABELS)] == [long, "b"]
    csv_path = write(tmp_path, "d.csv", f'ham,"{long}"\nspam,b\n')
    assert [e.text for e in load_examples(csv_path, LABELS)] == [long, "b"]


def test_jsonl_splits_lines_only_at_newlines_not_unicode_line_separators(tmp_path: Path) -> None:
    text = "a\u2028b\x85c\u2029d"  # legal raw inside JSON strings, but str.splitlines() breaks on them
    lines = [
        '{"text": "' + text + '", "label": "ham"}',
        '{"text": "x", "label": "spam"}',
        '{"text": "y", "label": "ham"}',
    ]
    path = write(tmp_path, "d.jsonl", f"{lines[0]}\r\n{lines[1]}\r{lines[2]}\n")
    assert load_examples(path, LABELS, text_column="text", label_column="label") == [
        Example(text, 0, 1),
        Example("x", 1, 2),
        Example("y", 0, 3),
    ]


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("x.csv", "csv"),
        ("x.JSONL", "jsonl"),
        ("x.json", "jsonl"),
        ("x.tsv", "tsv"),
        ("SMSSpamCollection", "tsv"),
    ],
)
def test_auto_format_follows_the_suffix(name: str, fmt: str) -> None:
    assert resolve_format(Path(name), "auto") == fmt
    assert resolve_format(Path(name), "csv") == "csv"  # an explicit format wins


def zip_with(path: Path, member: str, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(member, text)
        archive.writestr("readme", "not data")
    return path


def test_zip_member_is_extracted_once_into_the_cache(tmp_path: Path) -> None:
    archive = zip_with(tmp_path / "sms.zip", "SMSSpamCollection", "ham\thi\nspam\tprize\n")
    cache = tmp_path / "cache"
    examples = load_examples(str(archive), LABELS, member="SMSSpamCollection", cache_dir=str(cache))
    assert [e.text for e in examples] == ["hi", "prize"]
    extracted = list(cache.iterdir())
    assert len(extracted) == 1 and extracted[0].read_text() == "ham\thi\nspam\tprize\n"
    with pytest.raises(
        UserError, match=r"sms.zip has no member 'nope' \(members: SMSSpamCollection, readme\)"
    ):
        load_examples(str(archive), LABELS, member="nope", cache_dir=str(cache))


def test_url_zip_is_read_from_the_cache_without_network(tmp_path: Path) -> None:
    url = "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip"
    cache = tmp_path / "cache"
    zip_with(cached_path(url, cache), "SMSSpamCollection", "spam\tWIN\nham\tok\n")  # as if downloaded
    examples = load_examples(url, LABELS, member="SMSSpamCollection", cache_dir=str(cache))
    assert examples == [Example("WIN", 1, 1), Example("ok", 0, 2)]


# ---------------------------------------------------------------- bad input: one line naming file, line, fix

BAD = {
    "unknown-label": (
        "d.tsv",
        "ham\thi\nspma\tyo\n",
        {},
        ["d.tsv", "line 2", "'spma'", "ham, spam", "data.labels"],
    ),
    "empty-text": ("d.tsv", "ham\thi\nspam\t   \n", {}, ["d.tsv", "line 2", "empty text"]),
    "one-class": ("d.tsv", "ham\ta\nham\tb\n", {}, ["d.tsv", "every record is 'ham'", "one class only"]),
    "class-without-records": (
        "d.tsv",
        "a\tx\nb\ty\n",
        {"labels": ["a", "b", "c"]},
        ["d.tsv", "no records labelled 'c'", "data.labels"],
    ),
    "header-lacks-label-column": (
        "d.csv",
        "text,category\nhello,ham\n",
        {"text_column": "text", "label_column": "label"},
        ["d.csv", "line 1 (header)", "no label column 'label'", "text, category", "data.label_column"],
    ),
    "line-lacks-label-column": (
        "d.tsv",
        "ham\thi\nno tab here\n",
        {},
        ["d.tsv", "line 2 has 1 column(s)", "data.label_column=0", "data.format"],
    ),
    "jsonl-lacks-label-key": (
        "d.jsonl",
        '{"text": "a", "label": "ham"}\n{"text": "b"}\n',
        {"text_column": "text", "label_column": "label"},
        ["d.jsonl", "line 2", "no label key 'label'", "data.label_column"],
    ),
    "null-text": (
        "d.jsonl",
        '{"text": null, "label": "ham"}\n',
        {"text_column": "text", "label_column": "label"},
        ["d.jsonl", "line 1", "text is null"],
    ),
    "one-label-listed": ("d.tsv", "ham\thi\n", {"labels": ["ham"]}, ["data.labels=['ham'] lists 1 class"]),
    "repeated-label": ("d.tsv", "ham\thi\n", {"labels": ["ham", "ham"]}, ["lists ham more than once"]),
    "missing-file": (None, "", {}, ["nope.tsv: no such file", "data.path"]),
    "tsv-extra-tab-before-the-text": (  # the text is not the last column: the extra tab is ambiguous
        "d.tsv",
        "text\tlabel\nhi\tham\nhello\tworld\tspam\n",
        {"text_column": "text", "label_column": "label"},
        ["d.tsv", "line 3 has 3 tab-separated columns, expected 2", "remove the extra tabs"],
    ),
    "csv-unclosed-quote": (  # used to swallow the later lines silently
        "d.csv",
        'spam,a\nham,"b\nspam,c\n',
        {"text_column": 1, "label_column": 0},
        ["d.csv", "line 2", "not valid CSV", "quote"],
    ),
    "jsonl-nested-too-deep": (
        "d.jsonl",
        '{"text": "a", "label": "ham"}\n' + "[" * 100000 + "\n",
        {"text_column": "text", "label_column": "label"},
        ["d.jsonl", "line 2", "cannot be read as JSON", "nested too deeply", "fix the line"],
    ),
    "jsonl-huge-number": (
        "d.jsonl",
        '{"text": "a", "label": ' + "9" * 5000 + "}\n",
        {"text_column": "text", "label_column": "label"},
        ["d.jsonl", "line 1", "cannot be read as JSON", "fix the line"],
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_naming_the_fix(case: str, tmp_path: Path) -> None:
    name, text, kwargs, fragments = BAD[case]
    path = write(tmp_path, name, text) if name is not None else str(tmp_path / "nope.tsv")
    labels = kwargs.pop("labels", LABELS)
    with pytest.raises(UserError) as caught:
        load_examples(path, labels, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_a_split_without_a_class_is_reported_with_every_gap() -> None:
    ham, spam = Example("h", 0, 1), Example("s", 1, 2)
    with pytest.raises(UserError) as caught:
        check_splits({"train": [ham, spam], "val": [ham], "test": [spam, spam]}, LABELS)
    message = str(caught.value)
    assert "the val split (1 records) has no 'spam'" in message
    assert "the test split (2 records) has no 'ham'" in message
    assert "data.balance=true" in message
    check_splits({"train": [ham, spam], "val": [spam, ham], "test": [ham, spam]}, LABELS)  # no error


# ---------------------------------------------------------------- balancing and split


def test_balance_undersamples_to_the_smallest_class_in_file_order() -> None:
    examples = [Example(str(i), label, i) for i, label in enumerate([0, 0, 1, 0, 0, 2, 1, 0, 2, 0])]
    balanced = balance(examples, seed=1)
    assert sorted(e.label for e in balanced) == [0, 0, 1, 1, 2, 2]
    assert [e.line for e in balanced] == sorted(e.line for e in balanced)
    assert [e for e in balanced if e.label != 0] == [e for e in examples if e.label != 0]  # minorities kept
    many = [Example(str(i), int(i % 5 == 0), i) for i in range(200)]
    assert balance(many, seed=1) == balance(many, seed=1) != balance(many, seed=2)


def test_split_is_70_10_20_seeded_and_disjoint() -> None:
    examples = [Example(str(i), i % 2, i) for i in range(1494)]
    splits = split_examples(examples, 0.7, 0.1, shuffle=True, seed=123)
    assert [len(part) for part in splits.values()] == [1045, 149, 300]  # the book's sizes
    assert sorted(e.line for part in splits.values() for e in part) == list(range(1494))
    assert split_examples(examples, seed=123) == splits != split_examples(examples, seed=7)
    in_order = split_examples(examples, shuffle=False)
    assert in_order["train"] == examples[:1045] and in_order["test"] == examples[1194:]
    with pytest.raises(UserError, match=r"data\.train_fraction=0\.9 and data\.val_fraction=0\.2"):
        split_examples(examples, 0.9, 0.2)


def test_book_spam_data_balanced_is_747_747_split_1045_149_300(shared_data) -> None:
    path = shared_data("SMSSpamCollection")
    examples = load_examples(str(path), LABELS)
    assert len(examples) == 5574 and sum(e.label for e in examples) == 747
    balanced = balance(examples, seed=123)
    assert [sum(e.label == i for e in balanced) for i in (0, 1)] == [747, 747]
    splits = split_examples(balanced, 0.7, 0.1, seed=123)
    assert {name: len(part) for name, part in splits.items()} == {"train": 1045, "val": 149, "test": 300}
    check_splits(splits, LABELS)


# ---------------------------------------------------------------- padding


def test_collate_pads_and_cuts_every_row_to_the_given_width() -> None:
    batch = collate_classification([[1, 2, 3], [4, 5, 6, 7, 8], [9]], [0, 1, 0], width=4)
    assert batch["input_ids"].tolist() == [[1, 2, 3, P], [4, 5, 6, 7], [9, P, P, P]]
    assert batch["lengths"].tolist() == [3, 4, 1]
    assert batch["labels"].tolist() == [0, 1, 0]


def test_collate_pads_per_batch_and_cuts_to_max_length() -> None:
    batch = collate_classification([[1, 2], [3, 4, 5]], [1, 0])
    assert batch["input_ids"].tolist() == [[1, 2, P], [3, 4, 5]]
    assert batch["lengths"].tolist() == [2, 3]
    cut = collate_classification([[1, 2], [3, 4, 5]], [1, 0], max_length=2)
    assert cut["input_ids"].tolist() == [[1, 2], [3, 4]] and cut["lengths"].tolist() == [2, 2]


def padding_data(tmp_path: Path) -> str:
    """Ten texts: train (the first 6, unshuffled) is at most 6 tokens long; test holds a 12-token text."""
    lengths = [2, 6, 3, 1, 4, 5, 2, 3, 12, 2]  # train: 0-5, val: 6-7, test: 8-9
    rows = [f"{LABELS[i % 2]}\t{letters(n)}" for i, n in enumerate(lengths)]
    return write(tmp_path, "pad.tsv", "\n".join(rows) + "\n")


def datamodule(path: str, **overrides: object) -> ClassificationDataModule:
    settings = {
        "shuffle": False,
        "batch_size": 2,
        "drop_last": False,
        "train_fraction": 0.6,
        "val_fraction": 0.2,
    }
    dm = ClassificationDataModule(labels=LABELS, path=path, **{**settings, **overrides})
    dm.setup("fit")
    return dm


def test_longest_train_padding_cuts_val_and_test_to_it(tmp_path: Path) -> None:
    dm = datamodule(padding_data(tmp_path))
    assert dm.width == dm.longest == 6 and dm.input_format() == {
        "padding": "longest_train",
        "width": 6,
        "max_length": None,
    }
    assert [len(part) for part in dm.splits.values()] == [6, 2, 2]
    test = next(iter(dm.test_dataloader()))
    long = gpt2_tokenizer().encode(letters(12))
    assert test["input_ids"].tolist() == [long[:6], gpt2_tokenizer().encode(letters(2)) + [P] * 4]
    assert test["lengths"].tolist() == [6, 2] and test["index"].tolist() == [0, 1]
    assert all(b["input_ids"].shape[1] == 6 for b in dm.train_dataloader())
    assert datamodule(padding_data(tmp_path), max_length=4).width == 4


def test_batch_padding_pads_to_the_longest_row_of_each_batch(tmp_path: Path) -> None:
    dm = datamodule(padding_data(tmp_path), padding="batch")
    assert dm.width is None and dm.longest == 12
    assert next(iter(dm.test_dataloader()))["input_ids"].shape == (2, 12)
    assert [b["input_ids"].shape[1] for b in dm.val_dataloader()] == [3]
    capped = datamodule(padding_data(tmp_path), padding="batch", max_length=5)
    assert capped.longest == 5
    assert next(iter(capped.test_dataloader()))["lengths"].tolist() == [5, 2]


# ---------------------------------------------------------------- the bundled sample


def test_bundled_sample_is_a_varied_third_spam_and_splits_cleanly() -> None:
    examples = load_examples(bundled_path("sample_spam.tsv"), LABELS)
    spam = sum(e.label for e in examples)
    assert 150 <= len(examples) <= 250 and 0.25 <= spam / len(examples) <= 0.4
    assert len({e.text.lower() for e in examples}) == len(examples)
    check_splits(split_examples(examples, 0.7, 0.1, seed=123), LABELS)


def test_bundled_sample_is_not_copied_from_the_uci_collection(shared_data) -> None:
    def norm(text: str) -> str:
        return " ".join(re.findall(r"[a-z0-9]+", text.lower()))

    uci = {norm(e.text) for e in load_examples(str(shared_data("SMSSpamCollection")), LABELS)}
    sample = [e.text for e in load_examples(bundled_path("sample_spam.tsv"), LABELS)]
    assert [text for text in sample if norm(text) in uci and len(norm(text).split()) > 3] == []
