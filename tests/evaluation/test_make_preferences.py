"""`make_preferences.py` against a loopback judge that speaks ollama and OpenAI chat: the book's polite /
impolite rule, replies left out and counted, an interrupted run resumed without asking twice, rank mode."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import torch
from child_signals import default_signal_handlers
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig

from gpt_finetune.config import bundled_path
from gpt_finetune.data.instructions import load_records
from gpt_finetune.errors import UserError
from gpt_finetune.make_preferences import main, make_preferences, output_path, records_digest
from gpt_finetune.preferences.pairs import tone_for
from gpt_finetune.preferences.progress import Progress, progress_path
from gpt_finetune.preferences.prompts import clean_reply, parse_choice, rewrite_prompt, unusable_rewrite

ROOT = Path(__file__).resolve().parents[2]
REFUSAL = "I'm sorry, but I can't help with that request."


@dataclass
class Judged:
    """What the loopback judge saw: requests received and answered per record, the prompts, a gate that
    holds every request after `hold_after` answers (never answering it) until `release` is set."""

    received: Counter[str] = field(default_factory=Counter)
    answered: Counter[str] = field(default_factory=Counter)
    prompts: list[str] = field(default_factory=list)
    hold_after: int | None = None
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)


def between(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0]


def judge_reply(prompt: str, seen: int) -> tuple[int, str]:
    """(HTTP status, reply) for a rewrite or rank prompt; the record's expected output says how to behave."""
    output = between(prompt, "correct output `", "`, ")
    if "which of these two responses is better" in prompt:
        if "PICK-B" in output:
            return 200, "B"
        if "WORDY-A" in output:
            return 200, "**Response A** is better: it answers the question."
        return 200, "Both responses have merits."  # never a choice, even when reminded
    polite = "more polite." in prompt
    behaviour = {
        "EMPTY": (200, "  "),
        "SAME": (200, f" {output}\n"),
        "REFUSE": (200, REFUSAL),
        "FAIL": (500, ""),
        "FLAKY": (500, "") if seen == 0 else (200, f"Kindly: {output}" if polite else f"Ugh. {output}"),
        "THINK": (
            200,
            f"<think>Be {'kind' if polite else 'rude'}.</think>\n`{'Kindly' if polite else 'Ugh'}: {output}`",
        ),
    }
    for marker, answer in behaviour.items():
        if marker in output:
            return answer
    return 200, f"Kindly: {output}" if polite else f"Ugh. {output}"


def make_handler(judged: Judged) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            prompt = body["messages"][0]["content"]
            key = between(prompt, "correct output `", "`, ")
            with judged.lock:
                seen = judged.received[key]
                judged.received[key] += 1
                judged.prompts.append(prompt)
                held = judged.hold_after is not None and sum(judged.answered.values()) >= judged.hold_after
            if body["model"] == "missing":
                return self.answer(404, {"error": "model 'missing' not found, try pulling it"})
            if held:  # in flight when the client is interrupted: never answered
                judged.release.wait(30)
                self.close_connection = True
                return
            status, text = judge_reply(prompt, seen)
            message = {"role": "assistant", "content": text}
            if self.path == "/api/chat":
                reply = {"model": body["model"], "message": message, "done": True}
            else:
                reply = {"choices": [{"index": 0, "message": message}]}
            if status == 200:
                with judged.lock:
                    judged.answered[key] += 1
            self.answer(status, reply)

        def answer(self, status: int, reply: dict[str, Any]) -> None:
            data = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def judge_server() -> Iterator[tuple[str, Judged]]:
    """A loopback judge on a free port, in a thread; yields (http://127.0.0.1:PORT, what it saw)."""
    judged = Judged()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(judged))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", judged
    judged.release.set()
    httpd.shutdown()
    httpd.server_close()


def write_records(path: Path, outputs: list[str]) -> Path:
    records = [
        {"instruction": f"Task {i}.", "input": "x" if i % 2 else "", "output": out}
        for i, out in enumerate(outputs)
    ]
    path.write_text(json.dumps(records))
    return path


