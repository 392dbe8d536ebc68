"""Faults inside trials, on a real local Ray with real fits: a trial that raises, one whose loss goes NaN, one
that runs out of memory once. The sweep goes on; each ends as it should and says why.

The faults come from a test-only trainable that wraps the real one (no flag a user could set).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Dict, Optional

import pytest
from mlflow.tracking import MlflowClient
from rich.console import Console

from e2e import in_process
from finesweep import runner
from finesweep.config.compose import compose
from finesweep.config.overrides import with_overrides
from finesweep.execution.trial import _tune_report, fit
from finesweep.search.searcher import marker_of, params_of
from finesweep.tasks.preparation import prepare_all

pytestmark = pytest.mark.slow

SWEEP = """
objective: {metric: val/accuracy, mode: max}
search: {sampler: grid, max_concurrent: 2, seed: 0, max_retries: 1}
scheduler: {kind: fifo, max_epochs: 2}
optim: {lr: 1.0e-2}
space:
  optim.lr: {distribution: categorical, choices: [1.0e-2, 2.0e-2, 3.0e-2, 4.0e-2]}
"""
HEALTHY, RAISES, DIVERGES, OUT_OF_MEMORY = 1e-2, 2e-2, 3e-2, 4e-2


def faulty(config: Dict[str, Any], *, base: Any, cache: Any) -> None:
    """The real trainable, with a fault chosen by the trial's learning rate."""
    params, marker = params_of(config), marker_of(config)
    lr, attempt = params["optim.lr"], marker["attempt"]
    if lr == RAISES:
        raise RuntimeError("the data loader lost its file handle")
    if lr == DIVERGES:  # a real divergence, caught by the training loop: a huge step, no clipping
        params = {**params, "optim.lr": 1e6, "trainer.gradient_clip_val": None, "optim.warmup_ratio": 0.0}
    report = _tune_report
    if lr == OUT_OF_MEMORY and attempt == 1:
        report = functools.partial(_out_of_memory_after_epoch_1, inner=_tune_report)
    checkpoint = marker.get("checkpoint")
    fit(with_overrides(base, params), cache, report=report, resume=Path(checkpoint) if checkpoint else None)


def _out_of_memory_after_epoch_1(metrics: Dict[str, float], folder: Optional[Path], *, inner: Any) -> None:
    inner(metrics, folder)
    raise MemoryError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 3221225472 bytes")


@pytest.mark.timeout(420)
def test_faulty_trials_end_as_they_should_and_the_sweep_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 tiny_model: Path, tiny_csv: Path) -> None:
    in_process(__name__, tmp_path, monkeypatch)
    sweep_file = tmp_path / "faults.yaml"
    sweep_file.write_text(SWEEP)
    sweep = compose(str(sweep_file), [f"model.name_or_path={tiny_model}", f"data.path={tiny_csv}",
                                      "data.label_column=label", "data.max_samples=null", "data.max_length=16",
                                      "data.batch_size=16"])
    cache = prepare_all(sweep.config, sweep.params)
    output = Console(file=open(tmp_path / "out.txt", "w"), width=200)
    runner.run(sweep, cache, output, trainable=faulty)  # at least one trial finished: no SweepFailedError
    text = (tmp_path / "out.txt").read_text()
    assert "failed trials by reason: 1 error (trials" in text and "1 nan (trials" in text

    client = MlflowClient(sweep.config.tracking.uri)
    experiment = client.get_experiment_by_name("faults")
    every = client.search_runs([experiment.experiment_id])
    parent = next(r for r in every if "mlflow.parentRunId" not in r.data.tags)
    children = {float(r.data.params["optim.lr"]): r for r in every if "mlflow.parentRunId" in r.data.tags}
    assert sorted(children) == [HEALTHY, RAISES, DIVERGES, OUT_OF_MEMORY], "one child run per trial, retries included"

    raised, diverged, oom, healthy = (children[lr] for lr in (RAISES, DIVERGES, OUT_OF_MEMORY, HEALTHY))
    assert raised.data.tags["finesweep.trial_status"] == "failed" and raised.info.status == "FAILED"
    assert raised.data.tags["finesweep.failure"] == "error" and raised.data.tags["finesweep.attempts"] == "2"
    assert "RuntimeError: the data loader lost its file handle" in raised.data.tags["finesweep.error"]
    assert diverged.data.tags["finesweep.failure"] == "nan" and diverged.data.tags["finesweep.attempts"] == "1", \
        "a NaN loss is never retried"
    assert "training loss became" in diverged.data.tags["finesweep.error"]
    assert int(diverged.data.tags.get("finesweep.epochs_run", "0")) < 2, "it stopped at the first non-finite loss"

    assert oom.data.tags["finesweep.trial_status"] == "completed" and oom.data.tags["finesweep.attempts"] == "2"
    assert oom.data.params["attempt2.data.batch_size"] == "8"
    assert oom.data.params["attempt2.trainer.accumulate_grad_batches"] == "2", "the same effective batch"
    assert "oom: MemoryError" in oom.data.tags["finesweep.attempt1_failure"]
    steps = sorted(m.step for m in client.get_metric_history(oom.info.run_id, "val/accuracy"))
    assert steps == [1, 2], "the retry went on from epoch 1's checkpoint: epoch 2 only"

    assert healthy.data.tags["finesweep.trial_status"] == "completed"
    best = parent.data.tags["finesweep.best_run_id"]
    assert best in (healthy.info.run_id, oom.info.run_id), "the best is a healthy trial"
    assert parent.info.status == "FINISHED"
