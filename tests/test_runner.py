"""The run path in-process on a real local Ray: a failure after the search loses nothing already logged."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict

import pytest
from mlflow.tracking import MlflowClient
from rich.console import Console

from finesweep import runner
from finesweep.cli import compose
from finesweep.errors import SweepFailedError

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
        (folder / "model.safetensors").write_bytes(b"not weights")
        metrics = {"val/accuracy": 0.5 + 0.1 * epoch, "val/loss": 0.5, "train/loss": 0.5, "val/f1_macro": 0.5,
                   "epoch": float(epoch)}
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(folder)))


def test_selection_failure_keeps_the_search(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            tiny_model: Path, tiny_csv: Path) -> None:
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RAY_TMPDIR", tempfile.mkdtemp(prefix="fsr-", dir="/tmp"))
    sweep = tmp_path / "broken.yaml"
    sweep.write_text(SWEEP)
    composed = compose(str(sweep), [f"model.name_or_path={tiny_model}", f"data.path={tiny_csv}",
                                    "data.label_column=label", "data.max_samples=null", "data.max_length=16"])
    from finesweep import data

    cache = data.prepare_all(composed.config, composed.params)
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
