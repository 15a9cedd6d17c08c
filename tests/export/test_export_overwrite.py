"""`export.py overwrite=true` never destroys the user's work: each refusal is one line, exit code 2, before
any load, with every file byte-identical afterwards; a failed final rename puts the previous export back."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from omegaconf import DictConfig

from gpt_finetune.export import command
from gpt_finetune.export.command import built_directory, main

Compose = Callable[..., DictConfig]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below `folder` (links followed) by relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def workspace(quickstart_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A user's project folder (the working directory) inside a home: a run under outputs/runs/ whose data
    file sits in data/, a base model in base/, another run's checkpoint and a git repository. Read-only."""
    home = tmp_path_factory.mktemp("home")
    project = home / "project"
    run = project / "outputs" / "runs" / "first"
    shutil.copytree(quickstart_run, run, ignore=shutil.ignore_patterns("tensorboard"))
    (project / "data").mkdir()
    (project / "data" / "mine.json").write_text("[]")
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"]["path"] = str(project / "data" / "mine.json")
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (project / "elsewhere" / "other-run" / "checkpoints").mkdir(parents=True)
    (project / "elsewhere" / "other-run" / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    (project / "base").mkdir()
    (project / "base" / "config.json").write_text("{}")
    (project / "repo" / ".git").mkdir(parents=True)
    (project / "repo" / "code.py").write_text("print()")
    (home / "notes.txt").write_text("keep me")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(home))
        patch.chdir(project)
        yield project


REFUSALS = {
    "the working directory": (("out=.",), "out=. is the working directory"),
    "the home directory": (("out=HOME",), "is the home directory"),
    "every run": (("out=outputs",), "out=outputs contains the run being exported"),
    "the run itself": (("out=outputs/runs/first",), "is the run being exported"),
    "the checkpoint's run": (
        ("run_dir=null", "ckpt_path=outputs/runs/first/checkpoints/last.ckpt", "out=outputs/runs"),
        "out=outputs/runs contains the checkpoint being exported",
    ),
    "the base weights": (("base_weights=base", "out=base"), "out=base is the weights in base_weights"),
    "the data": (("out=data",), "out=data contains the run's data (data.path)"),
    "a git repository": (("out=repo",), "out=repo holds a git repository"),
    "another run": (("out=elsewhere",), "out=elsewhere holds training checkpoints"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_overwrite_refuses_to_delete_user_work(
    workspace: Path, export_config: Compose, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    overrides, message = REFUSALS[case]
    home = workspace.parent
    before = snapshot(home)
    with pytest.raises(SystemExit) as exited:
        overrides = tuple(o.replace("=HOME", f"={home}") for o in overrides)
        main(export_config("run_dir=outputs/runs/first", *overrides, "overwrite=true"))
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert "choose a new or empty folder for the export" in err
    assert snapshot(home) == before


def test_overwrite_still_replaces_an_earlier_export(
    workspace: Path, export_config: Compose, tmp_path: Path
) -> None:
    out = tmp_path / "exports" / "gguf"
    out.mkdir(parents=True)
    (out / "model.gguf").write_bytes(b"an earlier export")
    main(export_config("run_dir=outputs/runs/first", "format=gguf", f"out={out}", "overwrite=true"))
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "model.gguf"]
    assert (out / "model.gguf").read_bytes()[:4] == b"GGUF"


def test_a_failed_final_rename_puts_the_previous_export_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.gguf").write_bytes(b"previous")
    real_replace = os.replace

    def replace(source: str | Path, destination: str | Path) -> None:
        if Path(source).name.endswith(".tmp"):  # the new export moving in
            raise OSError("device or resource busy")
        real_replace(source, destination)

    monkeypatch.setattr(command.os, "replace", replace)
    with pytest.raises(OSError, match="busy"), built_directory(out) as folder:
        (folder / "model.gguf").write_bytes(b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert snapshot(out) == {"model.gguf": b"previous"}
