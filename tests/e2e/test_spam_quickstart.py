"""`python train.py experiment=spam-quickstart` end to end, offline, then `predict.py` on its run folder."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[2]
# Any download attempt would go through a closed local port and fail: the run must not need one.
OFFLINE = {"HF_HUB_OFFLINE": "1", "https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"}
OFFLINE |= {"no_proxy": "", "NO_PROXY": ""}


@pytest.fixture(scope="session")
def run(run_train):
    """`run(script, *overrides)`: `python script overrides...`, any network access sent to a closed port."""
    return lambda script, *overrides, timeout=600: run_train(
        *overrides, script=script, env=OFFLINE, timeout=timeout
    )


@pytest.fixture(scope="module")
def run_dir(readme_spam_quickstart: Path) -> Path:
    """`python train.py experiment=spam-quickstart` as README shows it."""
    return readme_spam_quickstart


@pytest.mark.slow
def test_spam_quickstart_writes_every_artifact(run_dir: Path) -> None:
    assert "size: tiny" in (run_dir / "config.yaml").read_text()
    assert any(p.name.startswith("best-") for p in (run_dir / "checkpoints").iterdir())

    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("train/loss", "train/acc", "train/f1", "best_val/loss", "test/loss", "test/acc", "test/f1"):
        assert isinstance(metrics[key], float), key
    assert metrics["records"] == {"train": 140, "val": 20, "test": 40}
    assert metrics["test/acc"] >= 0.8  # separable enough to learn from random init in a minute

    with (run_dir / "test_predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    matrix = metrics["test/confusion_matrix"]  # rows: true label, columns: predicted
    assert [sum(row) for row in matrix] == [sum(r["label"] == name for r in rows) for name in ("ham", "spam")]
    assert len(rows) == 40 and list(rows[0]) == ["text", "label", "predicted", "prob_ham", "prob_spam"]
    correct = sum(r["label"] == r["predicted"] for r in rows)
    assert correct == matrix[0][0] + matrix[1][1] and correct / 40 == pytest.approx(metrics["test/acc"])
    assert (run_dir / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"

    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    assert {"train/loss", "val/loss", "val/acc", "val/f1", "test/acc"} <= set(events.Tags()["scalars"])
    assert "test/confusion_matrix" in events.Tags()["images"]


@pytest.mark.slow
def test_metrics_json_holds_the_final_val_figures(run_dir: Path) -> None:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"val/loss", "val/acc", "val/f1"} <= set(metrics)


@pytest.mark.slow
def test_predict_prints_a_label_and_probability_per_text(run_dir: Path, tmp_path: Path, run) -> None:
    text = "WINNER! You've won a £1,000 prize: call 09061 now, it's free"
    done = run("predict.py", f"run_dir={run_dir}", f"text={text}", timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    single = done.stdout.strip().splitlines()[-1]
    label, _, echoed = single.split("\t")
    assert label in ("ham", "spam") and echoed == text

    # The test texts as the run's test step scored them (test_predictions.csv, from the best checkpoint):
    # predict.py must give each the same label and the same top probability.
    with (run_dir / "test_predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    tested = [r for r in rows if r["text"].strip() and r["text"].splitlines() == [r["text"]]]
    tested = [r for r in tested if "\t" not in r["text"]]  # one text per line, its echo after two tabs
    assert len(tested) >= 30
    texts = tmp_path / "texts.txt"
    two = ["see you at lunch?", "FREE entry! Text WIN to 80000 to claim your prize"]
    texts.write_text(f"{two[0]}\n\n{two[1]}\n" + "".join(r["text"] + "\n" for r in tested) + text + "\n")
    done = run("predict.py", f"run_dir={run_dir}", f"file={texts}", timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert [line.split("\t", 2)[2] for line in lines] == [*two, *(r["text"] for r in tested), text]
    for line, row in zip(lines[2:-1], tested, strict=True):
        predicted, probability, _ = line.split("\t", 2)
        top = max(float(row["prob_ham"]), float(row["prob_spam"]))
        assert predicted == row["predicted"] and abs(float(probability) - top) <= 6e-5, (line, row)
    assert lines[-1] == single  # the same answer alone and in a batch
    assert not list(ROOT.glob("predict.log")) and not (ROOT / ".hydra").exists()  # predict writes nothing


def test_bad_label_exits_2_naming_file_line_and_fix(tmp_path: Path, command_in_process) -> None:
    data = tmp_path / "bad.tsv"
    data.write_text("ham\tsee you soon\nspam\tWIN now\nspma\tclaim your prize\n")
    overrides = ("experiment=spam-quickstart", f"data.path={data}", "logger=none", "trainer.max_epochs=1")
    # In-process (test_cli_errors runs a data file's error as a process): the command without the imports.
    done = command_in_process("train", *overrides, f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr + done.stdout
    last = [line for line in done.stderr.splitlines() if line.strip()][-1]
    fix = "fix the line or add the label to data.labels"
    assert last == f"error: {data}: line 3: label 'spma' is not one of ham, spam; {fix}"
    assert (
        not (tmp_path / "run" / "metrics.json").exists() and not (tmp_path / "run" / "checkpoints").exists()
    )
