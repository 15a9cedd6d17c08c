"""One two-job multirun with every logger, from the default output folders as a user types it, read back
with each tracker's own reader: MLflow's client (one experiment, two runs with params, metric histories and
the run's files), TensorBoard's hparams plugin (two rows: the overrides and the final metrics), the CSV files
and W&B's offline run files; then evaluate.py adds its report to the job's MLflow run."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from mlflow.entities import Run
from tensorboard import context
from tensorboard.backend.event_processing.data_provider import MultiplexerDataProvider
from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
from tensorboard.plugins import base_plugin
from tensorboard.plugins.hparams import api_pb2, backend_context, list_session_groups

LOGGERS = "logger=[tensorboard,csv,mlflow,wandb]"
SHORT = (
    "experiment=quickstart",
    "trainer.max_epochs=1",
    "++trainer.max_steps=4",
    "generate.max_new_tokens=4",
)
# No key, no server: W&B offline, MLflow's default local store (an empty MLFLOW_TRACKING_URI counts as unset).
TRACKERS_ENV = {"WANDB_MODE": "offline", "MLFLOW_TRACKING_URI": "", "WANDB_API_KEY": ""}


@dataclass(frozen=True)
class Sweep:
    cwd: Path  # where the commands ran: outputs/ is here
    folder: Path  # outputs/multirun/<date>_<time>
    jobs: dict[float, Path]  # optimizer.lr -> the job's folder
    stderr: str


# Under `pytest -n 2` these tests run on one worker, so that `sweep` trains once.
pytestmark = pytest.mark.xdist_group("test_tracked_sweep")


@pytest.fixture(scope="module")
def sweep(run_train, tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    cwd = tmp_path_factory.mktemp("user")
    done = run_train("-m", *SHORT, LOGGERS, "optimizer.lr=1e-3,1e-4", cwd=cwd, env=TRACKERS_ENV, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    (folder,) = (cwd / "outputs" / "multirun").iterdir()
    jobs = {}
    for job in (p for p in folder.iterdir() if p.is_dir()):
        jobs[yaml.safe_load((job / "config.yaml").read_text())["optimizer"]["lr"]] = job
    assert sorted(jobs) == [1e-4, 1e-3]
    return Sweep(cwd, folder, jobs, done.stderr)


def mlflow_client(sweep: Sweep) -> MlflowClient:
    """MLflow's client on the default local store, outputs/mlflow/ beside the runs."""
    return MlflowClient(f"sqlite:///{sweep.cwd / 'outputs' / 'mlflow' / 'mlflow.db'}")


def sweep_runs(sweep: Sweep) -> dict[float, Run]:
    """The one query: every run of the sweep's experiment, with its params and final metrics."""
    client = mlflow_client(sweep)
    experiment = client.get_experiment_by_name(sweep.folder.name)
    assert experiment is not None, "the sweep's jobs go into an experiment named after its folder"
    runs = client.search_runs([experiment.experiment_id])
    return {float(run.data.params["optimizer.lr"]): run for run in runs}


def download_artifacts(client: MlflowClient, run: Run, destination: Path) -> Path:
    """A copy of the run's stored files in `destination` (made first: MLflow 2 does not make it)."""
    destination.mkdir(parents=True)
    return Path(client.download_artifacts(run.info.run_id, "", str(destination)))