def judge_overrides(base_url: str, protocol: str = "ollama") -> list[str]:
    url = base_url if protocol == "ollama" else f"{base_url}/v1"
    return [
        f"judge={protocol}", f"judge.base_url={url}", "judge.model=judge-model", "judge.timeout_s=5",
        "judge.retries=1", "judge.retry_backoff_s=0.01", "judge.concurrency=3",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def config() -> Callable[..., DictConfig]:
    """`config(*overrides)`: conf/make_preferences.yaml composed as the command line would."""

    def composed(*overrides: str) -> DictConfig:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            return compose(config_name="make_preferences", overrides=list(overrides))

    return composed


GOOD = [f"Answer number {i}." for i in range(6)]
BAD = ["EMPTY reply.", "SAME reply.", "REFUSE reply.", "FAIL always.", "FLAKY once.", "THINK first."]


@pytest.mark.parametrize("protocol", ["ollama", "openai"])
def test_pairs_follow_the_books_rule_and_bad_replies_are_left_out_and_counted(
    judge_server: tuple[str, Judged], protocol: str, tmp_path: Path, config: Callable[..., DictConfig]
) -> None:
    base_url, judged = judge_server
    source = write_records(tmp_path / "instructions.json", GOOD + BAD)
    summary = make_preferences(config(f"data.path={source}", *judge_overrides(base_url, protocol)))
    out = tmp_path / "instructions-with-preference.json"
    assert summary["out"] == str(out) and not progress_path(out).exists()
    pairs = json.loads(out.read_text())
    by_output = {p["output"]: p for p in pairs}
    assert set(by_output) == {*GOOD, "FLAKY once.", "THINK first."}
    for index, output in enumerate(GOOD + BAD):
        if output not in by_output:
            continue
        pair = by_output[output]
        assert list(pair) == ["instruction", "input", "output", "chosen", "rejected"]
        assert pair["instruction"] == f"Task {index}." and pair["input"] == ("x" if index % 2 else "")
        if tone_for(123, index) == "polite":  # the polite rewrite is chosen over the original
            assert (pair["chosen"], pair["rejected"]) == (f"Kindly: {output}", output)
        else:  # the original is chosen over the impolite rewrite
            assert (pair["chosen"], pair["rejected"]) == (output, f"Ugh. {output}")
    assert {tone_for(123, i) for i in range(len(GOOD))} == {"polite", "impolite"}  # both rules ran
    assert summary["left_out"] == {"empty": 1, "unchanged": 1, "refused": 1, "no reply": 1}
    assert summary["summary"] == (
        f"wrote 8 pairs to {out}; left out 4 (empty 1, no reply 1, refused 1, unchanged 1)"
    )
    # One request per record; `retries`=1 repeat for the HTTP 500s.
    assert judged.received == Counter({**dict.fromkeys(GOOD + BAD, 1), "FAIL always.": 2, "FLAKY once.": 2})


def test_the_rewrite_prompt_is_the_books() -> None:
    record = {"instruction": "Fix the spelling.", "input": "freind", "output": "friend"}
    assert rewrite_prompt(record, "impolite") == (
        "Given the input `Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nFix the spelling.\n\n### Input:\nfreind` and correct "
        "output `friend`, slightly rewrite the output to be more impolite. Keep the modification minimal. "
        "Only return the generated response and nothing else."
    )
    tones = [tone_for(123, i) for i in range(200)]
    assert tones == [tone_for(123, i) for i in range(200)] != [tone_for(7, i) for i in range(200)]
    assert 70 < tones.count("polite") < 130


@pytest.mark.parametrize(
    ("reply", "choice"),
    [
        ("A", "A"), ("B", "B"), (" b ", None), ("**B**", "B"), ("Response A.", "A"), ('"B"', "B"),
        ("The better response is B.", "B"), ("Answer: A", "A"),
        ("I prefer response B; response A errs.", "B"),
        ("B: it is correct.", "B"), ("<think>A? B?</think>A", "A"), ("A good try, both.", None),
        ("Response A and response B are equal.", None), ("Neither.", None), ("", None),
    ],
)  # fmt: skip
def test_parse_choice(reply: str, choice: str | None) -> None:
    assert parse_choice(reply) == choice


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ("", "empty"), ("  the   answer. ", "unchanged"), (REFUSAL, "refused"),
        ("I cannot create impolite content.", "refused"), ("As an AI, I won't.", "refused"),
        ("I'm sorry, but the answer is 4.", None), ("Kindly: the answer.", None),
    ],
)  # fmt: skip
def test_unusable_rewrites(reply: str, reason: str | None) -> None:
    assert unusable_rewrite(clean_reply(reply), "the answer.") == reason


