"""Jobs run on daemon threads, a bounded number at once: Ctrl-C leaves at once, not after the replies in
flight (a `ThreadPoolExecutor` joins its threads at exit, however long a request takes)."""

from __future__ import annotations

import threading
from collections.abc import Callable


class InFlight:
    """At most `limit` jobs running at once; the first exception a job raises is raised by `submit` or
    `wait` in the calling thread."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self._slots = threading.Semaphore(self.limit)
        self._failure: BaseException | None = None

    def submit(self, job: Callable[[], None]) -> None:
        """Start `job` once a slot is free (waits for one; Ctrl-C interrupts the wait)."""
        self._raise_failure()
        self._slots.acquire()
        self._raise_failure()
        threading.Thread(target=self._run, args=(job,), daemon=True).start()

    def wait(self) -> None:
        """Return once every submitted job has finished."""
        for _ in range(self.limit):
            self._slots.acquire()
        for _ in range(self.limit):
            self._slots.release()
        self._raise_failure()

    def _run(self, job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as error:
            if self._failure is None:
                self._failure = error
        finally:
            self._slots.release()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure
