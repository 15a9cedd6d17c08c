"""`python train.py` on bad input: exit code 2, one `error: ...` line, no traceback, no artifacts.

Each case runs in-process: the config composed as `train.py` composes it, then the command's `main`. The
cases in `AS_A_PROCESS` run as `python train.py` too: a data file's error through the real process, the
renamed key (refused by the root script before Hydra) and the task/data mismatches (Hydra's files only)
as processes only, beside a successful run whose log counts the long records.
"""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from command_lines import Command, compose_command

from gpt_finetune.data.prompts import format_example
from gpt_finetune.tokenizer import gpt2_tokenizer
from gpt_finetune.train import main

ROOT = Path(__file__).resolve().parents[2]
FAST = ("model=tiny", "logger=none", "callbacks=none", "trainer=cpu", "trainer.max_epochs=1")
RECORD = {"instruction": "Name a colour.", "input": "", "output": "Blue."}
PAIR = {"instruction": "Name a colour.", "input": "", "chosen": "Blue, thank you.", "rejected": "Blue."}


@dataclass(frozen=True)
class Case:
    """Overrides and the fragments the error line must hold; `{dir}` is the case's folder, `{port}` a
    closed port. With `data`, that text is written to `{dir}/records.json` and passed as data.path."""

    overrides: tuple[str, ...]
    fragments: tuple[str, ...]
    data: str | None = None


CASES = {
    "malformed-json": Case(
        (),
        ("{dir}/records.json", "invalid JSON at line 1", "fix the file"),
        data='[{"instruction": "a", "output": }]',
    ),
    "missing-field": Case(
        (),
        ("{dir}/records.json", "record 1 has no 'output' field"),
        data=json.dumps([RECORD, {"instruction": "a"}]),
    ),
    "non-string-field": Case(
        (),
        ("{dir}/records.json", "record 0 field 'instruction' is a number", "make it a string"),
        data=json.dumps([{**RECORD, "instruction": 7}]),
    ),
    "one-object-not-a-list": Case(
        (),
        ("{dir}/records.json: holds one JSON object where a list of records belongs", "wrap the records"),
        data=json.dumps(RECORD),
    ),
    "empty-dataset": Case((), ("{dir}/records.json", "no records", "add at least one"), data="[]"),
    "empty-split": Case((), ("the test split is empty", "data.test_fraction"), data=json.dumps([RECORD] * 3)),
    "unknown-style": Case(("data=sample", "data.style=nope"), ("'nope'", "alpaca", "phi3")),
    "unknown-test-on": Case(("data=sample", "test_on=final"), ("test_on=final is not one of best, last",)),
    "renamed-key": Case(
        ("data=sample", "task.lr=1e-5"), ("task.lr was renamed to optimizer.lr; use optimizer.lr=1e-5",)
    ),
    "unknown-model-size": Case(
        ("data=sample", "model.size=gpt2-huge"), ("'gpt2-huge'", "gpt2-small", "gpt2-medium", "gpt2-xl")
    ),
    "unknown-precision": Case(("data=sample", "trainer.precision=fp8"), ("fp8", "32-true", "bf16-mixed")),
    "max-length-over-context": Case(
        ("data=sample", "data.max_length=5000"),
        ("data.max_length=5000", "context 1024", "lower data.max_length"),
    ),
    "dpo-task-on-instruction-data": Case(
        ("task=dpo", "data=sample"),
        ("task=dpo trains on preference pairs but data=sample holds none", "use data=preferences"),
    ),
    "instruct-task-on-preference-pairs": Case(
        ("data=preferences",),
        ("data=preferences holds preference pairs but task=instruct does not train on them", "use task=dpo"),
        data=json.dumps([PAIR]),
    ),
    "init-from-without-dpo": Case(
        ("data=sample", "init_from={dir}"), ("init_from={dir} starts a preference-tuning run", "use task=dpo")
    ),
    "init-from-nowhere": Case(
        ("task=dpo", "data=preferences", "init_from={dir}/nowhere"),
        ("init_from={dir}/nowhere: no such run dir or checkpoint", "instruction run"),
        data=json.dumps([PAIR]),
    ),
    "pair-without-rejected": Case(
        ("task=dpo", "data=preferences"),
        ("{dir}/records.json", "record 1 has no 'rejected' field", "instruction and chosen and rejected"),
        data=json.dumps([PAIR, {"instruction": "a", "chosen": "b"}]),
    ),
    "instruct-task-on-classification-data": Case(
        ("data=sample_spam",),
        (
            "data=sample_spam holds classification data but task=instruct needs instruction data",
            "use task=classify (or experiment=spam-quickstart)",
        ),
    ),
    "classify-task-on-instruction-data": Case(
        ("task=classify", "data=sample"),
        (
            "data=sample holds instruction data but task=classify needs classification data",
            "use task=instruct (or experiment=quickstart)",
        ),
    ),
    "unreachable-url": Case(
        ("data.path=http://127.0.0.1:{port}/x.json", "data.cache_dir={dir}/cache"),
        ("http://127.0.0.1:{port}/x.json", "cannot download", "data.path=FILE"),
    ),
}
MISMATCHES = ("instruct-task-on-classification-data", "classify-task-on-instruction-data")
# Run as `python train.py` too; "renamed-key" only so (the root script refuses it before Hydra composes).
AS_A_PROCESS = ("malformed-json", "renamed-key", *MISMATCHES)
# A successful run whose records are partly longer than data.max_length.
LONG_RECORDS = [
    {**RECORD, "instruction": f"Case {i}.", "output": "word " * (200 if i % 5 == 0 else 2)} for i in range(20)
]
MAX_LENGTH = 64


