"""Ctrl-C at chat's prompt ends it even when the kernel hands SIGINT to a library's worker thread.

Without `interruptible_prompt`, the program below waits in `input()` for ever: the signal is noted by a
thread that is not the main one, and the main thread's read is never interrupted (checked by hand).
"""

from __future__ import annotations

import subprocess
import sys

from child_signals import default_signal_handlers

PROGRAM = """
import signal, sys, threading, time
from gpt_finetune.serving.prompt_interrupt import interruptible_prompt

def worker():  # a library's thread that takes the terminal's SIGINT, once the prompt waits
    while not any(thread.name == "sigint-to-main" for thread in threading.enumerate()):
        time.sleep(0.01)  # (a SIGINT before the block starts is not what this tests)
    time.sleep(0.3)
    signal.pthread_kill(threading.get_ident(), signal.SIGINT)
    time.sleep(60)

threading.Thread(target=worker, daemon=True).start()
try:
    with interruptible_prompt():
        input()
except KeyboardInterrupt:
    sys.exit(130)
"""


def test_sigint_taken_by_another_thread_interrupts_the_prompt() -> None:
    # stdin stays open; SIGINT as a terminal user has it (a background shell, as CI may be, ignores it)
    process = subprocess.Popen(
        [sys.executable, "-c", PROGRAM], stdin=subprocess.PIPE, preexec_fn=default_signal_handlers
    )
    try:
        assert process.wait(timeout=30) == 130
    finally:
        process.kill()
        process.wait()
        assert process.stdin is not None
        process.stdin.close()
