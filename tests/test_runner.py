"""The run path in-process on a real local Ray: a failure after the search loses nothing already logged."""

from __future__ import annotations

import functools
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Tuple

import pytest
from mlflow.tracking import MlflowClient
from rich.console import Console

from e2e import in_process
from finesweep import runner
from finesweep.config.compose import compose
from finesweep.config.sweep import Sweep
from finesweep.errors import SweepFailedError
from finesweep.tasks.data import DataCache

pytestmark = pytest.mark.slow

SWEEP = """
objective: {metric: val/accuracy, mode: max}
search: {sampler: random, num_trials: 2, max_concurrent: 2, seed: 0}
scheduler: {kind: fifo, max_epochs: 2}
space:
  optim.lr: {distribution: loguniform, low: 1.0e-5, high: 1.0e-2}
"""


def broken_checkpoint_trainable(config: Dict[str, Any], **_: Any) -> None:
    """Reports two epochs and 'weights' that no model loader can read."""
    from ray import tune

    for epoch in (1, 2):
        time.sleep(0.2)
        folder = Path(tempfile.mkdtemp())
        (folder / "best").mkdir()
        (folder / "best" / "model.safetensors").write_bytes(b"not weights")
        metrics = {"val/accuracy": 0.5 + 0.1 * epoch, "val/loss": 0.5, "train/loss": 0.5, "val/f1_macro": 0.5,
                   "epoch": float(epoch)}
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(folder)))


def weights_then_crash_on_retraining(config: Dict[str, Any], *, weights: str, **_: Any) -> None:
    """Search trials report real (untrained) weights; every re-training run (it has a trainer.seed) crashes."""
    from ray import tune

    if "trainer.seed" in config:
        raise RuntimeError("node lost")
    for epoch in (1, 2):
        folder = Path(tempfile.mkdtemp())
        shutil.copytree(weights, folder / "best")  # the layout of execution/checkpoints.py
        metrics = {"val/accuracy": config["optim.lr"] * 10 + 0.1 * epoch, "val/loss": 0.5, "train/loss": 0.5,
                   "val/f1_macro": 0.5, "epoch": float(epoch)}
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(folder)))


def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    in_process(__name__, tmp_path, monkeypatch)


def _sweep(tmp_path: Path, name: str, tiny_model: Path, tiny_csv: Path, *extra: str) -> Tuple[Sweep, DataCache]:
    from finesweep.tasks.preparation import prepare_all

    sweep = tmp_path / f"{name}.yaml"
    sweep.write_text(SWEEP)
    composed = compose(str(sweep), [f"model.name_or_path={tiny_model}", f"data.path={tiny_csv}",
                                    "data.label_column=label", "data.max_samples=null", "data.max_length=16", *extra])
    return composed, prepare_all(composed.config, composed.params)


@pytest.mark.timeout(300)
def test_when_every_retraining_fails_the_search_winner_is_registered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     tiny_model: Path, tiny_csv: Path) -> None:
    _isolated(tmp_path, monkeypatch)
    composed, cache = _sweep(tmp_path, "fallback", tiny_model, tiny_csv, "final.top_k=2", "final.seeds=1")
    trainable = functools.partial(weights_then_crash_on_retraining, weights=str(tiny_model))
    folder = runner.run(composed, cache, Console(file=open("/dev/null", "w")), trainable=trainable)
    assert (folder / "events.jsonl").is_file(), "it ended normally, with the sweep's journal"
    client = MlflowClient(composed.config.tracking.uri)
    runs = client.search_runs([client.get_experiment_by_name("fallback").experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    final = [r for r in runs if r.data.tags.get("finesweep.phase") == "final"]
    assert len(final) == 2 and all(r.data.tags["finesweep.trial_status"] == "failed" for r in final)
    assert parent.data.tags["finesweep.selection_fallback"].startswith("all 2 re-training runs failed")
    assert parent.data.tags["finesweep.registered_model"] == "fallback/1"
    assert parent.info.status == "FINISHED" and "test/accuracy" in parent.data.metrics
    best = client.get_run(parent.data.tags["finesweep.best_run_id"])
    assert best.data.tags["finesweep.phase"] == "search"


@pytest.mark.timeout(300)
def test_selection_failure_keeps_the_search(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            tiny_model: Path, tiny_csv: Path) -> None:
    _isolated(tmp_path, monkeypatch)
    composed, cache = _sweep(tmp_path, "broken", tiny_model, tiny_csv)
    with pytest.raises(SweepFailedError, match=r"the search finished and is logged, but model selection failed: "):
        runner.run(composed, cache, Console(file=open("/dev/null", "w")), trainable=broken_checkpoint_trainable)
    client = MlflowClient(composed.config.tracking.uri)
    experiment = client.get_experiment_by_name("broken")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 2 and all(c.data.tags["finesweep.trial_status"] == "completed" for c in children)
    assert parent.data.tags["finesweep.selection_error"]
    assert parent.data.metrics["best/val/accuracy"] == pytest.approx(0.7)
    assert parent.info.status == "FINISHED"
