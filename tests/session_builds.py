"""Trained fixtures built once per test session, also under `pytest -n N` (pytest-xdist's workers)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """The folder `name` that `build(folder)` makes once per test session: with `pytest -n N` the first
    worker to ask builds it while any other waits on its lock, then all read the same folder."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's folder, above each worker's own
    folder = root / name
    with FileLock(root / f"{name}.lock"):
        if not (root / f"{name}.built").is_file():
            shutil.rmtree(folder, ignore_errors=True)  # a failed build's leftovers: build again
            build(folder)
            (root / f"{name}.built").touch()
    return folder
