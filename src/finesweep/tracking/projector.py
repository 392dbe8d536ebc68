"""Sending a sweep's log to MLflow, in order, each event once in effect, whatever MLflow is doing.

See the package docstring (``finesweep.tracking``) for the guarantees.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from finesweep.checkpoints import best_weights
from finesweep.errors import ConfigError
from finesweep.records import TrialStatus
from finesweep.tracking.registry import register

ROLE_TAG = "finesweep.role"
STATUS_TAG = "finesweep.trial_status"
PARENT_TAG = "mlflow.parentRunId"
PHASE_TAG = "finesweep.phase"
KEY_TAG = "finesweep.run_key"
STATE_TAG = "finesweep.state"
MAX_PARAM_CHARS = 6000  # MLflow's limit on one param value
CURSOR = "mlflow.json"
TRANSIENT_CODES = ("INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "DEADLINE_EXCEEDED")

log = logging.getLogger("finesweep.tracking")


@dataclass
class Cursor:
    """How far a sweep's log has been sent, and the MLflow ids it was given (``mlflow.json`` beside the log)."""

    sent: int = 0
    experiment_id: str = ""
    runs: Dict[str, str] = field(default_factory=dict)
    """run key -> MLflow run id: "sweep" for the parent, "trial/<number>" for each trial."""
    registered: Dict[str, str] = field(default_factory=dict)
    """selection round -> "name/version"."""
    skipped: List[int] = field(default_factory=list)
    """Events MLflow refused for good (logged with the reason); never retried."""

    @classmethod
    def load(cls, folder: Path) -> Cursor:
        """The cursor of a sweep folder (a fresh one when nothing was sent yet)."""
        path = folder / CURSOR
        return cls(**json.loads(path.read_text())) if path.is_file() else cls()

    def save(self, folder: Path) -> None:
        """Write atomically: a crash leaves the old cursor or the new one, never half of one."""
        temporary = folder / f".{CURSOR}.tmp"
        temporary.write_text(json.dumps(asdict(self)))
        os.replace(temporary, folder / CURSOR)


