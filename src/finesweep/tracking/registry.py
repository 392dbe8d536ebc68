"""The winner as an MLflow model: its weights and what its task adds, logged "from code" and registered."""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path
from typing import Optional

from mlflow.tracking import MlflowClient

from finesweep.adapters import mlflow_private
from finesweep.finetune.layout import best_weights, link_tree
from finesweep.journal.events import RegisterRequested
from finesweep.tasks import Task
from finesweep.tasks import registry as tasks

logger = logging.getLogger("finesweep.tracking")

REQUEST_KEY = "finesweep_request"
"""The model's metadata entry holding an example REST request (its task's ``request_example``)."""

ROUND_TAG = "finesweep.selection_round"
"""The model version's tag naming the selection round that registered it: a round registers once."""


def register(client: MlflowClient, uri: str, parent_id: str, event: RegisterRequested) -> str:
    """Log the winner as an MLflow "model from code" on the parent run and register it; return 'name/version'.

    The task that trained it packages it (its preprocessing files and serving metadata beside the weights) and
    says what the served model is (its predictor file, its signature).
    """
    import mlflow

    if event.checkpoint is None:
        raise ValueError(f"the winner of selection round {event.round} has no checkpoint to register")
    task = tasks.get(event.task)
    said = io.StringIO()
    # MLflow prints "Successfully registered model ..." straight to stderr; it belongs in the sweep's log.
    with tempfile.TemporaryDirectory(prefix="finesweep-model-") as folder, contextlib.redirect_stderr(said):
        package = model_package(Path(folder), best_weights(event.checkpoint), task, event)
        with mlflow_private.tracking_uri(uri), mlflow.start_run(run_id=parent_id):
            info = mlflow.pyfunc.log_model(
                name="model", python_model=str(task.predictor_source()), artifacts={"model": str(package)},
                registered_model_name=event.name, signature=task.signature(event.meta),
                pip_requirements=list(task.pip_requirements),
                metadata={REQUEST_KEY: task.request_example(event.meta)})
    if said.getvalue().strip():
        logger.info("MLflow: %s", " ".join(said.getvalue().split()))
    version = str(info.registered_model_version)
    client.set_model_version_tag(event.name, version, ROUND_TAG, str(event.round))
    return f"{event.name}/{version}"


def model_package(folder: Path, weights: Path, task: Task, event: RegisterRequested) -> Path:
    """The served model's folder: the checkpoint's weights linked (MLflow copies the package into its store),
    plus what the task adds (its preprocessing files, its serving metadata)."""
    link_tree(weights, folder)
    task.package(folder, event.preprocessor, event.meta)
    return folder


def registered_in_round(client: MlflowClient, parent_id: str, name: str, round_: int) -> Optional[str]:
    """``name/version`` of the model a selection round already registered (a repeated send), or None."""
    for version in client.search_model_versions(f"run_id = '{parent_id}'"):
        if version.tags.get(ROUND_TAG) == str(round_):
            return f"{name}/{version.version}"
    return None