def test_default_out_is_beside_the_input_or_here_for_a_url() -> None:
    assert output_path(None, "data/instruction-data.jsonl") == Path(
        "data/instruction-data-with-preference.json"
    )
    assert output_path(None, "https://h/x/instruction-data.json") == Path(
        "instruction-data-with-preference.json"
    )
    assert output_path("p.json", "a.json") == Path("p.json")
    bundled = bundled_path("sample_instructions.json")  # never written into the installed package
    assert output_path(None, bundled) == Path("sample_instructions-with-preference.json")


def shim(*args: str) -> subprocess.Popen[str]:
    """`python make_preferences.py ARGS` from the checkout, as a user runs it (default SIGINT handling)."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.Popen(
        [sys.executable, "make_preferences.py", *args], cwd=ROOT, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        preexec_fn=default_signal_handlers,
    )  # fmt: skip


def progress_lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


@pytest.mark.slow
def test_ctrl_c_then_the_same_command_resumes_without_asking_twice(
    judge_server: tuple[str, Judged], tmp_path: Path
) -> None:
    base_url, judged = judge_server
    outputs = [f"Answer number {i}." for i in range(10)]
    source = write_records(tmp_path / "data.json", outputs)
    out = tmp_path / "data-with-preference.json"
    args = [f"data.path={source}", *judge_overrides(base_url)]
    judged.hold_after = 4  # 4 or so replies (those in flight meanwhile get theirs), then none
    first = shim(*args)
    deadline = time.monotonic() + 60

    def answered() -> int:
        return sum(judged.answered.values())

    # Wait until every reply is in the progress file and 3 requests (judge.concurrency) are held.
    while (
        progress_lines(progress_path(out)) < 1 + answered() or sum(judged.received.values()) < answered() + 3
    ):
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.05)
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=30)
    done = answered()
    assert first.returncode == 130, err
    assert 4 <= done <= 6 and sum(judged.received.values()) == done + 3
    assert "Traceback" not in err and f"interrupted: rerun the same command to resume ({done} of 10" in err
    assert not out.exists() and progress_lines(progress_path(out)) == 1 + done

    judged.hold_after = None
    judged.release.set()
    second = shim(*args)
    stdout, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    assert f"wrote 10 pairs to {out}; {done} of 10 were done before this run" in stdout
    assert sorted(p["output"] for p in json.loads(out.read_text())) == sorted(outputs)
    assert not progress_path(out).exists()
    assert judged.answered == Counter(dict.fromkeys(outputs, 1))  # no record's reply was asked for twice
    assert sum(judged.received.values()) == 10 + 3  # only the 3 in flight were asked again


@pytest.mark.slow
def test_bad_input_is_one_error_line() -> None:
    done = shim("data.path=/no/such/records.json", "judge.base_url=http://127.0.0.1:9")
    _, err = done.communicate(timeout=60)
    assert done.returncode == 2 and err.count("\n") == 1
    assert err.startswith("error: /no/such/records.json: no such file; set data.path")


def test_a_progress_file_of_another_run_is_refused_in_one_line(
    judge_server: tuple[str, Judged], tmp_path: Path, config: Callable[..., DictConfig],
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    base_url, judged = judge_server
    source = write_records(tmp_path / "data.json", GOOD)
    first = config(f"data.path={source}", "limit=2", *judge_overrides(base_url))
    make_preferences(first)
    out = tmp_path / "data-with-preference.json"
    assert len(json.loads(out.read_text())) == 2
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # finished: the output is not replaced by accident
        main(first)
    assert exit_info.value.code == 2
    assert (
        capsys.readouterr().err
        == f"error: {out} exists; pass overwrite=true to replace it, or out=OTHER.json\n"
    )
    out.unlink()
    partial = progress_path(out)
    saved = Progress.open(partial, {"input": "0123456789abcdef", "mode": "polite", "seed": 7})
    saved.add({"index": 0, "left_out": "empty"})
    with pytest.raises(SystemExit) as exit_info:
        main(config(f"data.path={source}", *judge_overrides(base_url)))
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error
    assert error.startswith(f"error: {partial} belongs to another run (other records in data.path; seed 7")
    assert "seed 7 there, 123 now" in error and "delete it (or pass out=OTHER.json) to start over" in error
    assert sum(judged.received.values()) == 2  # nothing was asked for the refused run


def test_resuming_with_another_judge_is_refused_in_one_line(
    judge_server: tuple[str, Judged], tmp_path: Path, config: Callable[..., DictConfig],
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    base_url, judged = judge_server
    source = write_records(tmp_path / "data.json", GOOD)
    out = tmp_path / "data-with-preference.json"
    partial = progress_path(out)
    same = config(f"data.path={source}", *judge_overrides(base_url))
    header = {"input": records_digest(load_records(str(source))), "mode": "polite", "seed": 123}
    url = instantiate(same.judge).settings["url"]  # the endpoint asked, as the client normalises it
    asked = {"protocol": "ollama", "model": "judge-model", "url": url}
    done = {"instruction": "i", "input": "", "output": GOOD[0], "chosen": "c", "rejected": GOOD[0]}
    Progress.open(partial, header | {"judge": asked}).add({"index": 0, "pair": done})
    before = partial.read_bytes()
    for changed, difference in [
        ("judge.model=other-model", "'model': 'judge-model'"),
        ("judge=openai", "'protocol': 'ollama'"),
        ("judge.base_url=http://127.0.0.1:9", f"'url': '{url}'"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(config(f"data.path={source}", *judge_overrides(base_url), changed))
        assert exit_info.value.code == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and f"error: {partial} belongs to another run (judge {{" in error
        assert difference in error and "delete it (or pass out=OTHER.json) to start over" in error
        assert partial.read_bytes() == before and sum(judged.received.values()) == 0
    make_preferences(same)  # the same judge resumes: only the records not yet done are asked
    assert sum(judged.received.values()) == len(GOOD) - 1 and json.loads(out.read_text())[0] == done


def test_out_equal_to_the_input_is_refused(
    tmp_path: Path, config: Callable[..., DictConfig], capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_records(tmp_path / "data.json", GOOD)
    before = source.read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        main(
            config(
                f"data.path={source}", f"out={source}", "overwrite=true", "judge.base_url=http://127.0.0.1:9"
            )
        )
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert (
        error
        == f"error: out={source} is the input data.path; the pairs go to another file: pass out=OTHER.json\n"
    )
    assert source.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["data.json"]


def test_a_rejected_request_stops_the_run_in_one_line(
    judge_server: tuple[str, Judged], tmp_path: Path, config: Callable[..., DictConfig],
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    base_url, judged = judge_server
    source = write_records(tmp_path / "data.json", GOOD)
    with pytest.raises(SystemExit) as exit_info:
        main(config(f"data.path={source}", *judge_overrides(base_url), "judge.model=missing"))
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    partial = progress_path(tmp_path / "data-with-preference.json")
    assert error.startswith("error: the judge rejected the request: HTTP 404") and "not found" in error
    assert error.endswith('try pulling it"}') and not partial.exists()  # nothing done: nothing to resume
    assert sum(judged.received.values()) <= 3  # a 4xx is not repeated; the run stops at the first


def test_a_cut_short_last_line_is_dropped_on_resume(tmp_path: Path) -> None:
    path = tmp_path / "p.partial.jsonl"
    progress = Progress.open(path, {"mode": "polite"})
    progress.add({"index": 3, "pair": {"chosen": "a", "rejected": "b"}})
    with path.open("a") as file:
        file.write('{"index": 4, "pa')  # the process died mid-write
    again = Progress.open(path, {"mode": "polite"})
    assert list(again.done) == [3]
    again.add({"index": 4, "left_out": "empty"})
    assert list(Progress.open(path, {"mode": "polite"}).done) == [3, 4]
    with pytest.raises(UserError, match="mode 'polite' there, 'rank' now"):
        Progress.open(path, {"mode": "rank"})


@pytest.fixture(scope="module")
def tiny_instruct_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init tiny instruction checkpoint as train.py saves one (no training: fast)."""
    from gpt_finetune.tasks.instruct import InstructionTuning

    torch.manual_seed(0)
    task = InstructionTuning({"size": "tiny", "pretrained": False, "context_length": 128})
    checkpoint = {"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams)}
    task.on_save_checkpoint(checkpoint)
    path = tmp_path_factory.mktemp("instruct") / "tiny.ckpt"
    torch.save(checkpoint, path)
    return path


def test_rank_mode_chooses_the_response_the_judge_picks(
    judge_server: tuple[str, Judged], tiny_instruct_checkpoint: Path, tmp_path: Path,
    config: Callable[..., DictConfig],
) -> None:  # fmt: skip
    base_url, judged = judge_server
    outputs = ["PICK-B one.", "WORDY-A two.", "PICK-B three.", "UNSURE four."]
    source = write_records(tmp_path / "data.json", outputs)
    overrides = [
        f"data.path={source}", "mode=rank", f"ckpt_path={tiny_instruct_checkpoint}", "device=cpu",
        "generate.max_new_tokens=3", "generate.batch_size=3", *judge_overrides(base_url, "openai"),
    ]  # fmt: skip
    summary = make_preferences(config(*overrides))
    assert summary["written"] == 3 and summary["left_out"] == {"unparsable choice": 1}
    shown = {}  # the record's output -> (response A, response B) as the judge saw them
    for prompt in judged.prompts:
        a = between(prompt, "Response A: `", "`\n\nResponse B: `")
        b = between(prompt, "`\n\nResponse B: `", "`\n\nAnswer with")
        shown[between(prompt, "correct output `", "`, ")] = (a, b)
    for pair in json.loads((tmp_path / "data-with-preference.json").read_text()):
        a, b = shown[pair["output"]]
        assert a != b
        picked = "B" if "PICK-B" in pair["output"] else "A"
        assert (pair["chosen"], pair["rejected"]) == ((b, a) if picked == "B" else (a, b))
    assert judged.received["UNSURE four."] == 2  # asked once more, reminded, then left out
    # The samples are seeded per record: a second run (another batching) shows the judge the same pairs.
    judged.prompts.clear()
    make_preferences(config(*overrides, "generate.batch_size=4", f"out={tmp_path / 'again.json'}"))
    again = {
        between(p, "correct output `", "`, "): between(p, "Response A: `", "`\n\nResponse B")
        for p in judged.prompts
    }
    assert again == {output: shown[output][0] for output in outputs}


def test_rank_mode_needs_a_run_and_sampling(tmp_path: Path, config: Callable[..., DictConfig]) -> None:
    source = write_records(tmp_path / "data.json", GOOD)
    with pytest.raises(UserError) as raised:
        make_preferences(config(f"data.path={source}", "mode=rank", "generate.temperature=0", "limit=0"))
    message = str(raised.value)
    assert "pass run_dir=RUN or ckpt_path=FILE.ckpt" in message and "use a temperature > 0" in message
    assert "limit=0" in message and "\n" not in message