class Projector:
    """Sends a sweep's events to MLflow in order, each exactly once, riding out outages.

    Args:
        folder: the sweep's folder (its log and cursor).
        uri: the tracking URI.
        retry_cap: longest wait between two tries of an event, in seconds.
    """

    def __init__(self, folder: Path, uri: str, retry_cap: float = 15.0) -> None:
        self.folder = folder
        self.uri = uri
        self.retry_cap = retry_cap
        self.cursor = Cursor.load(folder)
        self.waiting: Optional[str] = None
        """Why the last try failed, while the projector waits to try again; None when all went through."""
        self._queue: "queue.Queue[Dict[str, Any]]" = queue.Queue()
        self._idle = threading.Event()
        self._idle.set()
        self._stop = threading.Event()
        self._hurry = threading.Event()  # set while the driver waits at the end: retry every second
        self._thread: Optional[threading.Thread] = None
        self._client: Optional[MlflowClient] = None
        self._uncertain = True  # the first event after a (re)start may have been half sent before
        # Fail fast inside each call: retrying (with back-off, without limit) is this class's job.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")

    @property
    def client(self) -> MlflowClient:
        """The MLflow client; opening a new SQLite store runs its migrations (~2 s), so it is lazy."""
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    @property
    def parent_id(self) -> str:
        """The sweep's parent run id ("" until MLflow has been reached)."""
        return self.cursor.runs.get("sweep", "")

    def prepare(self, experiment: str, artifact_root: str) -> bool:
        """Open the store and find or create the experiment; False when MLflow cannot be reached now.

        Raises:
            ConfigError: the experiment is deleted (a rule the user must fix, not an outage).
        """
        try:
            self._experiment(experiment, artifact_root)
            return True
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - an outage: the sweep goes on, events wait in the log
            self.waiting = _reason(exc)
            log.warning("MLflow is not reachable at %s yet (%s); events wait in the sweep's log", self.uri,
                        self.waiting)
            return False

    def start(self, backlog: Sequence[Dict[str, Any]] = ()) -> None:
        """Start sending: first the events of the log not sent yet, then what ``submit`` hands over."""
        for event in backlog:
            self.submit(event)
        self._thread = threading.Thread(target=self._run, name="finesweep-mlflow", daemon=True)
        self._thread.start()

    def submit(self, event: Dict[str, Any]) -> None:
        """Queue an event (already appended to the log) for sending."""
        if event["seq"] < self.cursor.sent:
            return
        self._idle.clear()
        self._queue.put(event)

    def drain(self, timeout: float) -> bool:
        """Wait until every queued event is sent; True when all went through.

        ``timeout`` bounds the time without progress, not the whole wait: a server that came back after an
        outage and is working through the backlog is waited for as long as events keep going through.
        """
        if self._thread is None or not self._thread.is_alive():
            return self._queue.empty()
        self._hurry.set()
        sent, deadline = self.cursor.sent, time.monotonic() + timeout
        while not self._idle.wait(min(1.0, max(0.0, deadline - time.monotonic()))):
            if self.cursor.sent > sent:
                sent, deadline = self.cursor.sent, time.monotonic() + timeout
            elif time.monotonic() >= deadline:
                return False
        return True

    def close(self) -> None:
        """Stop the thread (events not sent stay in the log for ``finesweep sync``)."""
        self._stop.set()
        self._hurry.set()
        self._queue.put({})
        if self._thread is not None:
            self._thread.join(timeout=5)

    def sync(self, events: Sequence[Dict[str, Any]], deadline: float) -> int:
        """Send the unsent events now, on this thread, until done or ``deadline`` (time.monotonic); return the count."""
        sent = 0
        for event in events:
            if event["seq"] < self.cursor.sent:
                continue
            if not self._send(event, deadline):
                break
            sent += 1
        return sent

    # --- the sending thread ----------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            event = self._queue.get()
            if not event:
                break
            self._send(event, deadline=None)
            if self._queue.empty():
                self._idle.set()

    def _send(self, event: Dict[str, Any], deadline: Optional[float]) -> bool:
        pause = min(0.5, self.retry_cap)
        while True:
            try:
                self._apply(event)
                self.waiting = None
                break
            except Exception as exc:  # noqa: BLE001 - decide: wait and try again, or give this event up
                if not _transient(exc):
                    log.error("MLflow refused event %s (%s): %s", event["seq"], event["kind"], _reason(exc))
                    self.cursor.skipped.append(event["seq"])
                    break
                self.waiting, self._uncertain = _reason(exc), True
                log.warning("MLflow unreachable (%s); retrying event %s in %.1f s", self.waiting, event["seq"], pause)
                if self._stop.is_set() or (deadline is not None and time.monotonic() + pause > deadline):
                    return False
                self._stop.wait(min(pause, 1.0) if self._hurry.is_set() else pause)
                pause = min(self.retry_cap, pause * 2)
        self.cursor.sent = event["seq"] + 1
        self.cursor.save(self.folder)
        self._uncertain = False
        return True

    def _apply(self, event: Dict[str, Any]) -> None:
        handler: Optional[Callable[[Dict[str, Any]], None]] = getattr(self, f"_on_{event['kind']}", None)
        if handler is not None:
            handler(event)

    # --- one handler per event kind ----------------------------------------------------------------

    def _on_sweep(self, event: Dict[str, Any]) -> None:
        experiment_id = self._experiment(event["experiment"], event["artifact_root"])
        tags = {ROLE_TAG: "sweep", KEY_TAG: event["sweep_id"], STATE_TAG: event["folder"], **event["tags"]}
        run_id = self._find_or_create("sweep", experiment_id, event["name"], tags)
        params = [Param(k, _param_value(v)) for k, v in event["params"].items()]
        self.client.log_batch(run_id, params=params)
        self.client.log_text(run_id, event["config_yaml"], "config.yaml")
        self.client.log_text(run_id, event["sweep_yaml"], f"sweep/{event['sweep_file']}")
        self.client.log_text(run_id, json.dumps(event["space"], indent=2), "search_space.json")
        self.client.set_experiment_tag(experiment_id, VIEW_TAG, json.dumps(runs_view(event)))

    def _on_session(self, event: Dict[str, Any]) -> None:
        self.client.update_run(self.parent_id, status="RUNNING")
        self.client.set_tag(self.parent_id, "finesweep.sessions", str(event["session"]))

    def _on_extended(self, event: Dict[str, Any]) -> None:
        self.client.set_tag(self.parent_id, "finesweep.budget", str(event["budget"]))

    def _on_trial_started(self, event: Dict[str, Any]) -> None:
        key = f"trial/{event['number']}"
        if key in self.cursor.runs:  # the same trial goes on (resumed, retried): the same run
            run_id = self.cursor.runs[key]
            self.client.update_run(run_id, status="RUNNING")
            changed = [Param(f"attempt{event['attempt']}.{k}", _param_value(v)) for k, v in event["changed"].items()]
            self.client.log_batch(run_id, params=changed,
                                  tags=[RunTag(STATUS_TAG, TrialStatus.running.value),
                                        RunTag("finesweep.attempts", str(event["attempt"]))])
            return
        tags = {PARENT_TAG: self.parent_id, ROLE_TAG: "trial", STATUS_TAG: TrialStatus.running.value,
                KEY_TAG: f"{event['sweep_id']}/{key}", PHASE_TAG: event["phase"], "finesweep.trial_number":
                str(event["number"])}
        if event.get("optuna_number") is not None:
            tags["finesweep.optuna_trial"] = str(event["optuna_number"])
        prefix = "trial" if event["phase"] == "search" else event["phase"]
        run_id = self._find_or_create(key, self.cursor.experiment_id, f"{prefix}-{event['number']:03d}", tags)
        if event["params"]:
            self.client.log_batch(run_id, params=[Param(k, _param_value(v)) for k, v in event["params"].items()])

    def _on_trial_result(self, event: Dict[str, Any]) -> None:
        step = int(event["metrics"].get("epoch", 0))
        metrics = [Metric(k, float(v), int(event["at"]), step) for k, v in event["metrics"].items() if k != "epoch"]
        placed = [RunTag(f"finesweep.{k}", str(event[k])) for k in ("node", "device", "precision") if event.get(k)]
        self.client.log_batch(self._run_of(event), metrics=metrics, tags=placed)

    def _on_trial_retrying(self, event: Dict[str, Any]) -> None:
        self.client.log_batch(self._run_of(event), tags=[
            RunTag(f"finesweep.attempt{event['attempt'] - 1}_failure", f"{event['failure']}: {event['error']}"[:5000]),
            RunTag("finesweep.attempts", str(event["attempt"]))])

    def _on_trial_interrupted(self, event: Dict[str, Any]) -> None:
        run_id = self._run_of(event)
        self.client.set_tag(run_id, STATUS_TAG, "interrupted")
        self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.KILLED))

    def _on_trial_ended(self, event: Dict[str, Any]) -> None:
        run_id = self._run_of(event)
        tags = {STATUS_TAG: event["status"], "finesweep.epochs_run": str(event["epochs_run"]),
                "finesweep.attempts": str(event["attempts"])}
        for name in ("checkpoint", "failure", "error", "best_epoch"):
            if event.get(name) not in (None, ""):
                tags[f"finesweep.{name}"] = str(event[name])[:5000]
        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        failed = event["status"] == TrialStatus.failed.value
        self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED if failed else RunStatus.FINISHED))

    def _on_checkpoint_deleted(self, event: Dict[str, Any]) -> None:
        self.client.set_tag(self._run_of(event), "finesweep.checkpoint_deleted", "true")

    def _on_note(self, event: Dict[str, Any]) -> None:
        self.client.set_tag(self.parent_id, event["tag"], str(event["text"])[:5000])

    def _on_selection(self, event: Dict[str, Any]) -> None:
        step = int(event["round"])
        now = int(event["time"] * 1000)
        self.client.log_batch(self.parent_id, metrics=[Metric(k, float(v), now, step)
                                                       for k, v in event["metrics"].items()],
                              tags=[RunTag(k, str(v)) for k, v in event["tags"].items()])
        self.client.log_text(self.parent_id, event["leaderboard_csv"], "final/leaderboard.csv")
        self.client.log_text(self.parent_id, event["leaderboard_md"], "final/leaderboard.md")

    def _on_best(self, event: Dict[str, Any]) -> None:
        now = int(event["time"] * 1000)
        tags = {f"best.{k}": _param_value(v) for k, v in event["params"].items()}
        tags.update({"finesweep.best_run_id": self.cursor.runs.get(f"trial/{event['number']}", ""),
                     "finesweep.best_epoch": str(event["epoch"]), "finesweep.best_trial": str(event["number"])})
        self.client.log_batch(self.parent_id, metrics=[Metric(f"best/{event['metric']}", float(event["value"]), now,
                                                              int(event["round"]))],
                              tags=[RunTag(k, v) for k, v in tags.items()])
        weights = best_weights(event["checkpoint"]) if event.get("checkpoint") else None
        if weights is not None and weights.is_dir():
            self.client.log_artifacts(self.parent_id, str(weights), "best_model")

    def _on_register(self, event: Dict[str, Any]) -> None:
        round_ = str(event["round"])
        if round_ in self.cursor.registered:
            return
        version = self._registered_in_round(event["name"], round_) or register(self, event)
        self.cursor.registered[round_] = version
        self.client.set_tag(self.parent_id, "finesweep.registered_model", version)

    def _on_baseline(self, event: Dict[str, Any]) -> None:
        at = int(event["time"] * 1000)
        self.client.log_batch(self.parent_id, metrics=[Metric(k, float(v), at, 0) for k, v in event["metrics"].items()])

    def _on_report(self, event: Dict[str, Any]) -> None:
        folder = Path(event["folder"])
        if folder.is_dir():  # deleted since: nothing to send (a later report event sends the new one)
            self.client.log_artifacts(self.parent_id, str(folder), "report")

    def _on_finished(self, event: Dict[str, Any]) -> None:
        self.client.set_terminated(self.parent_id, event["status"])
        if self.uri.startswith(("http://", "https://")):  # MLflow's own "View run" lines are off (cli.main)
            log.info("View the sweep at: %s/#/experiments/%s/%s", self.uri.rstrip("/"),
                     self.cursor.experiment_id, UI_VIEW)

    # --- helpers ----------------------------------------------------------------------------------

    def _experiment(self, name: str, artifact_root: str) -> str:
        if self.cursor.experiment_id:
            return self.cursor.experiment_id
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            root = artifact_root_of(self.uri, artifact_root)
            location = f"{root.rstrip('/')}/{name}" if root else None
            experiment_id = self.client.create_experiment(name, artifact_location=location)
        elif experiment.lifecycle_stage == "deleted":
            raise ConfigError(f"tracking.experiment: MLflow experiment {name!r} is deleted. "
                              "Restore it (mlflow experiments restore) or set tracking.experiment to a new name.")
        else:
            experiment_id = experiment.experiment_id
        # MLflow's UI opens an experiment as GenAI traces unless told it holds model training runs.
        self.client.set_experiment_tag(experiment_id, "mlflow.experimentKind", EXPERIMENT_KIND)
        self.cursor.experiment_id = experiment_id
        return experiment_id

    def _find_or_create(self, key: str, experiment_id: str, name: str, tags: Dict[str, str]) -> str:
        if key in self.cursor.runs:
            return self.cursor.runs[key]
        run_id = self._find(experiment_id, tags[KEY_TAG]) if self._uncertain else None
        if run_id is None:
            run_id = self.client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
        self.cursor.runs[key] = run_id
        return run_id

    def _find(self, experiment_id: str, run_key: str) -> Optional[str]:
        found = self.client.search_runs([experiment_id], f"tags.`{KEY_TAG}` = '{run_key}'", max_results=1)
        return found[0].info.run_id if found else None

    def _run_of(self, event: Dict[str, Any]) -> str:
        return self.cursor.runs[f"trial/{event['number']}"]

    def _registered_in_round(self, name: str, round_: str) -> Optional[str]:
        for version in self.client.search_model_versions(f"run_id = '{self.parent_id}'"):
            if version.tags.get("finesweep.selection_round") == round_:
                return f"{name}/{version.version}"
        return None


