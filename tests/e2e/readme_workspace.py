"""README's command lines run as a user types them: in a scratch copy of the checkout's root, with no
override added, the runs landing in the default folders (`outputs/runs/<date>_<time>/`, `outputs/multirun/`).

Only the network is closed (any download goes to a closed local port), which is what "works offline" means.
A `<run>` placeholder (`outputs/runs/<run>`, `run_dir=RUN`) becomes the folder of the run the test names.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from command_lines import ROOT, SCRIPTS, documented_commands, parse

OFFLINE = {"HF_HUB_OFFLINE": "1", "https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"}
OFFLINE |= {"no_proxy": "", "NO_PROXY": ""}


@dataclass(frozen=True)
class ReadmeWorkspace:
    """A scratch copy of the checkout's root (root scripts, `conf/`); the package is the installed one."""

    root: Path

    @classmethod
    def copy_of_checkout(cls, destination: Path) -> ReadmeWorkspace:
        destination.mkdir(parents=True)
        for script in SCRIPTS:
            shutil.copy2(ROOT / f"{script}.py", destination)
        shutil.copytree(ROOT / "conf", destination / "conf")
        return cls(destination)

    def run(self, line: str, run: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
        """Run README's `line` (it must be shown there) here; `run` fills its `<run>` placeholder."""
        command = parse(line, "test")
        assert command is not None, line
        shown = {(c.script, c.args) for c in documented_commands()}
        assert (command.script, command.args) in shown, f"README no longer shows: {line}"
        args = [fill_placeholder(arg, run) for arg in command.args]
        env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | OFFLINE
        return subprocess.run(
            [sys.executable, f"{command.script}.py", *args],
            cwd=self.root,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def runs(self) -> set[Path]:
        """The run folders under `outputs/runs/`."""
        folder = self.root / "outputs" / "runs"
        return set(folder.iterdir()) if folder.is_dir() else set()

    def new_run(self, line: str, timeout: float = 600) -> Path:
        """Run README's training `line` and return the one new folder it made under `outputs/runs/`."""
        before = self.runs()
        done = self.run(line, timeout=timeout)
        assert done.returncode == 0, f"{line}\n{done.stderr[-3000:]}"
        made = self.runs() - before
        assert len(made) == 1, f"{line} made {sorted(made)} under outputs/runs/"
        return made.pop()


def fill_placeholder(arg: str, run: Path | None) -> str:
    """`run_dir=outputs/runs/RUN` or `run_dir=RUN` -> `run_dir=outputs/runs/<run's name>`."""
    if "RUN" not in arg:
        return arg
    assert run is not None, f"{arg} needs a run"
    key, _, value = arg.partition("=")
    return f"{key}=" + value.replace("outputs/runs/RUN", "RUN").replace("RUN", f"outputs/runs/{run.name}", 1)
