"""Connecting to Ray: the workers' environment, where library logs go, and a real local Ray session."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import pytest

from finesweep.cluster import FORWARDED_ENV, WORKER_ENV, _log_to_file, ray_session, route_library_logs, worker_env
from finesweep.config import ClusterConfig


def test_worker_env_forwards_only_the_set_driver_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in FORWARDED_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert worker_env() == {"HF_HUB_OFFLINE": "1", **WORKER_ENV}
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")  # the driver's own setting never leaks over the rule
    assert worker_env()["TOKENIZERS_PARALLELISM"] == "false"


def test_library_logs_go_to_the_sweep_log_not_the_terminal(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        log_file = _log_to_file(tmp_path / "logs", "demo")
        noisy = logging.getLogger("lightning.pytorch")
        noisy.addHandler(logging.StreamHandler())  # what Lightning does when first imported
        route_library_logs()
        noisy.warning("GPU available: False, used: False")
        logging.getLogger("ray.tune").info("trial started")
        for handler in root.handlers:
            handler.flush()
        text = log_file.read_text()
        assert log_file.parent == tmp_path / "logs" and log_file.name.startswith("demo-")
        assert "lightning.pytorch: GPU available: False" in text and "ray.tune: trial started" in text
        assert "GPU available" not in capsys.readouterr().err
    finally:  # _log_to_file takes over the process's logging, as the CLI wants; give it back to pytest
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.captureWarnings(False)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_workers_get_their_environment_through_runtime_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    monkeypatch.setenv("RAY_TMPDIR", tempfile.mkdtemp(prefix="fsc-", dir="/tmp"))
    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)  # the driver does not have it ...
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cluster = ClusterConfig(storage_path=str(tmp_path / "ray"), log_dir=str(tmp_path / "logs"))

    @ray.remote
    def environment() -> dict:
        return {"env": {name: os.environ.get(name) for name in ("TOKENIZERS_PARALLELISM", "HF_HUB_OFFLINE",
                                                                "RAY_CHDIR_TO_TRIAL_DIR")},
                "runtime_env": ray.get_runtime_context().runtime_env.env_vars()}

    with ray_session(cluster, "env-test") as log_file:
        seen = ray.get(environment.remote(), timeout=120)
        assert ray.is_initialized()
    assert not ray.is_initialized(), "a Ray this session started is stopped with it"
    assert seen["env"] == {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "RAY_CHDIR_TO_TRIAL_DIR": "0"}
    assert seen["runtime_env"] == {**WORKER_ENV, "HF_HUB_OFFLINE": "1"}, "... the job's runtime_env gives it to workers"
    assert log_file.is_file()
