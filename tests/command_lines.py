"""The command lines the documentation shows, and Hydra's composition of one as the entry point would do it.

`documented_commands()` collects every `python <script>.py ...` line of README.md (and docs/, once there):
fenced code blocks and inline code, `\\` continuations joined, comments cut, `<placeholders>` kept as one
word. `compose_command()` composes a line's config the way `python <script>.py ...` does before the job runs:
the entry point's argv handling, Hydra's composition with its own node, the run (or sweep job) folder as
`run_job` selects it, then the whole job config resolved, so a broken interpolation fails without training.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from gpt_finetune.predict import literal_text_argv
from gpt_finetune.renames import renamed_override_error

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("train", "evaluate", "predict", "chat", "serve", "export", "make_preferences")
# What each root script does to its argv before Hydra parses it (besides refusing renamed keys).
ARGV_HANDLING: dict[str, Callable[[list[str]], list[str]]] = {
    "chat": lambda argv: literal_text_argv(argv, "prompt", "system"),
    "predict": literal_text_argv,
}
COMMAND = re.compile(rf"(?:^|[\s(])(?:\S*/)?python3? ((?:{'|'.join(SCRIPTS)})\.py\b.*)")
PLACEHOLDER = re.compile(r"<[^<>\n]*>")
HYDRA_FLAGS = {"-m": 0, "--multirun": 0, "--cfg": 1, "-c": 1, "--resolve": 0, "--package": 1, "-p": 1}


@dataclass(frozen=True)
class Command:
    """One documented command line: where it is shown, the script and its arguments."""

    source: str  # file:line
    script: str  # "train"
    args: tuple[str, ...]

    @property
    def multirun(self) -> bool:
        return "-m" in self.args or "--multirun" in self.args

    @property
    def overrides(self) -> list[str]:
        """The arguments without Hydra's own flags (`-m`, `--cfg job`, ...)."""
        kept, skip = [], 0
        for arg in self.args:
            if skip:
                skip -= 1
            elif arg in HYDRA_FLAGS:
                skip = HYDRA_FLAGS[arg]
            elif arg.startswith("-"):
                raise ValueError(f"{self.source}: unknown flag {arg}; teach tests/command_lines.py about it")
            else:
                kept.append(arg)
        return kept

    def __str__(self) -> str:
        return f"{self.source}: python {self.script}.py {shlex.join(self.args)}"


def documented_commands(*paths: Path) -> list[Command]:
    """Every command line of the root scripts shown in `paths` (default: README.md and docs/**/*.md)."""
    files = paths or (ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md")))
    return [command for path in files for command in commands_in(path)]


def commands_in(path: Path) -> Iterator[Command]:
    """The commands of one Markdown file: each code block line and each inline code span."""
    lines = path.read_text().splitlines()
    in_block, number = False, 0
    while number < len(lines):
        line, start = lines[number], number + 1
        number += 1
        if line.lstrip().startswith("```"):
            in_block = not in_block
            continue
        if in_block:
            while line.rstrip().endswith("\\") and number < len(lines):
                line = line.rstrip()[:-1] + " " + lines[number].strip()
                number += 1
            texts = [line]
        else:
            texts = re.findall(r"`([^`]+)`", line)
        for text in texts:
            command = parse(text, f"{path.name}:{start}")
            if command is not None:
                yield command


def parse(text: str, source: str) -> Command | None:
    """`python train.py a=1 | ...  # comment` -> Command("train", ("a=1",)); None for other text."""
    match = COMMAND.search(PLACEHOLDER.sub("RUN", text))
    if match is None:
        return None
    words = shlex.split(match.group(1), comments=True)
    ends = [i for i, word in enumerate(words) if word in ("|", "&&", ";", ">", "2>&1")]
    words = words[: ends[0]] if ends else words
    return Command(source, words[0].removesuffix(".py"), tuple(words[1:]))


def script_overrides(command: Command) -> list[str]:
    """The overrides as the root script hands them to Hydra (renamed keys refused, verbatim texts quoted)."""
    renamed = renamed_override_error(command.args)
    if renamed is not None:
        raise AssertionError(f"{command}: {renamed}")
    return ARGV_HANDLING.get(command.script, lambda argv: argv)(command.overrides)


def swept(overrides: list[str]) -> list[list[str]]:
    """A multirun's jobs as Hydra's basic sweeper makes them: every combination of the comma lists."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def compose_command(command: Command) -> list[tuple[DictConfig, str]]:
    """(job config, output folder) for each job of `command`, resolved as `run_job` resolves them."""
    overrides = script_overrides(command)
    jobs = swept(overrides) if command.multirun else [overrides]
    composed, sweep_dir = [], None
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        for number, job in enumerate(jobs):
            cfg = compose(config_name=command.script, overrides=job, return_hydra_config=True)
            with read_write(cfg.hydra), open_dict(cfg.hydra):
                cfg.hydra.job.num, cfg.hydra.job.id = number, f"job{number}"  # as a launcher sets them
            HydraConfig.instance().set_config(cfg)
            if command.multirun:  # the launcher makes the sweep folder once, from the first job's config
                sweep_dir = sweep_dir or str(OmegaConf.select(cfg, "hydra.sweep.dir"))
                folder = f"{sweep_dir}/{OmegaConf.select(cfg, 'hydra.sweep.subdir')}"
            else:
                folder = str(OmegaConf.select(cfg, "hydra.run.dir"))
            with read_write(cfg.hydra), open_dict(cfg.hydra):
                cfg.hydra.runtime.output_dir = str(Path(folder).absolute())
            HydraConfig.instance().set_config(cfg)
            job_config = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
            OmegaConf.to_container(job_config, resolve=True, throw_on_missing=False)
            composed.append((job_config, folder))
    return composed


def run_in_process(
    script: str,
    main: Callable[[DictConfig], object],
    args: tuple[str, ...],
    capsys: pytest.CaptureFixture[str],
) -> subprocess.CompletedProcess[str]:
    """`python <script>.py ARGS` as a finished process would report it (exit code, stdout, stderr), from
    the command's `main` on the config `compose_command` composes: the command without a process's start."""
    [(cfg, _)] = compose_command(Command("in-process", script, args))
    capsys.readouterr()
    try:
        main(cfg)
        code = 0
    except SystemExit as stopped:
        code = stopped.code if isinstance(stopped.code, int) else 1
    out = capsys.readouterr()
    return subprocess.CompletedProcess([f"{script}.py", *args], code, out.out, out.err)


def train_in_process(*overrides: str) -> None:
    """`python train.py OVERRIDES`'s run, by the command's `main` in this process (no process start, no
    Hydra job log or .hydra/ folder: for trained fixtures, not for tests of the command line)."""
    from gpt_finetune.train import main  # Lightning: only for the tests that train

    [(cfg, _)] = compose_command(Command("fixture", "train", overrides))
    main(cfg)
