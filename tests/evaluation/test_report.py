"""`evaluate.py` on a real quickstart run: report.html (plot + table), loss.png, metrics, regeneration."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from matplotlib.image import imread
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gpt_finetune.evaluate import evaluate, main
from gpt_finetune.evaluation.report import RECORD_COLUMNS

ROOT = Path(__file__).resolve().parents[2]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ReportParser(HTMLParser):
    """Collects the <img> sources and, per table id, its rows of cell texts (header cells included)."""

    def __init__(self) -> None:
        super().__init__()
        self.images: dict[str, str] = {}
        self.tables: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "img":
            self.images[attributes.get("id") or ""] = attributes.get("src") or ""
        elif tag == "table":
            self._table = attributes.get("id") or ""
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self.tables[self._table][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


@pytest.fixture(scope="module")
def evaluated(
    quickstart_run: Path, tmp_path_factory: pytest.TempPathFactory, copy_run, evaluate_config
) -> Path:
    """A copy of the quickstart run, evaluated in-process."""
    run_dir = copy_run(quickstart_run, tmp_path_factory.mktemp("evaluated") / "run")
    evaluate(evaluate_config(f"run_dir={run_dir}"))
    return run_dir


def parse(path: Path) -> ReportParser:
    parser = ReportParser()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def test_report_embeds_the_loss_plot(evaluated: Path) -> None:
    source = parse(evaluated / "report.html").images["loss-curves"]
    prefix = "data:image/png;base64,"
    assert source.startswith(prefix)
    png = base64.b64decode(source[len(prefix) :], validate=True)
    assert png.startswith(PNG_SIGNATURE) and len(png) > 10_000
    assert png == (evaluated / "loss.png").read_bytes()
    pixels = imread(io.BytesIO(png), format="png")
    assert pixels.shape[0] > 200 and pixels.shape[1] > 300
    assert pixels.reshape(-1, pixels.shape[-1]).std(axis=0).max() > 0.05  # drawn on, not blank


def test_report_table_has_one_row_per_test_record(evaluated: Path) -> None:
    records = json.loads((evaluated / "test_responses.json").read_text())
    table = parse(evaluated / "report.html").tables["records"]
    header, rows = table[0], table[1:]
    assert tuple(header) == RECORD_COLUMNS
    assert len(rows) == len(records) == 12
    column = {name: i for i, name in enumerate(header)}
    per_record = json.loads((evaluated / "response_metrics.json").read_text())["per_record"]
    for row, record, scores in zip(rows, records, per_record, strict=True):
        assert row[column["Instruction"]] == record["instruction"] == scores["instruction"]
        assert row[column["Input"]] == record["input"]
        assert row[column["Expected"]] == record["output"]
        assert row[column["Model response"]] == record["model_response"]
        assert row[column["Exact match"]] == ("yes" if scores["exact_match"] else "no")
        assert row[column["ROUGE-L F1"]] == f"{scores['rouge_l_f1']:.4g}"  # this record's, not another's
        assert row[column["Tokens"]] == str(scores["response_tokens"])


def test_report_shows_config_and_final_metrics(evaluated: Path) -> None:
    html = (evaluated / "report.html").read_text(encoding="utf-8")
    assert "size: tiny" in html and "prompt_style: alpaca" in html
    train_metrics = dict(row for row in parse(evaluated / "report.html").tables["train-metrics"])
    saved = json.loads((evaluated / "metrics.json").read_text())
    assert float(train_metrics["test/loss"]) == pytest.approx(saved["test/loss"], rel=1e-3)
    assert "http://" not in html.replace("http://www.w3.org", "") and "<script" not in html  # self-contained


def test_metrics_file_agrees_with_the_run(evaluated: Path) -> None:
    metrics = json.loads((evaluated / "response_metrics.json").read_text())
    per_record = metrics["per_record"]
    assert metrics["records"] == len(per_record) == 12
    assert metrics["rouge_l_f1"] == pytest.approx(sum(r["rouge_l_f1"] for r in per_record) / 12)
    assert metrics["exact_match"] == pytest.approx(sum(r["exact_match"] for r in per_record) / 12)
    train = json.loads((evaluated / "metrics.json").read_text())
    assert metrics["stopped_fraction"] == pytest.approx(train["test/stopped_fraction"])
    assert metrics["source"] == "test_responses.json (reused)"
    events = EventAccumulator(str(evaluated / "tensorboard")).Reload()
    assert {"eval/rouge_l_f1", "eval/exact_match", "train/loss", "val/loss"} <= set(events.Tags()["scalars"])
    assert events.Scalars("eval/rouge_l_f1")[-1].value == pytest.approx(metrics["rouge_l_f1"], abs=1e-6)


def test_missing_responses_are_regenerated_like_training_did(quickstart_copy: Path, evaluate_config) -> None:
    run_dir = quickstart_copy
    original = json.loads((run_dir / "test_responses.json").read_text())
    (run_dir / "test_responses.json").unlink()
    evaluate(evaluate_config(f"run_dir={run_dir}", "device=cpu"))
    # Same best checkpoint, prompt style, split and greedy settings (from config.yaml): same responses.
    assert json.loads((run_dir / "test_responses.json").read_text()) == original
    assert json.loads((run_dir / "response_metrics.json").read_text())["source"].startswith("generated with")
    assert (run_dir / "report.html").is_file()


def file_digests(folder: Path, skip: str | None = None) -> dict[str, str]:
    """SHA-256 of each file under `folder` (symlinked folders followed) by relative path, but `skip`'s."""
    digests = {}
    for parent, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if Path(parent, d) != folder / (skip or "")]
        for name in files:
            path = Path(parent, name)
            digests[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def test_ckpt_path_writes_into_its_own_folder_and_never_over_the_runs_files(
    quickstart_copy: Path,
    evaluate_config,
    tmp_path: Path,
) -> None:
    run_dir = quickstart_copy
    evaluate(evaluate_config(f"run_dir={run_dir}"))  # the run's own report, metrics, TensorBoard figures
    before = file_digests(run_dir)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    evaluate(evaluate_config(f"ckpt_path={ckpt}", "device=cpu"))

    assert file_digests(run_dir, skip="eval") == before  # nothing of the run's rewritten, nothing added
    out = run_dir / "eval" / "last"
    assert {p.name for p in out.iterdir()} == {
        "test_responses.json", "response_metrics.json", "report.html", "loss.png", "tensorboard",
    }  # fmt: skip
    responses = json.loads((out / "test_responses.json").read_text())
    assert len(responses) == 12 and all(isinstance(r["model_response"], str) for r in responses)
    step = torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]
    metrics = json.loads((out / "response_metrics.json").read_text())
    assert (metrics["checkpoint"], metrics["global_step"]) == (str(ckpt), step)
    assert metrics["run_dir"] == str(run_dir)
    assert metrics["source"] == f"generated with {ckpt}" and metrics["records"] == 12
    assert "<title>Evaluation of run: last.ckpt</title>" in (out / "report.html").read_text(encoding="utf-8")
    events = EventAccumulator(str(out / "tensorboard")).Reload()
    [point] = events.Scalars("eval/rouge_l_f1")
    assert (point.step, point.value) == (step, pytest.approx(metrics["rouge_l_f1"], abs=1e-6))


