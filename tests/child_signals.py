"""A child process started by a test gets a terminal user's signal dispositions.

A shell runs a background job (`cmd &`, CI's runners) with SIGINT ignored, and an ignored signal stays
ignored across exec: Python then installs no KeyboardInterrupt handler, and a test that sends the child
SIGINT waits for ever. Pass `preexec_fn=default_signal_handlers` to `subprocess.Popen`.
"""

from __future__ import annotations

import signal


def default_signal_handlers() -> None:
    """In the child, before exec: SIGINT and SIGTERM back to their default dispositions."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)