EXPERIMENT_KIND = "finetuning"
"""``mlflow.experimentKind`` of a sweep's experiment: the UI shows it as model training."""

VIEW_KEY = "finesweep"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
"""The experiment tag MLflow's UI reads a shared view from (its "Share" button writes the same tag)."""

UI_VIEW = f"runs?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}"
"""Where a link into MLflow's UI lands for an experiment: its training runs (not the GenAI overview), with
the columns of ``runs_view``."""

MAX_PARAM_COLUMNS = 12


def runs_view(sweep_event: Dict[str, Any]) -> Dict[str, Any]:
    """The runs table's columns for the latest sweep: each trial's status, the objective, the searched values.

    MLflow's UI shows Source, Models and Dataset by default and keeps tags and params behind its column
    picker; the link finesweep prints names this view, so a trial's status is a column at first sight.
    """
    metric = sweep_event["tags"]["finesweep.objective"].split(" ", 1)[1]
    params = [f"params.`{key}`" for key in list(sweep_event["space"])[:MAX_PARAM_COLUMNS]]
    columns = [f"tags.`{STATUS_TAG}`", f"metrics.`{metric}`", *params]
    # columnOrder puts them first, before MLflow's Created, Duration and Models (the table draws only the
    # columns in view, so a tag column at the far right would be out of sight).
    return {"selectedColumns": [*columns, "attributes.`Models`"], "columnOrder": columns}


