"""MLflow tracking on a real SQLite store: parent/child runs, statuses, winner, listing."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from finesweep.cli import compose
from finesweep.config import ExperimentConfig
from finesweep.records import TrialRecord, TrialStatus, best_trial
from finesweep.serving import ServingMeta
from finesweep.tracking import SweepTracker, git_state, list_sweeps


@pytest.fixture()
def config(tmp_path: Path) -> ExperimentConfig:
    base = compose("demo", []).config
    tracking = dataclasses.replace(base.tracking, uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                                   artifact_root=str(tmp_path / "artifacts"))
    return dataclasses.replace(base, tracking=tracking)


def trial(tracker: SweepTracker, number: int, values: list, status: TrialStatus, folder: Path) -> TrialRecord:
    rec = TrialRecord(f"id{number}", number, {"optim.lr": 10.0 ** -number, "data.batch_size": 16})
    tracker.trial_started(rec)
    for epoch, value in enumerate(values, start=1):
        metrics = {"val/accuracy": value, "val/loss": 1 - value, "epoch": float(epoch)}
        rec.add_result(metrics, "val/accuracy", tracker.config.objective.mode)
        tracker.trial_result(rec, metrics)
    rec.status = status
    checkpoint = folder / f"ckpt{number}"
    checkpoint.mkdir()
    (checkpoint / "model.safetensors").write_bytes(b"weights")
    rec.checkpoint = str(checkpoint)
    if status is TrialStatus.failed:
        rec.error = "RuntimeError: boom"
    tracker.trial_ended(rec)
    return rec


def test_parent_children_statuses_and_winner(config: ExperimentConfig, tmp_path: Path) -> None:
    sweep_file = Path("sweeps/demo.yaml").resolve()
    tracker = SweepTracker(config, {"optim.lr": {"distribution": "loguniform"}}, sweep_file, "a: 1\n")
    parent_id = tracker.start()
    records = [trial(tracker, 0, [0.5, 0.9, 0.7], TrialStatus.completed, tmp_path),
               trial(tracker, 1, [0.4], TrialStatus.early_stopped, tmp_path),
               trial(tracker, 2, [], TrialStatus.failed, tmp_path)]
    tracker.finish(records, best_trial(records, config.objective.mode), interrupted=False)

    client = MlflowClient(config.tracking.uri)
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["sampler"] == "tpe" and parent.data.params["objective"] == "max val/accuracy"
    assert parent.data.metrics["best/val/accuracy"] == 0.9, "the best epoch, not the last"
    assert parent.data.params["best.optim.lr"] == "1.0"
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    by_status = {c.data.tags["finesweep.trial_status"]: c for c in children}
    assert set(by_status) == {"completed", "early_stopped", "failed"}
    assert parent.data.tags["finesweep.best_run_id"] == by_status["completed"].info.run_id
    assert by_status["failed"].info.status == "FAILED" and by_status["failed"].data.tags["finesweep.error"]
    assert by_status["early_stopped"].data.tags["finesweep.epochs_run"] == "1"
    history = client.get_metric_history(by_status["completed"].info.run_id, "val/accuracy")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(1, 0.5), (2, 0.9), (3, 0.7)]
    artifacts = {a.path for a in client.list_artifacts(parent_id)}
    assert {"config.yaml", "sweep", "search_space.json", "best_model"} <= artifacts
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.name == "demo" and experiment.artifact_location == f"{tmp_path / 'artifacts'}/demo"

    rows = list_sweeps(config.tracking.uri)
    assert len(rows) == 1 and rows[0].best_value == 0.9
    assert (rows[0].counts["completed"], rows[0].counts["early_stopped"], rows[0].counts["failed"]) == (1, 1, 1)


def test_interrupted_sweep_closes_running_trials(config: ExperimentConfig, tmp_path: Path) -> None:
    tracker = SweepTracker(config, {}, Path("sweeps/demo.yaml").resolve(), "")
    parent_id = tracker.start()
    rec = TrialRecord("run", 0, {"optim.lr": 0.1})
    tracker.trial_started(rec)
    rec.add_result({"val/accuracy": 0.6, "epoch": 1.0}, "val/accuracy", config.objective.mode)
    tracker.trial_result(rec, {"val/accuracy": 0.6, "epoch": 1.0})
    tracker.finish([rec], best_trial([rec], config.objective.mode), interrupted=True)
    client = MlflowClient(config.tracking.uri)
    assert client.get_run(parent_id).info.status == "KILLED"
    child = client.search_runs([client.get_run(parent_id).info.experiment_id],
                               f"tags.`mlflow.parentRunId` = '{parent_id}'")[0]
    assert child.info.status == "FAILED" and "interrupted" in child.data.tags["finesweep.error"]
    assert child.data.metrics["val/accuracy"] == 0.6, "what was logged is kept"


def test_git_state_outside_a_repo(tmp_path: Path) -> None:
    assert git_state(tmp_path) == ("unknown", "unknown")


def test_registered_model_reloads_and_predicts(config: ExperimentConfig, tiny_model: Path, tmp_path: Path) -> None:
    import mlflow
    import pandas as pd
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tracker = SweepTracker(config, {}, Path("sweeps/demo.yaml").resolve(), "")
    tracker.start()
    meta = ServingMeta(task="classification", label_names=("negative", "neutral", "positive"), text_column="text",
                       text_pair_column=None, max_length=32, objective="val/accuracy")
    version = tracker.register(tiny_model, str(tiny_model), meta)
    assert version == "demo/1"
    mlflow.set_tracking_uri(config.tracking.uri)
    model = mlflow.pyfunc.load_model("models:/demo/1")
    texts = ["the movie was good", "a sad awful day"]
    predicted = model.predict(pd.DataFrame({"text": texts}))
    assert list(predicted.columns) == ["label", "score"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    reference = AutoModelForSequenceClassification.from_pretrained(tiny_model).eval()
    with torch.no_grad():
        logits = reference(**tokenizer(texts, padding=True, return_tensors="pt")).logits
    assert list(predicted["label"]) == [meta.label_names[i] for i in logits.argmax(dim=1).tolist()]
    client = MlflowClient(config.tracking.uri)
    assert client.get_registered_model("demo").name == "demo"
    assert client.get_run(tracker.parent_id).data.tags["finesweep.registered_model"] == "demo/1"
