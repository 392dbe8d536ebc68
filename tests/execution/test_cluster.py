"""Connecting to Ray: the workers' environment, where library logs go, and a real local Ray session."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import pytest

from finesweep.config.compose import compose
from finesweep.execution.cluster import (
    FORWARDED_ENV,
    WORKER_ENV,
    _log_to_file,
    ray_session,
    route_library_logs,
    worker_env,
)


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
    paths = [f"cluster.storage_path={tmp_path / 'ray'}", f"cluster.log_dir={tmp_path / 'logs'}"]
    config = compose("demo", paths).config

    @ray.remote
    def environment() -> dict:
        return {"env": {name: os.environ.get(name) for name in ("TOKENIZERS_PARALLELISM", "HF_HUB_OFFLINE",
                                                                "RAY_CHDIR_TO_TRIAL_DIR")},
                "runtime_env": ray.get_runtime_context().runtime_env.env_vars()}

    with ray_session(config) as log_file:
        seen = ray.get(environment.remote(), timeout=120)
        assert ray.is_initialized()
    assert not ray.is_initialized(), "a Ray this session started is stopped with it"
    assert seen["env"] == {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "RAY_CHDIR_TO_TRIAL_DIR": "0"}
    assert seen["runtime_env"] == {**WORKER_ENV, "HF_HUB_OFFLINE": "1"}, "... the job's runtime_env gives it to workers"
    assert log_file.is_file()


def test_trials_of_several_workers_on_a_ray_without_its_dashboard_are_one_line(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    from finesweep.adapters import ray_private
    from finesweep.errors import UserError

    monkeypatch.setattr(ray_private, "dashboard_unavailable", lambda: "No module named 'aiohttp'")
    paths = [f"cluster.storage_path={tmp_path / 'ray'}", f"cluster.log_dir={tmp_path / 'logs'}"]
    config = compose("demo", [*paths, "cluster.workers_per_trial=2", "cluster.cpus_per_worker=1"]).config
    with pytest.raises(UserError, match=r"^cluster\.workers_per_trial=2 on a local Ray needs Ray's dashboard .*: No "
                                        r"module named 'aiohttp'\. Install it \(pip install 'finesweep\[cluster\]'\)"):
        with ray_session(config):
            pass
    assert not ray.is_initialized(), "refused before Ray starts"
    assert ray_private.missing() == [], "this Ray has what finesweep asks it"


def test_an_address_is_used_as_given_and_a_ray_client_address_is_refused() -> None:
    from finesweep.errors import UserError
    from finesweep.execution.cluster import resolve_address

    assert resolve_address("10.0.0.5:6379") == "10.0.0.5:6379"
    with pytest.raises(UserError, match=r"ray://h:10001 is a Ray Client address; .* ray job submit --address"):
        resolve_address("ray://h:10001")


def test_a_trial_that_fits_no_node_says_what_the_largest_node_has() -> None:
    from finesweep.config import ClusterConfig
    from finesweep.errors import UserError
    from finesweep.execution.cluster import _check_fit

    nodes = [{"Resources": {"CPU": 8.0}}, {"Resources": {"CPU": 4.0, "GPU": 2.0}}]
    _check_fit(ClusterConfig(cpus_per_trial=4, gpus_per_trial=0.25, storage_path="/s", log_dir="/l"), nodes)
    with pytest.raises(UserError, match=r"^cluster\.cpus_per_trial=6, cluster\.gpus_per_trial=1: a trial fits on "
                                        r"no node of the cluster; the largest has 4 CPU\(s\) and 2 GPU\(s\)\."):
        _check_fit(ClusterConfig(cpus_per_trial=6, gpus_per_trial=1, storage_path="/s", log_dir="/l"), nodes)


def test_a_refused_token_is_one_line_that_says_what_to_set() -> None:
    from finesweep.execution.cluster import _join_failure

    try:
        try:
            raise RuntimeError("Unauthenticated: InvalidAuthToken: Authentication token is missing or incorrect")
        except RuntimeError as inner:
            raise ConnectionError("Failed to connect to GCS") from inner
    except ConnectionError as exc:
        line = _join_failure("auto", "10.0.0.5:6379", exc)
    assert line.startswith("cluster.address=auto: the Ray cluster at 10.0.0.5:6379 uses token authentication")
    assert "RAY_AUTH_TOKEN" in line and "\n" not in line
    other = _join_failure("h:1", "h:1", TimeoutError("GCS did not answer"))
    assert other.startswith("cluster.address=h:1: could not join the Ray cluster at h:1 (TimeoutError: GCS did not")


@pytest.mark.parametrize("precision,accelerator,cuda,bf16,cpu_bf16,expected", [
    ("auto", "auto", False, False, False, "32-true"),
    ("auto", "auto", False, False, True, "bf16-mixed"),
    ("auto", "auto", True, True, False, "bf16-mixed"),
    ("auto", "gpu", True, False, True, "16-mixed"),
    ("auto", "cpu", True, True, False, "32-true"),
    ("auto", "cpu", True, False, True, "bf16-mixed"),
    ("16-mixed", "auto", False, False, True, "16-mixed"),
    ("32-true", "cpu", False, False, True, "32-true"),
])
def test_precision_auto_is_decided_for_the_device_of_the_trial(monkeypatch: pytest.MonkeyPatch, precision: str,
                                                               accelerator: str, cuda: bool, bf16: bool,
                                                               cpu_bf16: bool, expected: str) -> None:
    import torch

    import finesweep.execution.trial
    from finesweep.execution.trial import device_name, resolved_precision

    monkeypatch.setattr(finesweep.execution.trial, "cpu_has_bf16", lambda: cpu_bf16)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H100")
    config = compose("demo", [f"trainer.precision={precision}", f"trainer.accelerator={accelerator}",
                              "cluster.gpus_per_trial=1"]).config
    assert resolved_precision(config) == expected
    on_gpu = cuda and accelerator != "cpu"
    assert device_name(config) == ("cuda:0 (NVIDIA H100)" if on_gpu else "cpu")


@pytest.mark.parametrize("flags,expected", [
    ("fpu sse avx2 avx512f avx512bw", False),
    ("fpu avx512f avx512_bf16 avx512_vnni", True),
    ("fpu avx512f amx_tile amx_bf16 amx_int8", True),
    ("fpu avx512bw avx512_bf16x", False),
])
def test_cpu_bf16_is_read_from_the_cpu_flags(tmp_path: Path, flags: str, expected: bool) -> None:
    from finesweep.execution.trial import cpu_has_bf16

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n")
    assert cpu_has_bf16(cpuinfo) is expected
    assert cpu_has_bf16(tmp_path / "missing") is False, "no /proc/cpuinfo (macOS, Windows): 32-bit"


def test_a_node_that_does_not_see_the_drivers_file_is_not_sharing_the_storage(tmp_path: Path) -> None:
    from finesweep.execution.cluster import _probe

    marker = tmp_path / ".finesweep-shared-1"
    assert _probe(None, str(tmp_path), str(marker))["shared"] is False, "another machine's folder of that name"
    marker.write_text("ok")
    found = _probe(str(tmp_path / "model"), str(tmp_path), str(marker))
    assert found == {"model": False, "shared": True, "storage": ""}
    assert sorted(p.name for p in tmp_path.iterdir()) == [marker.name], "the node's own probe file is gone"


def test_a_ray_job_keeps_its_state_out_of_the_working_dir_ray_deletes(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from finesweep.config import ClusterConfig
    from finesweep.errors import UserError
    from finesweep.execution.cluster import _leave_job_dir

    job_dir, shared = tmp_path / "_ray_pkg_1", tmp_path / "shared"
    for folder in (job_dir, shared):
        folder.mkdir()
    monkeypatch.chdir(job_dir)
    with pytest.raises(UserError, match=r"^cluster\.storage_path: .*/_ray_pkg_1/mlruns/ray is inside the Ray "
                                        r"job's working_dir, which Ray deletes after the job"):
        _leave_job_dir(ClusterConfig(storage_path=str(job_dir / "mlruns" / "ray"), log_dir="/l"))
    _leave_job_dir(ClusterConfig(storage_path=str(shared), log_dir="/l"))
    assert Path.cwd() == shared.resolve(), "the driver stands outside the folder Ray unpacks again"