def artifact_root_of(uri: str, artifact_root: str) -> str:
    """Where a store keeps artifacts: ``tracking.artifact_root`` if set; else ``artifacts/`` beside a SQLite
    file (SQLite's own default, ./mlruns, would collide with a file store); else "" (the server decides)."""
    if artifact_root:
        return artifact_root
    if uri.startswith("sqlite:///"):
        return str(Path(uri[len("sqlite:///"):]).parent / "artifacts")
    return ""


def _transient(exc: BaseException) -> bool:
    """Worth trying again later: the store is unreachable, overloaded or locked, not refusing the request."""
    if isinstance(exc, MlflowException):
        return exc.error_code in TRANSIENT_CODES
    return isinstance(exc, (OSError, ConnectionError, TimeoutError)) or type(exc).__module__.startswith(
        ("requests", "urllib3", "sqlalchemy"))


def _reason(exc: BaseException) -> str:
    """Why a call failed, short: an OS error's own words (Connection refused) rather than a URL-long trace."""
    from finesweep.errors import one_line

    text = one_line(exc, kind=True)
    errno = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    return errno.group(1).strip() if errno else text[:300]


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 3] + "..."


def sync_log(folder: Path, uri: Optional[str], deadline: float) -> tuple[str, int]:
    """Send what MLflow has not taken of one sweep's log; return a line saying so and the events left.

    Args:
        folder: the sweep's folder.
        uri: the tracking URI; None = the one the sweep logged to.
        deadline: give up then (time.monotonic).
    """
    from finesweep.state import LOG_NAME, read_events

    events = list(read_events(folder / LOG_NAME))
    if Cursor.load(folder).sent >= len(events):
        return "", 0
    target = uri or events[0]["tracking_uri"]
    projector = Projector(folder, target)
    sent = projector.sync(events, deadline)
    missing = len(events) - projector.cursor.sent
    return (f"{folder.name}: sent {sent} event(s) to {target}" + (f"; {missing} left ({projector.waiting})"
                                                                 if missing else "")), missing