@pytest.mark.slow
def test_a_multirun_is_one_mlflow_experiment_of_two_runs_with_params_metrics_and_files(sweep: Sweep) -> None:
    client, runs = mlflow_client(sweep), sweep_runs(sweep)
    assert sorted(runs) == [1e-4, 1e-3]
    for lr, run in runs.items():
        job = sweep.jobs[lr]
        metrics = json.loads((job / "metrics.json").read_text())
        assert run.info.status == "FINISHED" and run.info.run_name == job.name
        assert run.data.tags["run_dir"] == str(job)
        assert run.data.params["model.size"] == "tiny" and "logger.mlflow.tracking_uri" not in run.data.params
        losses = client.get_metric_history(run.info.run_id, "train/loss")
        assert [m.step for m in losses] == [0, 1, 2, 3]
        assert run.data.metrics["val/loss"] == pytest.approx(metrics["val/loss"])
        assert run.data.metrics["best_val/loss"] == pytest.approx(metrics["best_val/loss"])
        assert run.data.metrics["test/loss"] == pytest.approx(metrics["test/loss"])
        stored = download_artifacts(client, run, sweep.cwd / f"stored-{lr}")
        assert sorted(p.name for p in stored.iterdir()) == ["config.yaml", "metrics.json"]
        assert (stored / "metrics.json").read_text() == (job / "metrics.json").read_text()
    assert (sweep.cwd / "outputs" / "mlflow" / "artifacts").is_dir()  # beside the database, not ./mlruns
    assert not any(p.is_file() for p in (sweep.cwd / "mlruns").rglob("*"))  # MLflow < 3.9 makes it, empty
    assert "Traceback" not in sweep.stderr


def hparams_rows(logdir: Path) -> list[api_pb2.SessionGroup]:
    """The rows of TensorBoard's HPARAMS table for `tensorboard --logdir logdir`, from its own plugin."""
    multiplexer = EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    provider = MultiplexerDataProvider(multiplexer, str(logdir))
    plugin = backend_context.Context(
        base_plugin.TBContext(logdir=str(logdir), multiplexer=multiplexer, data_provider=provider)
    )
    request = api_pb2.ListSessionGroupsRequest(
        start_index=0, slice_size=100, allowed_statuses=[api_pb2.STATUS_UNKNOWN, api_pb2.STATUS_SUCCESS]
    )
    response = list_session_groups.Handler(context.RequestContext(), plugin, "", request).run()
    return list(response.session_groups)


@pytest.mark.slow
def test_tensorboard_hparams_has_a_row_per_job_with_its_overrides_and_final_metrics(sweep: Sweep) -> None:
    rows = hparams_rows(sweep.folder)
    assert len(rows) == 2
    for row in rows:
        lr = row.hparams["optimizer.lr"].number_value
        assert row.hparams["experiment"].string_value == "quickstart"
        assert row.hparams["trainer.max_steps"].number_value == 4 and "logger" not in row.hparams
        metrics = json.loads((sweep.jobs[lr] / "metrics.json").read_text())
        values = {m.name.tag: m.value for m in row.metric_values}
        for name in ("val/loss", "best_val/loss", "test/loss"):
            assert values[name] == pytest.approx(metrics[name], rel=1e-6), name


@pytest.mark.slow
def test_csv_and_wandb_offline_write_their_files_in_the_job_folder(sweep: Sweep) -> None:
    for job in sweep.jobs.values():
        header, *rows = (job / "csv" / "version_0" / "metrics.csv").read_text().splitlines()
        column = header.split(",").index("train/loss")
        assert sum(1 for row in rows if row.split(",")[column]) == 4
        assert yaml.safe_load((job / "csv" / "version_0" / "hparams.yaml").read_text())["optimizer.lr"] > 0
        (offline,) = (job / "wandb").glob("offline-run-*")
        assert len(list(offline.glob("run-*.wandb"))) == 1  # what `wandb sync` uploads
        for name in ("config.yaml", "metrics.json"):
            assert (offline / "files" / job.name / name).read_text() == (job / name).read_text()


@pytest.mark.slow
def test_evaluate_adds_its_report_and_scores_to_the_jobs_mlflow_run(run_train, sweep: Sweep) -> None:
    job = sweep.jobs[1e-3]
    done = run_train(f"run_dir='{job}'", script="evaluate.py", cwd=sweep.cwd, env=TRACKERS_ENV, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    run = mlflow_client(sweep).get_run(sweep_runs(sweep)[1e-3].info.run_id)
    stored = download_artifacts(mlflow_client(sweep), run, sweep.cwd / "evaluated")
    assert (stored / "report.html").read_text() == (job / "report.html").read_text()
    scores = json.loads((job / "response_metrics.json").read_text())
    assert run.data.metrics["eval/rouge_l_f1"] == pytest.approx(scores["rouge_l_f1"])
