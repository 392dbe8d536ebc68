"""A sweep's journal sent to a real SQLite MLflow store: runs, statuses, metrics, winner, exactly once, through
failures."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE
from mlflow.tracking import MlflowClient

from finesweep.config import ExperimentConfig
from finesweep.config.compose import compose
from finesweep.config.sweep import git_state
from finesweep.journal.events import BestChosen, Note, RegisterRequested, SessionStarted, SweepEnded, sweep_started
from finesweep.journal.file import EventFile, read_events
from finesweep.journal.records import TrialRecord, TrialStatus
from finesweep.journal.replay import new_sweep_id, sweep_dir
from finesweep.journal.writer import Journal
from finesweep.tasks.data import DataCache
from finesweep.tasks.text_classification import TextClassification
from finesweep.tasks.text_predictor import ServingMeta
from finesweep.tracking import Cursor, Projector, list_sweeps


@pytest.fixture()
def sweep(tmp_path: Path) -> Any:
    composed = compose("demo", [])
    tracking = dataclasses.replace(composed.config.tracking, uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                                   artifact_root=str(tmp_path / "artifacts"))
    cluster = dataclasses.replace(composed.config.cluster, storage_path=str(tmp_path / "ray"))
    return dataclasses.replace(composed, config=dataclasses.replace(composed.config, tracking=tracking,
                                                                    cluster=cluster))


class Logged:
    """A sweep's journal with its writer, as the runner makes them; ``send`` hands everything to MLflow."""

    def __init__(self, sweep: Any) -> None:
        self.config: ExperimentConfig = sweep.config
        self.sweep_id = new_sweep_id()
        self.folder = sweep_dir(self.config.cluster.storage_path, self.sweep_id)
        self.log = EventFile(self.folder)
        self.log.append(sweep_started(sweep, DataCache({}).content_hash(), self.sweep_id, self.folder))
        self.journal = Journal(self.log, self.sweep_id, lambda event: None)

    def trial(self, number: int, values: List[float], status: TrialStatus, tmp: Path) -> TrialRecord:
        record = TrialRecord(f"id{number}", number, {"optim.lr": 10.0 ** -number, "data.batch_size": 16},
                             optuna_number=number)
        self.journal.trial_started(record)
        for epoch, value in enumerate(values, start=1):
            checkpoint = tmp / f"ckpt{number}-{epoch}"
            (checkpoint / "best").mkdir(parents=True)
            (checkpoint / "best" / "model.safetensors").write_bytes(b"weights")
            record.checkpoint = str(checkpoint)
            metrics = {"val/accuracy": value, "val/loss": 1 - value, "epoch": float(epoch)}
            record.add_result(metrics, "val/accuracy", self.config.objective.mode)
            self.journal.trial_result(record, metrics)
        record.status = status
        if status is TrialStatus.failed:
            record.failure, record.error = "error", "RuntimeError: boom"
        if status is not TrialStatus.running:
            self.journal.trial_ended(record)
        return record

    def best(self, record: TrialRecord) -> None:
        assert record.best_value is not None
        self.journal.record(BestChosen(round=0, number=record.number, params=record.params, value=record.best_value,
                                       epoch=record.best_epoch, metric=self.config.objective.metric,
                                       checkpoint=record.checkpoint))

    def send(self, uri: str = "") -> Projector:
        projector = Projector(self.folder, uri or self.config.tracking.uri)
        assert projector.sync(list(read_events(self.log.path)), deadline=time.monotonic() + 60) >= 0
        return projector


def children(client: MlflowClient, parent: str) -> Dict[str, Any]:
    experiment = client.get_run(parent).info.experiment_id
    runs = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent}'")
    return {r.info.run_name: r for r in runs}


