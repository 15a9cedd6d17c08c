"""Ctrl-C at an `input()` prompt, whichever thread the kernel hands SIGINT to.

A terminal's SIGINT goes to the process, and the kernel delivers it to any thread that does not block it.
Libraries start worker threads (OpenBLAS at numpy's import, OpenMP at torch's first parallel step); when one
of them takes the signal, Python only notes it, and the main thread, waiting in readline's `select()`,
is not interrupted: the Ctrl-C is lost until the next key. While the prompt waits, a watcher thread reads
each signal from Python's wakeup fd and, for SIGINT, nudges the main thread with SIGUSR1 (a no-op
handler): its EINTR makes `input()` run the pending SIGINT handler, which raises KeyboardInterrupt. A nudge
that lands just before the main thread enters its wait is lost too, so the watcher nudges again every
50 ms, for up to 2 s or until the block ends.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

NUDGES, NUDGE_EVERY_S = 40, 0.05


@contextmanager
def interruptible_prompt() -> Iterator[None]:
    """While the block runs, a Ctrl-C always reaches the main thread (see the module docstring). Does
    nothing off the main thread or without SIGUSR1 (Windows)."""
    nudge = getattr(signal, "SIGUSR1", None)
    if nudge is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    main = threading.main_thread().ident
    assert main is not None
    previous_fd = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    previous_handler = signal.signal(nudge, lambda signum, frame: None)

    ended = threading.Event()

    def watch() -> None:
        while data := os.read(read_end, 64):
            if signal.SIGINT not in data:
                continue
            for _ in range(NUDGES):
                signal.pthread_kill(main, nudge)
                if ended.wait(NUDGE_EVERY_S):
                    return

    watcher = threading.Thread(target=watch, name="sigint-to-main", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        ended.set()
        signal.set_wakeup_fd(previous_fd)
        os.close(write_end)  # the watcher reads end of file and stops
        watcher.join()
        os.close(read_end)
        signal.signal(nudge, previous_handler)
