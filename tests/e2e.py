"""Helpers of the end-to-end tests: the real `finesweep` command in its own process, and what it left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from mlflow.tracking import MlflowClient

from finesweep.config.compose import project_dir
from finesweep.journal.file import read_records
from finesweep.journal.replay import find_sweeps


def env(cwd: Path, **extra: str) -> Dict[str, str]:
    """The environment of a finesweep process started in ``cwd``: its own HOME, Ray temp dir and project."""
    # Ray's socket paths must stay under 107 characters, so its temp dir is short, beside cwd's name.
    return {**os.environ, "HOME": str(cwd / "home"), "FINESWEEP_PROJECT": str(project_dir()),
            "RAY_TMPDIR": str(ray_tmpdir(cwd)), "HF_HUB_OFFLINE": "1", "COLUMNS": "200", **extra}


def in_process(module: str, cwd: Path, monkeypatch: Any) -> None:
    """Run a sweep in this test process: its trainable (or task) ships to Ray's workers by value (they cannot
    import tests/), it runs in ``cwd``, and Ray's temp dir is short (socket paths stay under 107 characters)."""
    import tempfile

    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[module])
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("RAY_TMPDIR", tempfile.mkdtemp(prefix="fsp-", dir="/tmp"))


def ray_tmpdir(cwd: Path) -> Path:
    return Path("/tmp") / f"fsr-{abs(hash(str(cwd))) % 10**8}"


def run_cli(args: List[str], cwd: Path, timeout: int = 420) -> subprocess.CompletedProcess:
    """Run finesweep to the end."""
    return subprocess.run([sys.executable, "-m", "finesweep", *args], cwd=cwd, env=env(cwd), capture_output=True,
                          text=True, timeout=timeout)


class Driver:
    """A finesweep process in a session of its own, with its local Ray, that a test can interrupt or kill."""

    def __init__(self, args: List[str], cwd: Path) -> None:
        self.cwd = cwd
        self.out = cwd / f"driver-{time.monotonic_ns()}.out"
        self.process = subprocess.Popen([sys.executable, "-m", "finesweep", *args], cwd=cwd, env=env(cwd),
                                        stdout=open(self.out, "w"), stderr=subprocess.STDOUT, start_new_session=True)

    def wait_for_results(self, count: int, timeout: float = 180) -> None:
        """Block until the sweep's log holds ``count`` epoch results in all (this session's and earlier ones)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if results(self.cwd) >= count:
                return
            if self.process.poll() is not None:
                raise AssertionError(f"finesweep ended before {count} results:\n{self.output()}")
            time.sleep(0.2)
        raise AssertionError(f"no {count} results in {timeout} s:\n{self.output()}")

    def kill(self) -> None:
        """SIGKILL the driver and everything of its session (its local Ray): a preempted node."""
        _killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def interrupt(self) -> None:
        """Ctrl-C in its terminal: SIGINT to the whole foreground process group."""
        _killpg(self.process.pid, signal.SIGINT)

    def wait(self, timeout: float = 420) -> int:
        try:
            return self.process.wait(timeout=timeout)
        finally:
            self.stop()

    def stop(self) -> None:
        """Leave nothing of this session running (the test's own processes only)."""
        _killpg(self.process.pid, signal.SIGKILL)

    def output(self) -> str:
        return self.out.read_text() if self.out.exists() else ""


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def sweep_folder(cwd: Path) -> Path:
    (folder,) = find_sweeps(str(cwd / "mlruns" / "ray"))
    return folder


def events(cwd: Path, storage: str = "mlruns/ray") -> List[Dict[str, Any]]:
    """The newest sweep's events under ``cwd / storage`` (the default cluster.storage_path), as the journal holds
    them on disk (plain JSON objects)."""
    folders = find_sweeps(str(cwd / storage))
    return list(read_records(folders[0] / "events.jsonl")) if folders else []


def results(cwd: Path) -> int:
    return sum(1 for e in events(cwd) if e["kind"] == "trial_result")


def runs(uri: str, experiment: str) -> Dict[str, Any]:
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    every = client.search_runs([found.experiment_id], max_results=1000) if found else []
    return {"client": client,
            "parents": [r for r in every if "mlflow.parentRunId" not in r.data.tags],
            "children": [r for r in every if "mlflow.parentRunId" in r.data.tags]}


def metric_steps(client: MlflowClient, run_id: str, keys: Optional[List[str]] = None) -> Dict[str, List[int]]:
    """Every metric's logged steps, in order of time."""
    keys = keys or list(client.get_run(run_id).data.metrics)
    return {k: [m.step for m in sorted(client.get_metric_history(run_id, k), key=lambda m: (m.timestamp, m.step))]
            for k in keys}