@pytest.mark.slow
def test_cli_writes_into_the_run_dir_only(quickstart_copy: Path, tmp_path: Path) -> None:
    run_dir = quickstart_copy
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "evaluate.py"), f"run_dir={run_dir}"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert {"report.html", "loss.png", "response_metrics.json"} <= {p.name for p in run_dir.iterdir()}
    assert list(elsewhere.iterdir()) == []  # no outputs/ or .hydra/ where it was started


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        ((), ("run_dir=", "ckpt_path=")),
        (("run_dir={tmp}/nope",), ("{tmp}/nope", "no such directory")),
        (("ckpt_path={tmp}/nope.ckpt",), ("{tmp}/nope.ckpt", "no such checkpoint")),
        (("run_dir={tmp}",), ("no test_responses.json and no checkpoint",)),
    ],
    ids=["nothing", "missing-run-dir", "missing-ckpt", "empty-run-dir"],
)
def test_bad_input_is_one_error_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    evaluate_config,
    overrides: tuple[str, ...],
    fragments: tuple[str, ...],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(evaluate_config(*(o.format(tmp=tmp_path) for o in overrides)))
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "\n" not in error
    for fragment in fragments:
        assert fragment.format(tmp=tmp_path) in error
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_report_renders_in_headless_chromium(evaluated: Path, tmp_path: Path) -> None:
    screenshot = tmp_path / "report.png"
    command = [
        "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={screenshot}", "--window-size=1200,2000",
        (evaluated / "report.html").as_uri(),
    ]  # fmt: skip
    subprocess.run(command, capture_output=True, timeout=120, check=False)
    png = screenshot.read_bytes()
    assert png.startswith(PNG_SIGNATURE)
    pixels = imread(io.BytesIO(png), format="png")
    assert pixels.shape[:2] == (2000, 1200)
    assert pixels.reshape(-1, pixels.shape[-1]).std(axis=0).max() > 0.05  # not a blank page