def test_a_sweep_journal_becomes_one_parent_and_one_child_per_trial(sweep: Any, tmp_path: Path) -> None:
    logged = Logged(sweep)
    done = logged.trial(0, [0.5, 0.9, 0.7], TrialStatus.completed, tmp_path)
    logged.trial(1, [0.4], TrialStatus.early_stopped, tmp_path)
    logged.trial(2, [], TrialStatus.failed, tmp_path)
    logged.best(done)
    logged.journal.record(SweepEnded(status="FINISHED"))
    projector = logged.send()

    client = MlflowClient(sweep.config.tracking.uri)
    parent = client.get_run(projector.parent_id)
    assert parent.info.status == "FINISHED" and parent.info.run_name == "demo"
    assert parent.data.params["sampler"] == "tpe" and parent.data.params["objective"] == "max val/accuracy"
    assert parent.data.metrics["best/val/accuracy"] == 0.9, "the best epoch, not the last"
    assert parent.data.tags["best.optim.lr"] == "1.0" and parent.data.tags["finesweep.best_epoch"] == "2"
    assert parent.data.tags["finesweep.state"] == str(logged.folder)
    runs = children(client, projector.parent_id)
    assert sorted(runs) == ["trial-000", "trial-001", "trial-002"]
    assert parent.data.tags["finesweep.best_run_id"] == runs["trial-000"].info.run_id
    assert {n: r.data.tags["finesweep.trial_status"] for n, r in runs.items()} == {
        "trial-000": "completed", "trial-001": "early_stopped", "trial-002": "failed"}
    assert runs["trial-002"].info.status == "FAILED" and runs["trial-002"].data.tags["finesweep.failure"] == "error"
    assert runs["trial-001"].data.tags["finesweep.epochs_run"] == "1"
    assert runs["trial-000"].data.tags["finesweep.optuna_trial"] == "0"
    history = client.get_metric_history(runs["trial-000"].info.run_id, "val/accuracy")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(1, 0.5), (2, 0.9), (3, 0.7)]
    artifacts = {a.path for a in client.list_artifacts(projector.parent_id)}
    assert {"config.yaml", "sweep", "search_space.json", "best_model"} <= artifacts
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.name == "demo" and experiment.artifact_location == f"{tmp_path / 'artifacts'}/demo"
    view = json.loads(experiment.tags["mlflow.sharedViewState.finesweep"])
    assert view["searchFilter"] == f"tags.`mlflow.parentRunId` = '{projector.parent_id}'", "the latest sweep's trials"
    assert (view["orderByKey"], view["orderByAsc"]) == ("metrics.`val/accuracy`", False), "best first"
    assert view["columnOrder"][:2] == ["tags.`finesweep.trial_status`", "metrics.`val/accuracy`"]
    assert Cursor.load(logged.folder).sent == logged.log.count

    rows = list_sweeps(sweep.config.tracking.uri)
    assert len(rows) == 1 and rows[0].best_value == 0.9 and rows[0].state == str(logged.folder)
    assert (rows[0].counts["completed"], rows[0].counts["early_stopped"], rows[0].counts["failed"]) == (1, 1, 1)


def test_sending_the_journal_again_changes_nothing(sweep: Any, tmp_path: Path) -> None:
    """A crash between sending an event and saving the cursor sends it again: it must not count twice."""
    logged = Logged(sweep)
    logged.trial(0, [0.5, 0.9], TrialStatus.completed, tmp_path)
    logged.journal.record(SweepEnded(status="FINISHED"))
    first = logged.send()
    (logged.folder / "mlflow.json").unlink()  # forget everything that was sent: the worst case
    second = logged.send()
    assert second.parent_id == first.parent_id, "the parent run is found again by its run key, not created twice"
    client = MlflowClient(sweep.config.tracking.uri)
    runs = children(client, first.parent_id)
    assert len(runs) == 1
    steps = [m.step for m in client.get_metric_history(runs["trial-000"].info.run_id, "val/accuracy")]
    assert sorted(steps) == [1, 2], "no duplicate (key, step) pair"


def test_a_trial_that_goes_on_keeps_its_run(sweep: Any, tmp_path: Path) -> None:
    logged = Logged(sweep)
    record = logged.trial(0, [0.5], TrialStatus.running, tmp_path)
    logged.journal.trial_interrupted(record)
    logged.journal.record(SweepEnded(status="KILLED"))
    projector = logged.send()
    client = MlflowClient(sweep.config.tracking.uri)
    assert client.get_run(projector.parent_id).info.status == "KILLED"
    run = children(client, projector.parent_id)["trial-000"]
    assert run.info.status == "KILLED" and run.data.tags["finesweep.trial_status"] == "interrupted"

    record.attempts, record.params = 2, {**record.params, "data.batch_size": 8}  # e.g. retried after an OOM
    logged.journal.record(SessionStarted(session=2))
    logged.journal.trial_started(record)
    metrics = {"val/accuracy": 0.8, "val/loss": 0.2, "epoch": 2.0}
    record.add_result(metrics, "val/accuracy", sweep.config.objective.mode)
    logged.journal.trial_result(record, metrics)
    record.status = TrialStatus.completed
    logged.journal.trial_ended(record)
    logged.journal.record(SweepEnded(status="FINISHED"))
    projector = logged.send()
    runs = children(client, projector.parent_id)
    assert list(runs) == ["trial-000"], "the same run, re-attached"
    run = runs["trial-000"]
    assert run.info.status == "FINISHED" and run.data.tags["finesweep.attempts"] == "2"
    assert run.data.params["data.batch_size"] == "16" and run.data.params["attempt2.data.batch_size"] == "8"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val/accuracy")) == [1, 2]
    assert client.get_run(projector.parent_id).info.status == "FINISHED"


