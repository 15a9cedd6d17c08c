"""`python chat.py` as a user runs it: on a pseudo-terminal, with lines piped in, and with `prompt=`.

Where the property is the command's, not the process's (a conversation's forgetting, a classifier's
answers, the settings' errors), `chat_in_process` runs the command's `main` on the composed config
instead, with the same stdin, stdout, stderr and exit code: a process costs seconds of imports.
Expected answers come from `GPT.generate` on the same checkpoint in this process. The tiny quickstart
model answers greedily with newlines only, so the tests that must tell conversations apart sample with
a seed (the tokens are still exactly determined).
"""

from __future__ import annotations

import fcntl
import io
import os
import select
import signal
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir

from gpt_finetune.chat import PROMPT
from gpt_finetune.predict import literal_text_argv
from gpt_finetune.serving.conversation import prompt_tokens, stop_strings
from gpt_finetune.serving.loading import UsableModel, load_model
from gpt_finetune.serving.streaming import TextStream
from gpt_finetune.tokenizer import END_OF_TEXT, gpt2_tokenizer

ROOT = Path(__file__).resolve().parents[2]
GATED_CHAT = Path(__file__).resolve().parent / "gated_chat.py"
QUESTION = "Name a colour."
SAMPLED = {"temperature": 1.0, "seed": 5}
Message = dict[str, str]
# Where each prompt style opens the next user turn: an answer ends before either line (pinned here, not
# computed with the function under test).
ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)
STOPS = {
    "alpaca": [ALPACA_PREAMBLE, "### Instruction:"],
    "phi3": ["<|user|>"],
    "chatml": ["<|im_start|>user"],
}


def user(text: str) -> Message:
    return {"role": "user", "content": text}


def assistant(text: str) -> Message:
    return {"role": "assistant", "content": text}


def answer_tokens(model: UsableModel, messages: list[Message], **settings: Any) -> list[int]:
    """`GPT.generate`'s tokens for the conversation `messages` in the run's prompt style."""
    return model.gpt.generate([prompt_tokens(messages, model.prompt_style)], **settings)[0]


def streamed(tokens: list[int], stops: list[str]) -> tuple[list[str], str]:
    """What a TextStream prints after each token, and the whole answer (cut at a stop string)."""
    stream = TextStream(stops)
    pieces = [stream.feed(t) for t in tokens]
    stream.finish()
    return pieces, stream.text


def test_each_prompt_style_stops_where_its_next_turn_would_begin() -> None:
    assert {style: stop_strings(style) for style in STOPS} == STOPS
    tokenizer = gpt2_tokenizer()
    rambling = {
        "alpaca": "Blue.\n### Instruction:\nName another.",
        "phi3": "Blue.\n<|user|>\nName another.",
        "chatml": "Blue.\n<|im_start|>user\nName another.",
    }
    for style, text in rambling.items():
        assert streamed(tokenizer.encode(text, disallowed_special=()), STOPS[style])[1] == "Blue.\n"
    preamble = f"Blue.\n\n{ALPACA_PREAMBLE}\n\n### Instruction:\nName another."
    assert streamed(tokenizer.encode(preamble), STOPS["alpaca"])[1] == "Blue.\n\n"


def expected_answer(model: UsableModel, messages: list[Message], **settings: Any) -> str:
    """The answer chat.py gives in a conversation: the tokens up to the next turn's opening."""
    return streamed(answer_tokens(model, messages, **settings), STOPS[model.prompt_style])[1]


@pytest.fixture(scope="module")
def model(quickstart_run: Path) -> UsableModel:
    return load_model(run_dir=str(quickstart_run), device="cpu")


def chat_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return env | {"TERM": "dumb"} | extra


