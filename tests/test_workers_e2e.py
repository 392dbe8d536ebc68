"""Trials of two workers through the real CLI on a real local Ray: sharded (FSDP, gloo) trials survive a worker
killed mid-trial (an error, retried from the last checkpoint) and a SIGKILLed driver (resumed, exactly once), and
the registered winner loads in a fresh process.

The two-node sweep (workers spread over nodes, ASHA stopping a trial, its workers gone) is in test_cluster_e2e.py;
the training curve of two workers against one is in tests/finetune/test_workers.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest

from e2e import Driver, events
from test_resume_e2e import assert_exactly_once, continued_mid_way, data_overrides, uri

pytestmark = pytest.mark.slow

SHARDED = """
objective: {metric: val/loss, mode: min}
search: {sampler: random, num_trials: 2, max_concurrent: 2, seed: 1, max_retries: 1}
scheduler: {kind: fifo, max_epochs: 2}
optim: {lr: 5.0e-3}
space:
  optim.lr: {distribution: loguniform, low: 1.0e-3, high: 2.0e-2}
"""

WORKERS = ["cluster.workers_per_trial=2", "cluster.cpus_per_worker=1", "cluster.strategy=fsdp", "data.batch_size=16"]


def _first(cwd: Path, what: Any, driver: Driver, timeout: float = 240) -> Dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in events(cwd) if what(e)]
        if found:
            return found[0]
        assert driver.process.poll() is None, f"the sweep ended first:\n{driver.output()}"
        time.sleep(0.1)
    raise AssertionError(f"not seen in {timeout} s:\n{driver.output()}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.timeout(600)
def test_a_sharded_trial_survives_a_dead_worker_and_a_killed_driver(tmp_path: Path, tiny_model: Path,
                                                                    tiny_csv: Path) -> None:
    (tmp_path / "sharded.yaml").write_text(SHARDED)
    overrides = [*data_overrides(tiny_model, tiny_csv), *WORKERS]
    driver = Driver(["run", str(tmp_path / "sharded.yaml"), *overrides], tmp_path)

    # trial 0's first report names its two workers; one of them dies (not rank 0, which reports)
    first = _first(tmp_path, lambda e: e["kind"] == "trial_result" and e.get("worker_pids"), driver)
    assert first["workers"] == 2 and first["metrics"]["epoch"] == 1
    pids = [int(p) for p in first["worker_pids"].split(",")]
    assert len(set(pids)) == 2
    os.kill(pids[1], signal.SIGKILL)
    retry = _first(tmp_path, lambda e: e["kind"] == "trial_retrying" and e["number"] == first["number"], driver)
    assert retry["failure"] == "error", retry
    deadline = time.monotonic() + 60  # the failed Train run's other worker goes with it
    while _alive(pids[0]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(pids[0]), "rank 0 of the failed run was left running"

    # the retry goes on from epoch 1's checkpoint; then the driver dies with its Ray during trial 1
    _first(tmp_path, lambda e: e["kind"] == "trial_result" and e["number"] != first["number"], driver)
    driver.kill()
    driver = Driver(["resume"], tmp_path)
    assert driver.wait() == 0, driver.output()

    trials = assert_exactly_once(tmp_path, "sharded", planned=2)
    log = events(tmp_path)
    assert continued_mid_way(log) >= 1, "a trial running at the kill went on from its checkpoint"
    retried = [m["epoch"] for _, m in trials[first["number"]]["results"]]
    assert retried == [1, 2], f"the retry went on from epoch 1, not from the start: {retried}"
    placed = [e for e in log if e["kind"] == "trial_result" and e.get("worker_pids")]
    assert all(e["workers"] == 2 for e in placed)
    found = [int(p) for e in placed for p in e["worker_pids"].split(",")]
    assert not [p for p in found if _alive(p)], "every worker of every attempt is gone"

    # one MLflow child per trial (not per worker), tagged with its workers; the effective batch is a param
    from e2e import runs

    children = runs(uri(tmp_path), "sharded")["children"]
    assert len(children) == 2
    assert {c.data.tags["finesweep.workers"] for c in children} == {"2"}
    assert {c.data.params["effective_batch"] for c in children} == {"32"}, "16 per device x 2 workers"
    assert all(len(c.data.tags["finesweep.worker_pids"].split(",")) == 2 for c in children)

    # the winner FSDP trained (gathered to one file by rank 0) loads in a fresh process
    load = ("import mlflow, pandas; m = mlflow.pyfunc.load_model('models:/sharded/1'); "
            "print(list(m.predict(pandas.DataFrame({'text': ['a great movie', 'an awful day']}))['label']))")
    loaded = subprocess.run([sys.executable, "-c", load], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "MLFLOW_TRACKING_URI": uri(tmp_path), "HOME": str(tmp_path)})
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    labels: List[str] = eval(loaded.stdout.strip().splitlines()[-1])  # noqa: S307 - a list the child printed
    assert len(labels) == 2 and set(labels) <= {"negative", "neutral", "positive"}
