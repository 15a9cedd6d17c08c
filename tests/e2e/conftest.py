"""The runs README's commands make, typed as shown in a scratch copy of the checkout (once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest
from readme_workspace import ReadmeWorkspace

QUICKSTART = ".venv/bin/python train.py experiment=quickstart"  # README's third set-up command
SPAM_QUICKSTART = "python train.py experiment=spam-quickstart"
WORKSPACE_FIXTURES = {"readme", "readme_quickstart", "readme_spam_quickstart"}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under `pytest -n 2`, the tests of README's workspace run on one worker (`--dist loadgroup`): its runs
    are trained once, and a test that counts the new folders under `outputs/runs/` sees only its own."""
    for item in items:
        if WORKSPACE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.xdist_group("readme"))


@pytest.fixture(scope="session")
def readme(tmp_path_factory: pytest.TempPathFactory) -> ReadmeWorkspace:
    """A scratch copy of the checkout where README's commands run as typed."""
    return ReadmeWorkspace.copy_of_checkout(tmp_path_factory.mktemp("readme") / "gpt-finetune")


@pytest.fixture(scope="session")
def readme_quickstart(readme: ReadmeWorkspace) -> Path:
    """The folder `python train.py experiment=quickstart` made under `outputs/runs/` (read-only)."""
    return readme.new_run(QUICKSTART)


@pytest.fixture(scope="session")
def readme_spam_quickstart(readme: ReadmeWorkspace) -> Path:
    """The folder `python train.py experiment=spam-quickstart` made under `outputs/runs/` (read-only)."""
    return readme.new_run(SPAM_QUICKSTART)
