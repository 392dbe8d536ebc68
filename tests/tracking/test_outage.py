"""A real `mlflow server` that goes away in the middle of a sweep: the sweep never stalls or fails, and no
metric or run is lost, whether the server comes back during the sweep or only for `finesweep sync`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

from e2e import Driver, events, metric_steps, run_cli, runs
from servers import MlflowServer

pytestmark = pytest.mark.slow

SWEEP = """
objective: {metric: val/loss, mode: min}
search: {sampler: random, num_trials: 6, max_concurrent: 2, seed: 1}
scheduler: {kind: fifo, max_epochs: 3}
optim: {lr: 1.0e-3}
space:
  optim.lr: {distribution: loguniform, low: 1.0e-4, high: 1.0e-2}
"""


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[MlflowServer]:
    started = MlflowServer(tmp_path)
    started.start()
    try:
        yield started
    finally:
        started.stop()


def overrides(server: MlflowServer, tiny_model: Path, tiny_csv: Path, *extra: str) -> List[str]:
    return [f"model.name_or_path={tiny_model}", f"data.path={tiny_csv}", "data.label_column=label",
            "data.max_length=32", "data.max_samples=null", f"tracking.uri={server.uri}", *extra]


def assert_nothing_lost(cwd: Path, uri: str, experiment: str) -> None:
    """Every trial of the log has its one run, and every epoch it reported is there, once."""
    found = runs(uri, experiment)
    assert len(found["parents"]) == 1 and found["parents"][0].info.status == "FINISHED"
    logged: Dict[int, List[int]] = {}
    for event in events(cwd):
        if event["kind"] == "trial_result":
            logged.setdefault(event["number"], []).append(int(event["metrics"]["epoch"]))
    by_number = {int(c.data.tags["finesweep.trial_number"]): c for c in found["children"]}
    assert sorted(by_number) == sorted(logged) and len(by_number) == len(found["children"]), "one run per trial"
    for number, epochs in logged.items():
        steps = metric_steps(found["client"], by_number[number].info.run_id, ["val/loss", "train/loss"])
        assert steps == {"val/loss": epochs, "train/loss": epochs}, f"trial {number}: {steps} vs the log's {epochs}"
        assert by_number[number].info.status == "FINISHED"


@pytest.mark.timeout(600)
def test_a_server_down_for_20_s_mid_sweep_loses_nothing(tmp_path: Path, server: MlflowServer, tiny_model: Path,
                                                        tiny_csv: Path) -> None:
    # 16 trials x 4 epochs one at a time: the sweep outlives the outage (~0.5 s an epoch on the tiny model)
    longer = SWEEP.replace("num_trials: 6, max_concurrent: 2", "num_trials: 16, max_concurrent: 1")
    (tmp_path / "outage.yaml").write_text(longer.replace("max_epochs: 3", "max_epochs: 4"))
    driver = Driver(["run", str(tmp_path / "outage.yaml"), *overrides(server, tiny_model, tiny_csv)], tmp_path)
    driver.wait_for_results(1)
    server.stop()
    before = sum(1 for e in events(tmp_path) if e["kind"] == "trial_result")
    time.sleep(20)
    during = sum(1 for e in events(tmp_path) if e["kind"] == "trial_result")
    assert during > before, "trials went on while the server was down"
    server.start()
    assert driver.process.poll() is None, "the sweep was still running when the server came back"
    assert driver.wait() == 0, driver.output()
    assert "did not take" not in driver.output()
    assert_nothing_lost(tmp_path, server.uri, "outage")


@pytest.mark.timeout(600)
def test_a_server_down_until_the_end_leaves_a_spool_that_sync_sends_once(tmp_path: Path, server: MlflowServer,
                                                                        tiny_model: Path, tiny_csv: Path) -> None:
    (tmp_path / "spool.yaml").write_text(SWEEP)
    driver = Driver(["run", str(tmp_path / "spool.yaml"),
                     *overrides(server, tiny_model, tiny_csv, "tracking.flush_timeout=3")], tmp_path)
    driver.wait_for_results(2)
    server.stop()
    assert driver.wait() == 0, driver.output()
    output = " ".join(driver.output().split())
    assert "did not take" in output and "Send them with: finesweep sync" in output

    server.start()
    synced = run_cli(["sync"], tmp_path, timeout=300)
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert "every sweep's log is in MLflow" in synced.stdout
    assert_nothing_lost(tmp_path, server.uri, "spool")
    again = run_cli(["sync"], tmp_path, timeout=300)
    assert again.returncode == 0 and "sent" not in again.stdout, "a second sync has nothing left to send"
    assert_nothing_lost(tmp_path, server.uri, "spool")
    assert runs(server.uri, "spool")["parents"][0].data.tags["finesweep.registered_model"] == "spool/1"
