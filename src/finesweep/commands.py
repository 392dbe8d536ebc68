"""The commands that read what sweeps left behind: ls, ui, sync, report, serve.

Each gets the locations ``cli`` resolved (tracking URI, artifact root, storage path) and never
composes a config: they work without the data or the model, and without the demo extra.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

from rich.console import Console
from rich.table import Table

from finesweep.errors import SweepFailedError, UserError

Where = Dict[str, str]
"""tracking.uri ("uri"), tracking.artifact_root ("artifact_root"), cluster.storage_path ("storage_path")."""


def ls(where: Where, location_overrides: Sequence[str], console: Console) -> int:
    """Past sweeps in the tracking store, and the command that resumes an unfinished one."""
    from finesweep.state import find_sweeps
    from finesweep.tracking import Cursor, list_sweeps

    uri = where["uri"]
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
    unsent = [f.name for f in find_sweeps(where["storage_path"])
              if Cursor.load(f).sent < sum(1 for _ in open(f / "events.jsonl", encoding="utf-8"))]
    for hint in hints:
        console.print(f"resume {hint}", markup=False)
    if unsent:
        console.print(f"not all in MLflow yet: {', '.join(unsent)}; send with: finesweep sync {extra}".rstrip(),
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


def ui(where: Where, host: str, port: int, expose: bool, console: Console) -> int:
    """The MLflow UI for the store, opened on the latest sweep's experiment and parent run."""
    from finesweep.tracking import UI_VIEW, artifact_root_of, list_sweeps

    uri = where["uri"]
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
               "--default-artifact-root", artifact_root_of(uri, where["artifact_root"]),
               "--host", host, "--port", str(port), "--workers", "1"]
    console.print(f"MLflow UI for {uri}: {base}  (Ctrl-C stops it)", markup=False)
    sys.stdout.flush()
    os.execv(sys.executable, command)  # the server takes over this process: signals reach it directly
    return 0  # not reached


def sync(where: Where, ref: Optional[str], uri_given: bool, timeout: float, console: Console) -> int:
    """Send the events MLflow did not take (during an outage) from the sweeps' logs."""
    from finesweep.state import find_sweeps, locate
    from finesweep.tracking import sync_log

    folders = [locate(where["storage_path"], ref)] if ref else find_sweeps(where["storage_path"])
    left = 0
    for folder in folders:
        message, missing = sync_log(folder, where["uri"] if uri_given else None, deadline=time.monotonic() + timeout)
        left += missing
        if message:
            console.print(message, markup=False)
    if left:
        raise SweepFailedError(f"{left} event(s) could not be sent; MLflow is still unreachable. Run finesweep sync "
                               "again once it is up.")
    console.print("every sweep's log is in MLflow.")
    return 0


def report(where: Where, ref: Optional[str], console: Console) -> int:
    """Build a sweep's report (default: the latest sweep), print its path, and log it to the parent run."""
    from finesweep.report import publish
    from finesweep.state import find_sweeps, locate

    if ref is None:
        folders = find_sweeps(where["storage_path"])
        if not folders:
            raise UserError(f"no sweep logs under {where['storage_path']}. Run finesweep report from the folder the "
                            "sweep ran in, or pass cluster.storage_path=<the path it ran with>.")
        folder = folders[0]
    else:
        folder = locate(where["storage_path"], ref)
    built, message = publish(folder)
    console.print(f"report of {folder.name} in {built.seconds:.1f} s: {built.html}", markup=False)
    if built.png_problem:
        console.print(f"note: no PNG copies ({built.png_problem})", style="yellow", markup=False)
    if message:
        console.print(message, markup=False)
    return 0


def serve(where: Where, model: Optional[str], host: str, port: int, expose: bool, console: Console) -> int:
    """Serve a registered model (default: the latest sweep's) as a REST endpoint with MLflow's model server."""
    from finesweep.tracking import latest_registered

    check_host(host, expose, console)
    os.environ["MLFLOW_TRACKING_URI"] = where["uri"]
    uri, columns = latest_registered(where["uri"], model)
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local",
               "--host", host, "--port", str(port), "--workers", "1"]
    url = f"http://{host}:{port}/invocations"
    examples = [{c: text for c in columns} for text in ("what a great day", "awful service")]
    console.print(f"serving {uri} from {where['uri']} at {url}  (Ctrl-C stops it). Try:\n  curl -s {url} -H "
                  f"'Content-Type: application/json' -d '{json.dumps({'dataframe_records': examples})}'",
                  markup=False, soft_wrap=True)
    sys.stdout.flush()
    # MLflow starts `uvicorn` by name: this Python's scripts first, even in a venv that is not activated.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    os.execv(sys.executable, command)
    return 0  # not reached


def sqlite_missing(uri: str) -> bool:
    """A SQLite store that does not exist yet (nothing to read; opening it would create it)."""
    return uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists()

