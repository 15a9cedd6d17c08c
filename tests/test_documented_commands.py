"""Every command line the documentation shows composes as Hydra composes it for the user; its run folder is
the one the docs promise (`outputs/runs/<date>_<time>/`, the resumed run's own, a sweep's job folders)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from command_lines import COMMAND, ROOT, Command, commands_in, compose_command, documented_commands, parse

COMMANDS = documented_commands()
NEW_RUN = re.compile(r"outputs/runs/\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d")


def test_the_docs_show_commands_of_every_script() -> None:
    assert {c.script for c in COMMANDS} >= {"train", "evaluate", "predict", "chat", "serve", "export"}
    assert len(COMMANDS) >= 40
    assert any(c.multirun for c in COMMANDS)


@pytest.mark.parametrize("command", list({(c.script, c.args): c for c in COMMANDS}.values()), ids=str)
def test_documented_command_composes(command: Command) -> None:
    jobs = compose_command(command)
    assert jobs
    for _, folder in jobs:
        if command.script != "train":
            assert folder == "."  # the other commands write only where their keys say
        elif command.multirun:
            assert re.fullmatch(r"outputs/multirun/\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d/\d+_.+", folder), folder
        elif not any(a.startswith(("resume=", "hydra.run.dir=")) for a in command.args):
            assert NEW_RUN.fullmatch(folder), folder


PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_command_line_of_every_page_is_collected(page: Path) -> None:
    shown = [n for n, line in enumerate(page.read_text().splitlines(), 1) if COMMAND.search(line)]
    collected = {int(c.source.rsplit(":", 1)[1]) for c in commands_in(page)}
    assert [n for n in shown if n not in collected] == []  # e.g. a command in prose, outside code


def test_a_plain_run_gets_a_new_dated_folder() -> None:
    ((cfg, folder),) = compose_command(parse("python train.py experiment=quickstart", "test"))
    assert NEW_RUN.fullmatch(folder)
    assert cfg.output_dir == str(Path(folder).absolute()) and cfg.resume is None


def test_resume_continues_in_the_run_folder() -> None:
    line = "python train.py resume=outputs/runs/old trainer.max_epochs=3"
    ((cfg, folder),) = compose_command(parse(line, "t"))
    assert folder == "outputs/runs/old" and cfg.output_dir == str(Path("outputs/runs/old").absolute())


def test_a_multirun_gets_one_folder_per_job() -> None:
    line = "python train.py -m experiment=quickstart seed=1,2 trainer=cpu,default"
    jobs = compose_command(parse(line, "t"))
    folders = [folder for _, folder in jobs]
    assert len(set(folders)) == 4 and len({f.rsplit("/", 1)[0] for f in folders}) == 1
    assert folders[0].endswith("/0_experiment=quickstart,seed=1,trainer=cpu")
    assert sorted((cfg.seed, cfg.trainer.accelerator) for cfg, _ in jobs) == [
        (1, "auto"), (1, "cpu"), (2, "auto"), (2, "cpu"),
    ]  # fmt: skip


def test_a_command_is_found_in_code_blocks_and_inline_code(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "Run `python train.py resume=outputs/runs/<run>` to go on.\n\n"
        "```bash\n"
        "python train.py experiment=spam data.path=x.csv \\\n"
        "    'data.labels=[1,2]'   # a comment\n"
        "printf 'hi\\n' | python chat.py run_dir=RUN\n"
        "OPENAI_API_KEY=sk python evaluate.py run_dir=<the run> judge=openai\n"
        "python -m pytest\n"
        "```\n"
    )
    assert [(c.source, c.script, c.args) for c in documented_commands(page)] == [
        ("page.md:1", "train", ("resume=outputs/runs/RUN",)),
        ("page.md:4", "train", ("experiment=spam", "data.path=x.csv", "data.labels=[1,2]")),
        ("page.md:6", "chat", ("run_dir=RUN",)),
        ("page.md:7", "evaluate", ("run_dir=RUN", "judge=openai")),
    ]
