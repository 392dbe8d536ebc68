"""The commands that read what sweeps left behind: ls, ui, sync, report, serve, select.

Each gets the ``Locations`` the CLI resolved (tracking URI, artifact root, storage path) and never
composes a config: they work without the data or the model, and without the demo extra.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from rich.console import Console
from rich.table import Table

from finesweep.config.compose import Locations
from finesweep.errors import SweepFailedError, UserError
from finesweep.journal.replay import find_sweeps, locate


def ls(where: Locations, location_overrides: Sequence[str], console: Console) -> int:
    """Past sweeps in the tracking store, and the command that resumes an unfinished one."""
    from finesweep.tracking import list_sweeps, unsent

    uri = where.tracking_uri
    rows = [] if sqlite_missing(uri) else list_sweeps(uri)
    table = Table(title=f"sweeps in {uri}")
    for column in ("sweep", "run id", "started", "status", "done", "stopped", "failed", "objective", "best"):
        table.add_column(column)
    extra = " ".join(location_overrides)
    hints = []
    for row in rows:
        table.add_row(row.run_name, row.run_id[:8], time.strftime("%Y-%m-%d %H:%M", time.localtime(row.start_time)),
                      row.status, str(row.counts["completed"]), str(row.counts["early_stopped"]),
                      str(row.counts["failed"]), row.objective,
                      "-" if row.best_value is None else f"{row.best_value:.4f}", end_section=False)
        if row.status in ("RUNNING", "KILLED") and row.state and Path(row.state).is_dir():
            hints.append(f"{row.run_name} ({row.status.lower()}): finesweep resume {row.run_id[:8]} {extra}".rstrip())
    console.print(table if rows else f"no sweeps yet in {uri}", markup=False)
    behind = [f.name for f in find_sweeps(where.storage_path) if unsent(f)]
    for hint in hints:
        console.print(f"resume {hint}", markup=False)
    if behind:
        console.print(f"not all in MLflow yet: {', '.join(behind)}; send with: finesweep sync {extra}".rstrip(),
                      markup=False)
    return 0


def check_host(host: str, expose: bool, console: Console) -> None:
    """A server binds to loopback unless the user says ``--expose`` (MLflow has no authentication).

    Raises:
        UserError: a non-loopback ``host`` without ``expose``.
    """
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if loopback:
        return
    if not expose:
        raise UserError(f"--host {host}: not a loopback address, so anyone who reaches this machine could use it, "
                        "and MLflow has no authentication. Keep the default (127.0.0.1) and use an SSH tunnel, or "
                        "add --expose if you mean it.")
    console.print(f"warning: serving on {host} without authentication: anyone who reaches it can read and change "
                  "what it serves.", style="yellow", markup=False)


def ui(where: Locations, host: str, port: int, expose: bool, console: Console) -> int:
    """The MLflow UI for the store, opened on the latest sweep's experiment with its parent run expanded."""
    from finesweep.tracking import UI_VIEW, artifact_root_of, list_sweeps

    uri = where.tracking_uri
    check_host(host, expose, console)
    rows = [] if sqlite_missing(uri) or uri.startswith(("http://", "https://")) else list_sweeps(uri)
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else f"http://{host}:{port}"
    for row in rows[:1]:
        console.print(f"latest sweep {row.run_name}: {base}/#/experiments/{row.experiment_id}/{UI_VIEW}\n"
                      f"  its parent run: {base}/#/experiments/{row.experiment_id}/runs/{row.run_id}", markup=False)
    if uri.startswith(("http://", "https://")):
        console.print(f"{uri} is an MLflow server: its UI is there. Open {uri} in a browser.", markup=False)
        return 0
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
               "--default-artifact-root", artifact_root_of(uri, where.artifact_root),
               "--host", host, "--port", str(port), "--workers", "1"]
    console.print(f"MLflow UI for {uri}: {base}  (Ctrl-C stops it)", markup=False)
    sys.stdout.flush()
    os.execv(sys.executable, command)  # the server takes over this process: signals reach it directly
    return 0  # not reached


def sync(where: Locations, ref: Optional[str], timeout: float, console: Console) -> int:
    """Send the events MLflow did not take (during an outage) from the sweeps' journals.

    Each sweep goes to the store it logged to, unless ``tracking.uri=`` was given on the command line.
    """
    from finesweep.tracking import parent_run, sync_log

    folders = [locate(where.storage_path, ref, parent_run)] if ref else find_sweeps(where.storage_path)
    left = 0
    for folder in folders:
        target = where.tracking_uri if where.uri_given else None
        message, missing = sync_log(folder, target, deadline=time.monotonic() + timeout)
        left += missing
        if message:
            console.print(message, markup=False)
    if left:
        raise SweepFailedError(f"{left} event(s) could not be sent; MLflow is still unreachable. Run finesweep sync "
                               "again once it is up.")
    console.print("every sweep's log is in MLflow.")
    return 0