def test_transient_errors_are_retried_and_refusals_skipped(sweep: Any, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    logged = Logged(sweep)
    logged.trial(0, [0.5], TrialStatus.completed, tmp_path)
    projector = Projector(logged.folder, sweep.config.tracking.uri, retry_cap=0.05)
    real = projector.client.log_batch
    calls: List[str] = []

    def flaky(run_id: str, metrics: Any = (), params: Any = (), tags: Any = ()) -> None:
        if metrics and len(calls) < 2:
            calls.append("down")
            raise MlflowException("API request failed: Connection refused", error_code=INTERNAL_ERROR)
        return real(run_id, metrics=metrics, params=params, tags=tags)

    monkeypatch.setattr(projector.client, "log_batch", flaky)
    events = list(read_events(logged.log.path))
    assert projector.sync(events, deadline=time.monotonic() + 30) == len(events)
    assert calls == ["down", "down"] and projector.cursor.skipped == []
    run = children(MlflowClient(sweep.config.tracking.uri), projector.parent_id)["trial-000"]
    assert [m.value for m in MlflowClient(sweep.config.tracking.uri).get_metric_history(run.info.run_id,
                                                                                        "val/accuracy")] == [0.5]

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise MlflowException("Changing param values is not allowed", error_code=INVALID_PARAMETER_VALUE)

    logged.journal.record(Note(tag="finesweep.selection_error", text="x"))
    monkeypatch.setattr(projector.client, "set_tag", refuse)
    assert projector.sync(list(read_events(logged.log.path)), deadline=time.monotonic() + 30) == 1
    assert projector.cursor.skipped == [logged.log.count - 1], "a refusal is logged and skipped, not retried forever"


def test_an_unreachable_store_keeps_the_events_for_later(sweep: Any, tmp_path: Path) -> None:
    logged = Logged(sweep)
    logged.trial(0, [0.5], TrialStatus.completed, tmp_path)
    down = Projector(logged.folder, "http://127.0.0.1:9", retry_cap=0.1)  # port 9: nothing listens
    events = list(read_events(logged.log.path))
    assert down.sync(events, deadline=time.monotonic() + 1.5) == 0
    assert down.waiting == "Connection refused"
    assert Cursor.load(logged.folder).sent == 0
    up = logged.send()
    assert up.cursor.sent == len(events) and len(children(MlflowClient(sweep.config.tracking.uri),
                                                          up.parent_id)) == 1


def test_the_end_waits_for_a_slow_store_while_it_makes_progress(sweep: Any, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    logged = Logged(sweep)
    for number in range(3):
        logged.trial(number, [0.5, 0.6], TrialStatus.completed, tmp_path)
    projector = Projector(logged.folder, sweep.config.tracking.uri)
    assert projector.prepare(sweep.config.experiment_name, sweep.config.tracking.artifact_root)  # as the runner does
    real = projector._apply

    def slow(event: Any) -> None:  # a server working through a backlog: 0.3 s an event
        time.sleep(0.3)
        real(event)

    monkeypatch.setattr(projector, "_apply", slow)
    events = list(read_events(logged.log.path))
    assert len(events) * 0.3 > 3, "the backlog takes longer than the timeout below"
    projector.start(events)
    started = time.monotonic()
    assert projector.drain(timeout=1.0), "events kept going through: the end waits for them"
    assert projector.cursor.sent == len(events) and time.monotonic() - started > 2
    projector.close()

    stuck = Logged(sweep)
    stuck.trial(0, [0.5], TrialStatus.completed, tmp_path / "stuck")
    down = Projector(stuck.folder, "http://127.0.0.1:9", retry_cap=0.1)  # port 9: nothing listens
    down.start(list(read_events(stuck.log.path)))
    started = time.monotonic()
    assert not down.drain(timeout=1.0) and time.monotonic() - started < 3, "no progress: it gives up in time"
    down.close()


def test_git_state_outside_a_repo(tmp_path: Path) -> None:
    assert git_state(tmp_path) == ("unknown", "unknown")


def test_registered_model_reloads_and_predicts(sweep: Any, tiny_model: Path, tmp_path: Path) -> None:
    import shutil

    import mlflow
    import pandas as pd
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    logged = Logged(sweep)
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(tiny_model, checkpoint / "best")
    meta = ServingMeta(task="classification", label_names=("negative", "neutral", "positive"), text_column="text",
                       text_pair_column=None, max_length=32, objective="val/accuracy")
    for _ in range(2):  # the same round twice (a replay after a crash) registers one version
        logged.journal.record(RegisterRequested(round=0, name="demo", checkpoint=str(checkpoint),
                                                preprocessor=str(tiny_model), meta=dataclasses.asdict(meta)))
    projector = logged.send()
    assert projector.cursor.registered == {"0": "demo/1"}
    mlflow.set_tracking_uri(sweep.config.tracking.uri)
    model = mlflow.pyfunc.load_model("models:/demo/1")
    texts = ["the movie was good", "a sad awful day"]
    predicted = model.predict(pd.DataFrame({"text": texts}))
    assert list(predicted.columns) == ["label", "score"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    reference = AutoModelForSequenceClassification.from_pretrained(tiny_model).eval()
    with torch.no_grad():
        logits = reference(**tokenizer(texts, padding=True, return_tensors="pt")).logits
    assert list(predicted["label"]) == [meta.label_names[i] for i in logits.argmax(dim=1).tolist()]
    client = MlflowClient(sweep.config.tracking.uri)
    assert [str(v.version) for v in client.search_model_versions("name = 'demo'")] == ["1"]
    assert client.get_run(projector.parent_id).data.tags["finesweep.registered_model"] == "demo/1"


def test_the_model_package_links_the_weights_and_never_writes_through_a_link(tiny_model: Path, tmp_path: Path) -> None:
    from finesweep.journal.events import RegisterRequested
    from finesweep.tasks.text_predictor import META_FILE
    from finesweep.tracking.registry import model_package

    weights = tmp_path / "ckpt" / "best"
    weights.mkdir(parents=True)
    (weights / "model.safetensors").write_bytes(b"weights" * 100)
    (weights / "tokenizer_config.json").write_text("the checkpoint's own")  # a name the tokenizer writes too
    package = tmp_path / "package"
    package.mkdir()
    meta = ServingMeta(task="classification", label_names=("a", "b"), text_column="text", text_pair_column=None,
                       max_length=16, objective="val/accuracy")
    event = RegisterRequested(round=0, name="demo", checkpoint=str(weights.parent), preprocessor=str(tiny_model),
                              meta=dataclasses.asdict(meta))
    model_package(package, weights, TextClassification(), event)
    assert (package / "model.safetensors").stat().st_ino == (weights / "model.safetensors").stat().st_ino, "linked"
    assert (weights / "tokenizer_config.json").read_text() == "the checkpoint's own", "the checkpoint is untouched"
    assert (package / "tokenizer_config.json").read_text() != "the checkpoint's own"
    assert ServingMeta.from_json((package / META_FILE).read_text()) == meta


def test_the_shared_view_of_a_multi_objective_sweep_shows_every_objective_first() -> None:
    from finesweep.journal.events import SweepStarted
    from finesweep.tracking.tags import runs_view

    started = SweepStarted(sweep_id="s", name="latency", experiment="latency", artifact_root="", tracking_uri="",
                           folder="", tags={"finesweep.objective": "max val/accuracy",
                                            "finesweep.objectives": "max val/accuracy, min inference/latency_ms"},
                           params={}, config_yaml="", sweep_yaml="", sweep_file="", space={"optim.lr": {}}, budget=4)
    view = runs_view(started, "parent")
    assert view["columnOrder"][:4] == ["tags.`finesweep.trial_status`", "metrics.`val/accuracy`",
                                       "metrics.`inference/latency_ms`", "params.`optim.lr`"]
    assert view["orderByKey"] == "metrics.`val/accuracy`"
