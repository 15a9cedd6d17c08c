"""`python tests/serving/gated_chat.py ARGS` is `python chat.py ARGS` with a gate in its generation.

After the token number `$CHAT_GATE_AT` has been handled (printed) by chat's `on_token`, generation waits
before the next step: it writes `$CHAT_GATE_DIR/paused`, then waits for `$CHAT_GATE_DIR/go`
(`CHAT_GATE_RELEASE=file`) or for chat's own Ctrl-C handler to have run (`CHAT_GATE_RELEASE=sigint`).
A test reads the terminal meanwhile: whatever was streamed is there, and nothing after it exists yet.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from gpt_finetune.model import generation

ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 120  # a test that never releases the gate must not leave a process behind for ever
real_generate = generation.generate


def wait_for_release(gate: Path) -> None:
    """Block until the test says go: a file appears, or SIGINT reached chat's handler."""
    (gate / "paused").touch()
    deadline = time.monotonic() + WAIT_S
    if os.environ.get("CHAT_GATE_RELEASE", "file") == "sigint":
        handled = threading.Event()
        chats = signal.getsignal(signal.SIGINT)
        assert callable(chats), "chat.py installs a SIGINT handler while it generates"

        def relay(signum: int, frame: Any) -> None:
            chats(signum, frame)
            handled.set()

        signal.signal(signal.SIGINT, relay)
        while not handled.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)
        signal.signal(signal.SIGINT, chats)
        return
    while not (gate / "go").exists() and time.monotonic() < deadline:
        time.sleep(0.01)


def gated_generate(*args: Any, **kwargs: Any) -> list[list[int]]:
    """`generate`, paused after token `$CHAT_GATE_AT` of its first call."""
    on_token, at, steps = kwargs["on_token"], int(os.environ["CHAT_GATE_AT"]), 0

    def gated(new: dict[int, int]) -> Any:
        nonlocal steps
        stopped = on_token(new)
        steps += 1
        if steps == at:
            wait_for_release(Path(os.environ["CHAT_GATE_DIR"]))
        return stopped

    return real_generate(*args, **{**kwargs, "on_token": gated})


if __name__ == "__main__":
    generation.generate = gated_generate  # GPT.generate looks it up on the module at each call
    sys.argv = [str(ROOT / "chat.py"), *sys.argv[1:]]
    runpy.run_path(str(ROOT / "chat.py"), run_name="__main__")
