"""A train.py run's MLflow run, found again afterwards: evaluate.py adds its report and figures there."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def add_to_mlflow(
    config: dict[str, Any], files: list[Path], artifact_path: str | None, metrics: dict[str, float], step: int
) -> None:
    """Log `files` (under `artifact_path`) and `metrics` (at `step`) into the MLflow run of the train.py run
    whose resolved config is `config`, when it logged to MLflow; found by its `run_dir` tag."""
    for node in (config.get("logger") or {}).values():
        if isinstance(node, dict) and str(node.get("_target_")).endswith("MLFlowLogger"):
            try:
                run_id = find_run(node)
            except ImportError:
                log.warning('MLflow is not installed here: not logging there (pip install -e ".[track]")')
                return
            if run_id is not None:
                log_to_run(node["tracking_uri"], run_id, files, artifact_path, metrics, step)


def find_run(node: dict[str, Any]) -> str | None:
    """The id of the latest MLflow run tagged with the run's `run_dir`, in the experiment `node` names."""
    from mlflow import MlflowClient  # a tracker library: imported only for runs that used it

    client = MlflowClient(node["tracking_uri"])
    experiment = client.get_experiment_by_name(node["experiment_name"])
    run_dir = (node.get("tags") or {}).get("run_dir")
    if experiment is None or run_dir is None:
        log.warning("MLflow: no experiment %s with a run_dir tag; not logging there", node["experiment_name"])
        return None
    quote = '"' if "'" in run_dir else "'"
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.run_dir = {quote}{run_dir}{quote}",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        log.warning("MLflow: no run tagged run_dir=%s in experiment %s", run_dir, node["experiment_name"])
        return None
    return str(runs[0].info.run_id)


def log_to_run(
    tracking_uri: str,
    run_id: str,
    files: list[Path],
    artifact_path: str | None,
    metrics: dict[str, float],
    step: int,
) -> None:
    """Artifacts and metrics into an existing (finished) MLflow run."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(tracking_uri)
    for path in files:
        if path.is_file():
            client.log_artifact(run_id, str(path), artifact_path)
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(key, value, now, step) for key, value in metrics.items()])
    log.info("MLflow: added %d files and %d metrics to run %s", len(files), len(metrics), run_id)
