"""Which model ``finesweep serve`` serves: every model URI form MLflow accepts, against a real registry."""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any, Dict

import pytest
from mlflow.tracking import MlflowClient

from finesweep.config.compose import compose
from finesweep.errors import UserError
from finesweep.journal.events import RegisterRequested, SweepEnded, sweep_started
from finesweep.journal.file import EventFile, read_events
from finesweep.journal.replay import new_sweep_id, sweep_dir
from finesweep.journal.writer import Journal
from finesweep.tasks.data import DataCache
from finesweep.tasks.text_predictor import ServingMeta
from finesweep.tracking import Projector, resolve_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Dict[str, Any]:
    """A store whose sweep registered 'demo' twice (versions 1 and 2), with alias 'champion' on version 1."""
    root = tmp_path_factory.mktemp("registry")
    composed = compose("demo", [])
    config = dataclasses.replace(composed.config, tracking=dataclasses.replace(
        composed.config.tracking, uri=f"sqlite:///{root / 'mlflow.db'}", artifact_root=str(root / "artifacts")),
        cluster=dataclasses.replace(composed.config.cluster, storage_path=str(root / "ray")))
    sweep = dataclasses.replace(composed, config=config)
    sweep_id = new_sweep_id()
    folder = sweep_dir(config.cluster.storage_path, sweep_id)
    events = EventFile(folder)
    events.append(sweep_started(sweep, DataCache({}).content_hash(), sweep_id, folder))
    journal = Journal(events, sweep_id, lambda event: None)
    checkpoint = root / "ckpt"
    shutil.copytree(tiny_model, checkpoint / "best")
    meta = ServingMeta(task="classification", label_names=("negative", "neutral", "positive"), text_column="text",
                       text_pair_column=None, max_length=32, objective="val/accuracy")
    for round_ in (0, 1):
        journal.record(RegisterRequested(round=round_, name="demo", checkpoint=str(checkpoint),
                                         preprocessor=str(tiny_model), meta=dataclasses.asdict(meta)))
    journal.record(SweepEnded(status="FINISHED"))
    projector = Projector(folder, config.tracking.uri)
    projector.sync(list(read_events(events.path)), deadline=time.monotonic() + 120)
    assert projector.cursor.registered == {"0": "demo/1", "1": "demo/2"}
    client = MlflowClient(config.tracking.uri)
    client.set_registered_model_alias("demo", "champion", "1")
    return {"uri": config.tracking.uri, "client": client, "parent": projector.parent_id}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("given,served", [
    (None, "models:/demo/2"), ("demo", "models:/demo/2"), ("demo/1", "models:/demo/1"),
    ("demo/latest", "models:/demo/latest"), ("demo@champion", "models:/demo@champion"),
    ("models:/demo", "models:/demo/2"), ("models:/demo/1", "models:/demo/1"),
    ("models:/demo/latest", "models:/demo/latest"), ("models:/demo@champion", "models:/demo@champion"),
], ids=lambda value: str(value))
def test_every_registry_form_mlflow_accepts(registry: Dict[str, Any], given: str, served: str) -> None:
    assert resolve_model(registry["uri"], given) == (served, ["text"])


@pytest.mark.timeout(300)
def test_a_logged_model_id_and_a_run_uri(registry: Dict[str, Any]) -> None:
    version = registry["client"].get_model_version("demo", "1")
    logged = str(version.source)
    assert logged.startswith("models:/m-"), "MLflow 3 registers a logged model, known by its id"
    assert resolve_model(registry["uri"], logged) == (logged, ["text"])
    run_uri = f"runs:/{registry['parent']}/model"
    assert resolve_model(registry["uri"], run_uri) == (run_uri, ["text"])


@pytest.mark.timeout(300)
@pytest.mark.parametrize("given,message", [
    ("demo/7", r"^model 'demo' has no version 7 \(versions: 1, 2\)\. Use one of those, or models:/demo/latest\.$"),
    ("models:/demo/7", r"^model 'demo' has no version 7 \(versions: 1, 2\)"),
    ("demo@nope", r"^model 'demo' has no alias 'nope' \(aliases: champion\)\."),
    ("nosuch", r"^no registered model 'nosuch' in sqlite:///.* \(registered: demo\)\. Name one of those, or point "
               r"MLFLOW_TRACKING_URI \(or tracking\.uri=\.\.\.\) at the store that has it\.$"),
], ids=["version", "uri-version", "alias", "name"])
def test_what_is_not_there_is_one_line_that_says_what_is(registry: Dict[str, Any], given: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        resolve_model(registry["uri"], given)


@pytest.mark.timeout(120)
def test_an_empty_store_says_how_to_get_a_model(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"^no sweep in sqlite:///.* has registered a model yet\."):
        resolve_model(f"sqlite:///{tmp_path / 'empty.db'}", None)