@dataclass(frozen=True)
class Started:
    """A run in flight: its folder, its future result, the fragments its error line must hold."""

    folder: Path
    result: Future[subprocess.CompletedProcess[str]]
    fragments: tuple[str, ...] = ()


Train = Callable[..., subprocess.CompletedProcess]


def fast_train(run_train: Train, run_dir: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    """`python train.py` with the fast settings into `run_dir`; loopback never proxied."""
    return run_train(*FAST, f"hydra.run.dir={run_dir}", *overrides, timeout=120, env={"no_proxy": "*"})


def start_long_records(pool: ThreadPoolExecutor, run_train: Train, folder: Path) -> Started:
    """A one-step run on LONG_RECORDS with data.max_length=MAX_LENGTH and no generation."""
    folder.mkdir()
    (folder / "records.json").write_text(json.dumps(LONG_RECORDS))
    overrides = (
        f"data.path={folder / 'records.json'}",
        f"data.max_length={MAX_LENGTH}",
        "data.batch_size=2",
        "generate.enabled=false",
        "++trainer.max_steps=1",  # conf/trainer has no max_steps key yet
    )
    return Started(folder, pool.submit(fast_train, run_train, folder / "run", *overrides))


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def runs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, run_train: Train
) -> Iterator[dict[str, Started]]:
    """The selected cases (and the long-records run) started at once, three at a time (~5 s each)."""
    root, port = tmp_path_factory.mktemp("cli"), closed_port()
    selected = {
        item.callspec.params["name"] if hasattr(item, "callspec") else "long-records"
        for item in request.session.items
        if getattr(item, "function", None)
        in (test_bad_input_as_a_process_exits_2, test_long_records_are_counted_in_the_log)
    }
    with ThreadPoolExecutor(max_workers=3) as pool:
        started = {}
        for name in AS_A_PROCESS:
            if name not in selected:
                continue
            folder = root / name
            overrides, fragments = prepared(name, folder, port)
            started[name] = Started(
                folder, pool.submit(fast_train, run_train, folder / "run", *overrides), fragments
            )
        if "long-records" in selected:
            started["long-records"] = start_long_records(pool, run_train, root / "long-records")
        yield started


def prepared(name: str, folder: Path, port: int) -> tuple[list[str], tuple[str, ...]]:
    """Case `name` set up in `folder` (made here, its data file written): its overrides and fragments."""
    case = CASES[name]
    folder.mkdir()
    overrides = [o.format(dir=folder, port=port) for o in case.overrides]
    if case.data is not None:
        (folder / "records.json").write_text(case.data)
        overrides.append(f"data.path={folder / 'records.json'}")
    return overrides, tuple(f.format(dir=folder, port=port) for f in case.fragments)


def check_one_error_line(
    code: object, stdout: str, stderr: str, fragments: tuple[str, ...], run_dir: Path
) -> None:
    """Exit code 2, no traceback, a last line `error: ...` holding every fragment, no run artifact."""
    assert code == 2, stderr[-3000:]
    assert "Traceback" not in stderr + stdout
    last = [line for line in stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error: ")
    for fragment in fragments:
        assert fragment in last
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "test_responses.json").exists()
    assert not list(run_dir.rglob("*.ckpt")) and not (run_dir / "checkpoints").exists()


# Not in-process: the renamed key (refused by the root script) and the mismatches (the test's composition
# resolves the whole config, which is what they break; train.py checks them first).
@pytest.mark.parametrize("name", [name for name in CASES if name not in ("renamed-key", *MISMATCHES)])
def test_bad_input_exits_2_with_one_error_line(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("no_proxy", "*")  # loopback never proxied
    overrides, fragments = prepared(name, tmp_path / name, closed_port())
    run_dir = tmp_path / name / "run"
    [(cfg, _)] = compose_command(Command(name, "train", (*FAST, *overrides, f"hydra.run.dir={run_dir}")))
    with pytest.raises(SystemExit) as stopped:
        main(cfg)
    out = capsys.readouterr()
    check_one_error_line(stopped.value.code, out.out, out.err, fragments, run_dir)


@pytest.mark.parametrize("name", AS_A_PROCESS)
def test_bad_input_as_a_process_exits_2(runs: dict[str, Started], name: str) -> None:
    done = runs[name].result.result()
    check_one_error_line(
        done.returncode, done.stdout, done.stderr, runs[name].fragments, runs[name].folder / "run"
    )


@pytest.mark.parametrize("name", MISMATCHES)
def test_task_data_mismatch_stops_before_the_run_writes_anything(runs: dict[str, Started], name: str) -> None:
    assert runs[name].result.result().returncode == 2
    assert sorted(p.name for p in (runs[name].folder / "run").iterdir()) == [".hydra", "train.log"]  # Hydra's


def test_long_records_are_counted_in_the_log(runs: dict[str, Started]) -> None:
    folder, done = runs["long-records"].folder, runs["long-records"].result.result()
    assert done.returncode == 0, done.stderr[-3000:]
    long = sum(len(gpt2_tokenizer().encode(format_example(r))) > MAX_LENGTH for r in LONG_RECORDS)
    assert long == 4
    message = f"{long} of {len(LONG_RECORDS)} records are longer than max_length={MAX_LENGTH}"
    assert message in done.stdout + done.stderr
    assert message in (folder / "run" / "train.log").read_text()
    assert (folder / "run" / "metrics.json").is_file()