def select_point(where: Locations, ref: Optional[str], trial: int, timeout: float, console: Console) -> int:
    """Register another point of a multi-objective sweep's Pareto front as a new model version, from the weights its
    trial kept: nothing is trained or evaluated again. The choice is a selection round of the sweep's journal (the
    parent run's tags say which trial), and MLflow is sent it at once (``sync`` sends it later in an outage)."""
    from finesweep.finetune.layout import best_weights
    from finesweep.journal.events import LOG_NAME, RegisterRequested, SelectionMade
    from finesweep.journal.file import EventFile, read_events
    from finesweep.journal.replay import load_state
    from finesweep.tracking import Cursor, parent_run, sync_log

    folder = locate(where.storage_path, ref, parent_run) if ref else _latest(where.storage_path)
    events = list(read_events(folder / LOG_NAME))
    made = [e for e in events if isinstance(e, SelectionMade) and e.front]
    if not made:
        raise UserError(f"sweep {folder.name} has no Pareto front: finesweep select registers a point of a finished "
                        "multi-objective sweep's front (objective: a list of metrics). Pick a sweep that has one.")
    front = made[-1].front
    row = next((r for r in front if r["trial"] == trial), None)
    if row is None:
        raise UserError(f"--trial must be a trial on sweep {folder.name}'s Pareto front "
                        f"({', '.join(str(r['trial']) for r in front)}), got {trial}. Pick one of those.")
    if not row.get("checkpoint") or not best_weights(str(row["checkpoint"])).is_dir():
        raise UserError(f"trial {trial}'s weights are gone from {row.get('checkpoint')}, so it cannot be registered "
                        "without training it again. Start a sweep that keeps them (they are kept on the front).")
    name = next(e.name for e in reversed(events) if isinstance(e, RegisterRequested))
    round_ = load_state(folder).selections
    journal = EventFile(folder)  # refuses while a process is running the sweep
    try:
        picked = {f"selected/{k}": float(v) for k, v in row["values"].items()}
        journal.append(SelectionMade(round=round_, metrics=picked,
                                     tags={"finesweep.selected_trial": trial}, leaderboard_csv="", leaderboard_md="",
                                     front=front, selected_trial=trial))
        journal.append(RegisterRequested(round=round_, name=name, checkpoint=row["checkpoint"],
                                         preprocessor=row["preprocessor"], meta=row["meta"], task=row["task"]))
    finally:
        journal.close()
    target = where.tracking_uri if where.uri_given else None
    message, missing = sync_log(folder, target, deadline=time.monotonic() + timeout)
    values = ", ".join(f"{k} {v:.4g}" for k, v in row["values"].items())
    version = Cursor.load(folder).registered.get(str(round_)) or name
    console.print(f"trial {trial} ({values}) registered as models:/{version}: a new version from its kept weights",
                  markup=False)
    if missing:
        raise SweepFailedError(f"MLflow did not take the registration ({message}). Run finesweep sync once it is up.")
    return 0


def _latest(storage_path: str) -> Path:
    folders = find_sweeps(storage_path)
    if not folders:
        raise UserError(f"no sweep logs under {storage_path}. Run finesweep select from the folder the sweep ran in, "
                        "or pass cluster.storage_path=<the path it ran with>.")
    return folders[0]


def report(where: Locations, ref: Optional[str], console: Console) -> int:
    """Build a sweep's report (default: the latest sweep), print its path, and log it to the parent run."""
    from finesweep.report import publish
    from finesweep.tracking import parent_run

    if ref is None:
        folders = find_sweeps(where.storage_path)
        if not folders:
            raise UserError(f"no sweep logs under {where.storage_path}. Run finesweep report from the folder the "
                            "sweep ran in, or pass cluster.storage_path=<the path it ran with>.")
        folder = folders[0]
    else:
        folder = locate(where.storage_path, ref, parent_run)
    built, message = publish(folder)
    console.print(f"report of {folder.name} in {built.seconds:.1f} s: {built.html}", markup=False)
    if built.png_problem:
        console.print(f"note: no PNG copies ({built.png_problem})", style="yellow", markup=False)
    if message:
        console.print(message, markup=False)
    return 0


def serve(where: Locations, model: Optional[str], host: str, port: int, expose: bool, console: Console) -> int:
    """Serve a registered model (default: the latest sweep's) as a REST endpoint with MLflow's model server.

    ``model`` is any form MLflow accepts (``NAME``, ``NAME/VERSION``, ``NAME@ALIAS``, ``models:/...``,
    ``runs:/...``); the server reads it from the store the command resolved (``MLFLOW_TRACKING_URI`` when
    ``tracking.uri`` is not given).
    """
    from finesweep.tracking import request_example, resolve_model

    check_host(host, expose, console)
    uri, columns = resolve_model(where.tracking_uri, model)
    request = request_example(where.tracking_uri, uri) or {
        "dataframe_records": [{c: text for c in columns} for text in ("what a great day", "awful service")]}
    os.environ["MLFLOW_TRACKING_URI"] = where.tracking_uri  # the model server reads the same store
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local",
               "--host", host, "--port", str(port), "--workers", "1"]
    url = f"http://{host}:{port}/invocations"
    console.print(f"serving {uri} from {where.tracking_uri} at {url}  (Ctrl-C stops it). Try:\n  curl -s {url} -H "
                  f"'Content-Type: application/json' -d '{json.dumps(request)}'",
                  markup=False, soft_wrap=True)
    sys.stdout.flush()
    # MLflow starts `uvicorn` by name: this Python's scripts first, even in a venv that is not activated.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    os.execv(sys.executable, command)
    return 0  # not reached


def sqlite_missing(uri: str) -> bool:
    """A SQLite store that does not exist yet (nothing to read; opening it would create it)."""
    return uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists()