def run_chat(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """`python chat.py ARGS` with `input` piped to it (stdin not a terminal)."""
    return subprocess.run(
        [sys.executable, "chat.py", *args],
        cwd=ROOT,
        env=chat_env(),
        input=input or "",
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def chat_in_process(command_in_process, monkeypatch: pytest.MonkeyPatch) -> Any:
    """`chat_in_process(*args, input=...)`: `run_chat`'s result from chat's `main` in this process."""

    def run(*args: str, input: str = "") -> subprocess.CompletedProcess[str]:
        monkeypatch.setattr(sys, "stdin", io.StringIO(input))
        return command_in_process("chat", *args)

    return run


def take_terminal() -> None:
    """In the child: stdin's terminal becomes its controlling one (Ctrl-C = SIGINT); default SIGINT."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """A command on a pseudo-terminal: what it shows, and keys typed into it.

    `text` has newlines as `\\n` and leaves out the `^C` the terminal echoes for Ctrl-C.
    """

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.master, slave = os.openpty()
        self.process = subprocess.Popen(
            args, cwd=ROOT, env=env, stdin=slave, stdout=slave, stderr=slave,
            start_new_session=True, preexec_fn=take_terminal,
        )  # fmt: skip
        os.close(slave)
        self.shown = b""

    @property
    def text(self) -> str:
        return self.shown.decode("utf-8", "replace").replace("\r\n", "\n").replace("^C", "")

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def wait_for(self, text: str, after: int = 0, timeout: float = 120) -> None:
        """Read until `text` is shown (at or after character `after`); fail after `timeout` s."""
        deadline = time.monotonic() + timeout
        while text not in self.text[after:]:
            left = deadline - time.monotonic()
            assert left > 0, f"{text!r} not shown within {timeout} s; the terminal shows {self.text!r}"
            if select.select([self.master], [], [], min(left, 1.0))[0]:
                try:
                    data = os.read(self.master, 65536)
                except OSError:  # EIO: the command closed the terminal
                    data = b""
                assert data, f"exited (rc={self.process.poll()}) before showing {text!r}: {self.text!r}"
                self.shown += data

    def exit_code(self, timeout: float = 120) -> int:
        """Wait for the command to end, reading what it shows meanwhile; fail after `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            assert time.monotonic() < deadline, f"still running after {timeout} s: {self.text!r}"
            if not select.select([self.master], [], [], 1.0)[0]:
                if self.process.poll() is not None:
                    return self.process.returncode
                continue
            try:
                data = os.read(self.master, 65536)
            except OSError:
                data = b""
            if not data:
                return self.process.wait(timeout=60)
            self.shown += data

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        os.close(self.master)


@pytest.fixture
def gated_terminal(quickstart_run: Path, tmp_path: Path) -> Iterator[Any]:
    """`open(pause_at, release, *args)`: gated_chat.py on a terminal, paused after token `pause_at`."""
    terminals: list[Terminal] = []

    def open_terminal(pause_at: int, release: str, *args: str) -> Terminal:
        env = chat_env(CHAT_GATE_AT=str(pause_at), CHAT_GATE_DIR=str(tmp_path), CHAT_GATE_RELEASE=release)
        argv = [sys.executable, str(GATED_CHAT), f"run_dir={quickstart_run}", *args]
        terminals.append(Terminal(argv, env))
        return terminals[-1]

    yield open_terminal
    for terminal in terminals:
        terminal.close()


def wait_for_file(path: Path, terminal: Terminal, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert terminal.process.poll() is None, f"chat exited: {terminal.text!r}"
        assert time.monotonic() < deadline, f"generation never paused: {terminal.text!r}"
        time.sleep(0.05)


def first_visible(pieces: list[str]) -> int:
    """The number of tokens after which the streamed text holds three visible characters."""
    for k in range(1, len(pieces)):
        if len("".join("".join(pieces[:k]).split())) >= 3:
            return k
    raise AssertionError(f"the answer never shows three characters before its end: {pieces!r}")


def gated_answer(model: UsableModel) -> tuple[list[str], list[int], list[str], int]:
    """(settings args, the answer's tokens, what is printed per token, the token to pause after)."""
    args = ["generate.max_new_tokens=24", "generate.temperature=1.0", "generate.seed=5"]
    tokens = answer_tokens(model, [user(QUESTION)], max_new_tokens=24, **SAMPLED)
    pieces, _ = streamed(tokens, STOPS[model.prompt_style])
    return args, tokens, pieces, first_visible(pieces)


def ask(terminal: Terminal, question: str) -> int:
    """Type `question` at the prompt; where the answer will start in `terminal.text`."""
    terminal.wait_for(PROMPT)
    terminal.type(question + "\r")
    terminal.wait_for(question + "\n")
    return terminal.text.index(question + "\n") + len(question) + 1


def test_the_answer_streams_while_it_is_generated_and_ctrl_d_exits_0(
    model: UsableModel, gated_terminal: Any, tmp_path: Path
) -> None:
    args, _, pieces, k = gated_answer(model)
    full, so_far = "".join(pieces), "".join(pieces[:k])
    assert len(full.strip()) > len(so_far.strip())  # more is still to come at the pause
    terminal = gated_terminal(k, "file", *args)
    start = ask(terminal, QUESTION)
    wait_for_file(tmp_path / "paused", terminal)  # generation now waits, mid-answer
    terminal.wait_for(so_far, after=start)  # printed while generating, not at the end
    assert terminal.text[start:] == so_far  # and nothing else yet
    (tmp_path / "go").touch()
    terminal.wait_for(full + "\n" + PROMPT, after=start)
    terminal.type("\x04")  # Ctrl-D
    assert terminal.exit_code() == 0, terminal.text
    assert "Traceback" not in terminal.text


def test_ctrl_c_stops_the_answer_and_at_the_prompt_exits_130(
    model: UsableModel, gated_terminal: Any, tmp_path: Path
) -> None:
    args, tokens, pieces, k = gated_answer(model)
    stopped = streamed(tokens[: k + 1], STOPS[model.prompt_style])[1]
    assert len(stopped) < len("".join(pieces))
    terminal = gated_terminal(k, "sigint", *args)
    start = ask(terminal, QUESTION)
    wait_for_file(tmp_path / "paused", terminal)
    terminal.type("\x03")  # Ctrl-C while answering: the answer ends after the next token
    terminal.wait_for(stopped + "\n(stopped)\n" + PROMPT, after=start)
    assert terminal.text[start:] == stopped + "\n(stopped)\n" + PROMPT
    terminal.type("\x03")  # Ctrl-C at the prompt
    assert terminal.exit_code() == 130, terminal.text
    assert "Traceback" not in terminal.text


def test_piped_lines_are_turns_and_slash_commands_change_settings(
    model: UsableModel, quickstart_run: Path
) -> None:
    long = " ".join(["word"] * (model.gpt.config.context_length * 6 // 10))  # two do not fit
    a1 = expected_answer(model, [user(QUESTION)], max_new_tokens=12)  # greedy
    a2 = expected_answer(model, [user(QUESTION), assistant(a1), user(long)], max_new_tokens=12, **SAMPLED)
    a3 = expected_answer(model, [user(long)], max_new_tokens=12, **SAMPLED)  # after /reset
    a4 = expected_answer(
        model, [user(long), assistant(a3), user(QUESTION)], max_new_tokens=4, top_k=1, **SAMPLED
    )
    assert a1 != a2  # greedy, then sampled
    lines = [
        QUESTION, "/temperature 1", "/temperature -1", "/temperature 1e-40", "/seed 5", long, "/reset",
        long, "/top_k 1", "/top_k 0", "/seed 18446744073709551616", "/top_p 0", "/top_p 1", "/max_tokens 4",
        "/max_tokens many", "/bogus", "", QUESTION, "/quit", QUESTION,
    ]  # fmt: skip
    done = run_chat(f"run_dir={quickstart_run}", "generate.max_new_tokens=12", input="\n".join(lines) + "\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{a1}\n{a2}\n{a3}\n{a4}\n"  # nothing after /quit
    assert "forgot the oldest" not in done.stderr  # the second long turn fits: /reset forgot the first
    assert done.stderr.count("(conversation forgotten)") == 1
    use = "use 0 (greedy) or a value in [0.01, 2.0]; e.g. /temperature 0.7"
    assert f"/temperature: temperature=-1.0: {use}" in done.stderr
    assert f"/temperature: temperature=1e-40: {use}" in done.stderr
    assert "/top_k: top_k=0: use a positive integer up to the vocabulary size 50257" in done.stderr
    assert "/seed: seed=18446744073709551616: use an integer in [0, 2**63), or null" in done.stderr
    assert "/top_p: top_p=0.0: use a value in (0, 1], or null" in done.stderr
    assert "/max_tokens: 'many' is not a number" in done.stderr
    assert "unknown command /bogus; /help lists the commands" in done.stderr
    assert "(temperature 1, top_k 1, top_p 1, max_tokens 4, seed 5)" in done.stderr


def test_a_conversation_that_outgrows_the_context_forgets_its_oldest_turns(
    model: UsableModel, quickstart_run: Path, chat_in_process: Any
) -> None:
    context = model.gpt.config.context_length
    long = " ".join(["word"] * (context // 2 + 50))  # two of these do not fit
    first, second = f"{long} A", f"{long} B"
    a1 = expected_answer(model, [user(first)], max_new_tokens=4, **SAMPLED)
    a2 = expected_answer(model, [user(second)], max_new_tokens=4, **SAMPLED)  # the first exchange gone
    done = chat_in_process(
        f"run_dir={quickstart_run}", "generate.max_new_tokens=4", "generate.temperature=1", "generate.seed=5",
        input=f"{first}\n{second}\n",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{a1}\n{a2}\n"
    assert done.stderr.count("forgot the oldest 1 exchange(s)") == 1


TRICKY = 'Say "hi", it\'s ${x}: a=b, 100% \\o/ !'


@pytest.mark.parametrize(
    ("system", "settings", "as_a_process"), [(None, {}, False), ("Be brief, ${y}; 'ok'", SAMPLED, True)]
)
def test_prompt_answers_once_with_generates_tokens(
    model: UsableModel,
    quickstart_run: Path,
    system: str | None,
    settings: dict[str, Any],
    as_a_process: bool,
    chat_in_process: Any,
) -> None:
    messages = ([{"role": "system", "content": system}] if system else []) + [user(TRICKY)]
    tokens = answer_tokens(model, messages, max_new_tokens=16, **settings)
    text = gpt2_tokenizer().decode(tokens[:-1] if tokens[-1:] == [END_OF_TEXT] else tokens)
    args = [f"prompt={TRICKY}", "generate.max_new_tokens=16"]
    args += [f"system={system}"] if system else []
    args += [f"generate.{k}={v}" for k, v in settings.items()]
    done = (run_chat if as_a_process else chat_in_process)(f"run_dir={quickstart_run}", *args)
    assert done.returncode == 0, done.stderr
    assert done.stdout == text + "\n"


def test_prompt_and_system_reach_chat_verbatim() -> None:
    argv = literal_text_argv(
        ["chat.py", "run_dir=r", f"prompt={TRICKY}", f"system={TRICKY}!"], "prompt", "system"
    )
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("chat", overrides=argv[1:])
    assert (cfg.prompt, cfg.system, cfg.run_dir) == (TRICKY, TRICKY + "!", "r")


def test_a_classification_run_classifies_each_line(classify_run: Path, chat_in_process: Any) -> None:
    texts = ["WINNER!! Claim your free prize now, call 0800", "See you at lunch tomorrow?"]
    used = load_model(run_dir=str(classify_run), device="cpu")
    assert used.classifier is not None
    probs = used.classifier.predict_proba(texts)
    lines = [f"{used.labels[int(p.argmax())]}\t{float(p.max()):.4f}" for p in probs]
    done = chat_in_process(f"run_dir={classify_run}", input=f"{texts[0]}\n/temperature 1\n{texts[1]}\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == lines
    assert "/temperature is for instruction runs" in done.stderr
    once = chat_in_process(f"run_dir={classify_run}", f"prompt={texts[1]}")
    assert (once.returncode, once.stdout) == (0, lines[1] + "\n"), once.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run_dir=/nonexistent/run"], "error: run_dir=/nonexistent/run: no such directory"),
        (["run_dir=EMPTY"], "no checkpoints/*.ckpt; give the output folder of a train.py run"),
        (
            ["run_dir=EMPTY", "generate.top_k=0", "generate.temperature=-1"],
            "error: generate.temperature=-1: use 0 (greedy) or a value in [0.01, 2.0]; generate.top_k=0",
        ),
        (["run_dir=EMPTY", "dtype=fp16"], "error: dtype=fp16: use fp32 or bf16"),
        (
            ["run_dir=EMPTY", "generate.temperature=1e-40", "generate.seed=18446744073709551616"],
            "error: generate.temperature=1e-40: use 0 (greedy) or a value in [0.01, 2.0]; "
            "generate.seed=18446744073709551616: use an integer in [0, 2**63)",
        ),
    ],
)
def test_bad_input_is_one_error_line_and_exit_2(
    args: list[str], message: str, tmp_path: Path, chat_in_process: Any
) -> None:
    as_a_process = args == ["run_dir=/nonexistent/run"]  # the rest in-process: the same `main`
    done = (run_chat if as_a_process else chat_in_process)(*(a.replace("EMPTY", str(tmp_path)) for a in args))
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and message in done.stderr, done.stderr
    assert done.stdout == ""
