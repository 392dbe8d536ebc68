"""Sending a sweep's journal to MLflow, in order, each event once in effect, whatever MLflow is doing.

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
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type

import pandas as pd
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from finesweep.config import progress_of
from finesweep.errors import ConfigError, one_line
from finesweep.finetune.layout import best_weights, generations
from finesweep.journal.events import (
    LOG_NAME,
    BaselineScored,
    BestChosen,
    CheckpointDeleted,
    Event,
    Note,
    RegisterRequested,
    ReportWritten,
    SelectionMade,
    SessionStarted,
    SweepEnded,
    SweepExtended,
    SweepStarted,
    TrialEnded,
    TrialInterrupted,
    TrialResult,
    TrialRetrying,
    TrialStarted,
)
from finesweep.journal.file import read_events, read_records
from finesweep.journal.records import TrialStatus
from finesweep.tracking.cursor import Cursor
from finesweep.tracking.registry import register, registered_in_round
from finesweep.tracking.tags import (
    EXPERIMENT_KIND,
    KEY_TAG,
    PARENT_TAG,
    PHASE_TAG,
    ROLE_TAG,
    STATE_TAG,
    STATUS_TAG,
    UI_VIEW,
    VIEW_TAG,
    view_state,
)

MAX_PARAM_CHARS = 6000  # MLflow's limit on one param value
TRANSIENT_CODES = ("INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "DEADLINE_EXCEEDED")

logger = logging.getLogger("finesweep.tracking")


class Projector:
    """Sends a sweep's events to MLflow in order, each exactly once, riding out outages.

    Args:
        folder: the sweep's folder (its journal and cursor).
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
        self._queue: "queue.Queue[Optional[Event]]" = queue.Queue()
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
        self._handlers: Dict[Type[Event], Callable[[Any], None]] = {
            SweepStarted: self._on_sweep, SessionStarted: self._on_session, SweepExtended: self._on_extended,
            TrialStarted: self._on_trial_started, TrialResult: self._on_trial_result,
            TrialRetrying: self._on_trial_retrying, TrialInterrupted: self._on_trial_interrupted,
            TrialEnded: self._on_trial_ended, CheckpointDeleted: self._on_checkpoint_deleted, Note: self._on_note,
            SelectionMade: self._on_selection, BestChosen: self._on_best, RegisterRequested: self._on_register,
            BaselineScored: self._on_baseline, ReportWritten: self._on_report, SweepEnded: self._on_finished,
        }

    @property
    def client(self) -> MlflowClient:
        """The MLflow client; opening a new SQLite store runs its migrations (~2 s), so it is lazy."""
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    @property
    def parent_id(self) -> str:
        """The sweep's parent run id ("" until MLflow has been reached)."""
        return self.cursor.parent_id

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
        except Exception as exc:  # noqa: BLE001 - an outage: the sweep goes on, events wait in the journal
            self.waiting = _reason(exc)
            logger.warning("MLflow is not reachable at %s yet (%s); events wait in the sweep's journal", self.uri,
                           self.waiting)
            return False

    def start(self, backlog: Sequence[Event] = ()) -> None:
        """Start sending: first the events of the journal not sent yet, then what ``submit`` hands over."""
        for event in backlog:
            self.submit(event)
        self._thread = threading.Thread(target=self._run, name="finesweep-mlflow", daemon=True)
        self._thread.start()

    def submit(self, event: Event) -> None:
        """Queue an event (already appended to the journal) for sending."""
        if event.seq < self.cursor.sent:
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
        """Stop the thread (events not sent stay in the journal for ``finesweep sync``)."""
        self._stop.set()
        self._hurry.set()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def sync(self, events: Sequence[Event], deadline: float) -> int:
        """Send the unsent events now, on this thread, until done or ``deadline`` (time.monotonic); return the count."""
        sent = 0
        for event in events:
            if event.seq < self.cursor.sent:
                continue
            if not self._send(event, deadline):
                break
            sent += 1
        return sent

    # --- the sending thread ----------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            event = self._queue.get()
            if event is None:
                break
            self._send(event, deadline=None)
            if self._queue.empty():
                self._idle.set()

    def _send(self, event: Event, deadline: Optional[float]) -> bool:
        pause = min(0.5, self.retry_cap)
        while True:
            try:
                self._apply(event)
                self.waiting = None
                break
            except Exception as exc:  # noqa: BLE001 - decide: wait and try again, or give this event up
                if not _transient(exc):
                    logger.error("MLflow refused event %s (%s): %s", event.seq, type(event).__name__, _reason(exc))
                    self.cursor.skipped.append(event.seq)
                    break
                self.waiting, self._uncertain = _reason(exc), True
                logger.warning("MLflow unreachable (%s); retrying event %s in %.1f s", self.waiting, event.seq, pause)
                if self._stop.is_set() or (deadline is not None and time.monotonic() + pause > deadline):
                    return False
                self._stop.wait(min(pause, 1.0) if self._hurry.is_set() else pause)
                pause = min(self.retry_cap, pause * 2)
        self.cursor.sent = event.seq + 1
        self.cursor.save(self.folder)
        self._uncertain = False
        return True

    def _apply(self, event: Event) -> None:
        handler = self._handlers.get(type(event))
        if handler is not None:  # an event of a newer version's kind: nothing this version can send
            handler(event)

    # --- one handler per event kind ----------------------------------------------------------------

    def _on_sweep(self, event: SweepStarted) -> None:
        experiment_id = self._experiment(event.experiment, event.artifact_root)
        tags = {ROLE_TAG: "sweep", KEY_TAG: event.sweep_id, STATE_TAG: event.folder, **event.tags}
        run_id = self._find_or_create("sweep", experiment_id, event.name, tags)
        self.client.log_batch(run_id, params=[Param(k, _param_value(v)) for k, v in event.params.items()])
        self.client.log_text(run_id, event.config_yaml, "config.yaml")
        self.client.log_text(run_id, event.sweep_yaml, f"sweep/{event.sweep_file}")
        self.client.log_text(run_id, json.dumps(event.space, indent=2), "search_space.json")
        self.client.set_experiment_tag(experiment_id, VIEW_TAG, view_state(event, run_id))

    def _on_session(self, event: SessionStarted) -> None:
        self.client.update_run(self.parent_id, status="RUNNING")
        self.client.set_tag(self.parent_id, "finesweep.sessions", str(event.session))

    def _on_extended(self, event: SweepExtended) -> None:
        self.client.set_tag(self.parent_id, "finesweep.budget", str(event.budget))

    def _on_trial_started(self, event: TrialStarted) -> None:
        key = f"trial/{event.number}"
        if key in self.cursor.runs:  # the same trial goes on (resumed, retried): the same run
            run_id = self.cursor.runs[key]
            self.client.update_run(run_id, status="RUNNING")
            changed = [Param(f"attempt{event.attempt}.{k}", _param_value(v)) for k, v in event.changed.items()]
            if event.changed and event.effective_batch:
                changed.append(Param(f"attempt{event.attempt}.effective_batch", str(event.effective_batch)))
            self.client.log_batch(run_id, params=changed,
                                  tags=[RunTag(STATUS_TAG, TrialStatus.running.value),
                                        RunTag("finesweep.attempts", str(event.attempt))])
            return
        tags = {PARENT_TAG: self.parent_id, ROLE_TAG: "trial", STATUS_TAG: TrialStatus.running.value,
                KEY_TAG: f"{event.sweep_id}/{key}", PHASE_TAG: event.phase,
                "finesweep.trial_number": str(event.number)}
        if event.optuna_number is not None:
            tags["finesweep.optuna_trial"] = str(event.optuna_number)
        prefix = "trial" if event.phase == "search" else event.phase
        run_id = self._find_or_create(key, self.cursor.experiment_id, f"{prefix}-{event.number:03d}", tags)
        params = [Param(k, _param_value(v)) for k, v in event.params.items()]
        if event.effective_batch:  # per device x workers x accumulation, as this trial trains
            params.append(Param("effective_batch", str(event.effective_batch)))
        if params:
            self.client.log_batch(run_id, params=params)

    def _on_trial_result(self, event: TrialResult) -> None:
        step = progress_of(event.metrics)
        metrics = [Metric(k, float(v), event.at, step) for k, v in event.metrics.items() if k not in ("epoch", "step")]
        placed = [RunTag(f"finesweep.{name}", value) for name, value in
                  (("node", event.node), ("device", event.device), ("precision", event.precision),
                   ("workers", str(event.workers) if event.workers else ""), ("worker_pids", event.worker_pids))
                  if value]
        run_id = self._run_of(event.number)
        self.client.log_batch(run_id, metrics=metrics, tags=placed)
        rows = generations(event.checkpoint) if event.checkpoint else None
        if rows:  # the texts this report generated: a table in the MLflow UI's artifact view
            self.client.log_table(run_id, data=pd.DataFrame(rows), artifact_file=f"generations/{step:07d}.json")

    def _on_trial_retrying(self, event: TrialRetrying) -> None:
        self.client.log_batch(self._run_of(event.number), tags=[
            RunTag(f"finesweep.attempt{event.attempt - 1}_failure", f"{event.failure}: {event.error}"[:5000]),
            RunTag("finesweep.attempts", str(event.attempt))])

    def _on_trial_interrupted(self, event: TrialInterrupted) -> None:
        run_id = self._run_of(event.number)
        self.client.set_tag(run_id, STATUS_TAG, "interrupted")
        self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.KILLED))

    def _on_trial_ended(self, event: TrialEnded) -> None:
        run_id = self._run_of(event.number)
        tags = {STATUS_TAG: event.status.value, "finesweep.epochs_run": str(event.epochs_run),
                "finesweep.attempts": str(event.attempts)}
        for name, value in (("checkpoint", event.checkpoint), ("failure", event.failure), ("error", event.error),
                            ("best_epoch", event.best_epoch)):
            if value not in (None, ""):
                tags[f"finesweep.{name}"] = str(value)[:5000]
        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        failed = event.status is TrialStatus.failed
        self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED if failed else RunStatus.FINISHED))

    def _on_checkpoint_deleted(self, event: CheckpointDeleted) -> None:
        self.client.set_tag(self._run_of(event.number), "finesweep.checkpoint_deleted", "true")

    def _on_note(self, event: Note) -> None:
        self.client.set_tag(self.parent_id, event.tag, str(event.text)[:5000])

    def _on_selection(self, event: SelectionMade) -> None:
        now = int(event.time * 1000)
        self.client.log_batch(self.parent_id, metrics=[Metric(k, float(v), now, event.round)
                                                       for k, v in event.metrics.items()],
                              tags=[RunTag(k, str(v)) for k, v in event.tags.items()])
        if event.selected_trial is not None:  # a user's pick from the front (finesweep select): the tables stand
            return
        self.client.log_text(self.parent_id, event.leaderboard_csv, "final/leaderboard.csv")
        self.client.log_text(self.parent_id, event.leaderboard_md, "final/leaderboard.md")
        if event.breakdown_csv:
            self.client.log_text(self.parent_id, event.breakdown_csv, f"final/{event.breakdown_name}.csv")
            self.client.log_text(self.parent_id, event.breakdown_md, f"final/{event.breakdown_name}.md")
        if event.front:
            self.client.log_table(self.parent_id, data=self._front_table(event.front),
                                  artifact_file="final/pareto_front.json")
        if event.generations:
            table = pd.DataFrame(event.generations)
            self.client.log_table(self.parent_id, data=table, artifact_file="final/generations.json")
            trial_run = self.cursor.runs.get(f"trial/{event.generated_by}")
            if trial_run:
                self.client.log_table(trial_run, data=table, artifact_file="final/generations.json")

    def _front_table(self, front: List[Dict[str, Any]]) -> pd.DataFrame:
        """The Pareto front as a table: one row per point, its objective values, values and MLflow run id."""
        return pd.DataFrame([{"trial": row["trial"], "run_id": self.cursor.runs.get(f"trial/{row['trial']}", ""),
                              **row["values"], **{k: _param_value(v) for k, v in row["params"].items()},
                              "epoch": row.get("epoch")} for row in front])

    def _on_best(self, event: BestChosen) -> None:
        now = int(event.time * 1000)
        tags = {f"best.{k}": _param_value(v) for k, v in event.params.items()}
        tags.update({"finesweep.best_run_id": self.cursor.runs.get(f"trial/{event.number}", ""),
                     "finesweep.best_epoch": str(event.epoch), "finesweep.best_trial": str(event.number)})
        self.client.log_batch(self.parent_id, metrics=[Metric(f"best/{event.metric}", float(event.value), now,
                                                              event.round)],
                              tags=[RunTag(k, v) for k, v in tags.items()])
        weights = best_weights(event.checkpoint) if event.checkpoint else None
        if weights is not None and weights.is_dir():
            self.client.log_artifacts(self.parent_id, str(weights), "best_model")

    def _on_register(self, event: RegisterRequested) -> None:
        round_ = str(event.round)
        if round_ in self.cursor.registered:
            return
        version = (registered_in_round(self.client, self.parent_id, event.name, event.round)
                   or register(self.client, self.uri, self.parent_id, event))
        self.cursor.registered[round_] = version
        self.client.set_tag(self.parent_id, "finesweep.registered_model", version)

    def _on_baseline(self, event: BaselineScored) -> None:
        at = int(event.time * 1000)
        self.client.log_batch(self.parent_id, metrics=[Metric(k, float(v), at, 0) for k, v in event.metrics.items()])

    def _on_report(self, event: ReportWritten) -> None:
        folder = Path(event.folder)
        if folder.is_dir():  # deleted since: nothing to send (a later report event sends the new one)
            self.client.log_artifacts(self.parent_id, str(folder), "report")

    def _on_finished(self, event: SweepEnded) -> None:
        self.client.set_terminated(self.parent_id, event.status)
        if self.uri.startswith(("http://", "https://")):  # MLflow's own "View run" lines are off (cli.main)
            logger.info("View the sweep at: %s/#/experiments/%s/%s", self.uri.rstrip("/"),
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
        return str(experiment_id)

    def _find_or_create(self, key: str, experiment_id: str, name: str, tags: Dict[str, str]) -> str:
        if key in self.cursor.runs:
            return self.cursor.runs[key]
        run_id = self._find(experiment_id, tags[KEY_TAG]) if self._uncertain else None
        if run_id is None:
            run_id = str(self.client.create_run(experiment_id, run_name=name, tags=tags).info.run_id)
        self.cursor.runs[key] = run_id
        return run_id

    def _find(self, experiment_id: str, run_key: str) -> Optional[str]:
        found = self.client.search_runs([experiment_id], f"tags.`{KEY_TAG}` = '{run_key}'", max_results=1)
        return str(found[0].info.run_id) if found else None

    def _run_of(self, number: int) -> str:
        return self.cursor.runs[f"trial/{number}"]


def artifact_root_of(uri: str, artifact_root: str) -> str:
    """Where a store keeps artifacts: ``tracking.artifact_root`` if set; else ``artifacts/`` beside a SQLite
    file (SQLite's own default, ./mlruns, would collide with a file store); else "" (the server decides)."""
    if artifact_root:
        return artifact_root
    if uri.startswith("sqlite:///"):
        return str(Path(uri[len("sqlite:///"):]).parent / "artifacts")
    return ""


def sync_log(folder: Path, uri: Optional[str], deadline: float) -> Tuple[str, int]:
    """Send what MLflow has not taken of one sweep's journal; return a line saying so and the events left.

    Args:
        folder: the sweep's folder.
        uri: the tracking URI; None = the one the sweep logged to.
        deadline: give up then (time.monotonic).
    """
    events: List[Event] = list(read_events(folder / LOG_NAME))
    if Cursor.load(folder).sent >= len(events) or not isinstance(events[0], SweepStarted):
        return "", 0
    target = uri or events[0].tracking_uri
    projector = Projector(folder, target)
    sent = projector.sync(events, deadline)
    missing = len(events) - projector.cursor.sent
    return (f"{folder.name}: sent {sent} event(s) to {target}" + (f"; {missing} left ({projector.waiting})"
                                                                 if missing else "")), missing


def unsent(folder: Path) -> int:
    """How many events of a sweep's journal MLflow has not taken yet."""
    return max(0, sum(1 for _ in read_records(folder / LOG_NAME)) - Cursor.load(folder).sent)


def _transient(exc: BaseException) -> bool:
    """Worth trying again later: the store is unreachable, overloaded or locked, not refusing the request."""
    if isinstance(exc, MlflowException):
        return exc.error_code in TRANSIENT_CODES
    return isinstance(exc, (OSError, ConnectionError, TimeoutError)) or type(exc).__module__.startswith(
        ("requests", "urllib3", "sqlalchemy"))


def _reason(exc: BaseException) -> str:
    """Why a call failed, short: an OS error's own words (Connection refused) rather than a URL-long trace."""
    text = one_line(exc, kind=True)
    errno = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    return errno.group(1).strip() if errno else text[:300]


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 3] + "..."
