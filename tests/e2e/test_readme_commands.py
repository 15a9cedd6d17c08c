"""README's commands, typed as shown (no `hydra.run.dir`, no test-only override), on the runs they make:
the quickstart and spam quickstart land in `outputs/runs/<date>_<time>/`; evaluate, chat, export and predict
work on them; resume continues in the run's own folder; a multirun writes one folder per job."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from readme_workspace import ReadmeWorkspace

pytestmark = pytest.mark.slow


def test_quickstart_lands_in_a_dated_run_folder(readme: ReadmeWorkspace, readme_quickstart: Path) -> None:
    assert readme_quickstart.parent == readme.root / "outputs" / "runs"
    for name in ("config.yaml", "metrics.json", "test_responses.json", "train.log", "checkpoints/last.ckpt"):
        assert (readme_quickstart / name).is_file(), name
    assert not (readme.root / "lightning_logs").exists()  # nothing outside the run folder


def test_evaluate_chat_and_export_work_on_the_quickstart_run(
    readme: ReadmeWorkspace, readme_quickstart: Path
) -> None:
    done = readme.run("python evaluate.py run_dir=outputs/runs/<run>", readme_quickstart)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((readme_quickstart / "response_metrics.json").read_text())
    assert metrics["records"] == 12 and (readme_quickstart / "report.html").is_file()

    done = readme.run('python chat.py run_dir=RUN prompt="Name three colours."', readme_quickstart)
    assert done.returncode == 0 and done.stdout.strip(), done.stderr[-3000:]

    done = readme.run("python export.py run_dir=outputs/runs/<run> out=exports/my-model", readme_quickstart)
    assert done.returncode == 0, done.stderr[-3000:]
    exported = {p.name for p in (readme.root / "exports/my-model").iterdir()}
    assert {"config.json", "model.safetensors"} <= exported
    line = "python export.py run_dir=RUN format=gguf out=exports/my-gguf dtype=q8_0"
    done = readme.run(line, readme_quickstart)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [p.suffix for p in (readme.root / "exports/my-gguf").iterdir()].count(".gguf") == 1


def test_predict_works_on_the_spam_quickstart_run(
    readme: ReadmeWorkspace, readme_spam_quickstart: Path
) -> None:
    line = 'python predict.py run_dir=outputs/runs/<run> text="WINNER! Claim your £1,000 prize now"'
    done = readme.run(line, readme_spam_quickstart)
    assert done.returncode == 0, done.stderr[-3000:]
    label, probability, text = done.stdout.strip().split("\t")
    assert label in ("ham", "spam") and 0.5 <= float(probability) <= 1
    assert text == "WINNER! Claim your £1,000 prize now"


def test_resume_continues_in_the_run_folder(readme: ReadmeWorkspace, readme_quickstart: Path) -> None:
    run = readme.root / "outputs" / "runs" / "interrupted"  # a copy: the other tests read the original
    shutil.copytree(readme_quickstart, run)
    (run / "metrics.json").unlink()
    before = readme.runs()
    done = readme.run("python train.py resume=outputs/runs/<run>", run)
    assert done.returncode == 0, done.stderr[-3000:]
    assert readme.runs() == before  # no new folder: the run went on in its own
    assert json.loads((run / "metrics.json").read_text())["global_step"] == 96
    assert "resuming" in (run / "train.log").read_text()


def test_a_multirun_writes_one_folder_per_job(readme: ReadmeWorkspace) -> None:
    done = readme.run("python train.py -m experiment=quickstart trainer.max_epochs=2 optimizer.lr=1e-3,3e-3")
    assert done.returncode == 0, done.stderr[-3000:]
    (sweep,) = (readme.root / "outputs" / "multirun").iterdir()
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == [
        "0_experiment=quickstart,optimizer.lr=0.001,trainer.max_epochs=2",
        "1_experiment=quickstart,optimizer.lr=0.003,trainer.max_epochs=2",
    ]
    for job in jobs:
        assert json.loads((sweep / job / "metrics.json").read_text())["global_step"] == 24
