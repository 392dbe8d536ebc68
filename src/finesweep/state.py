"""The sweep's log: every event a resume needs, appended to one file under ``cluster.storage_path``.

A sweep is a sequence of events (the sweep started, a trial started, reported an epoch, ended, the
winner was chosen ...) appended as JSON lines to ``<storage_path>/finesweep/<sweep id>/events.jsonl``.
One writer appends whole lines, each with a checksum, and flushes each to the OS, so a killed driver
leaves a consistent prefix: a torn last line is ignored when the log is read back. ``SweepState`` is
what replaying the log gives: the trials, their values, results, checkpoints and MLflow identities.

Ray Tune has an experiment restore of its own, but it restores neither ASHA's rungs (ray#30838)
nor the link between a trial and its MLflow run, and its searcher state is a pickle; this log
is plain data that any machine seeing the storage path can read. Writing and reading the file itself:
event_log.py.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from finesweep.checkpoints import drop_training_state
from finesweep.errors import UserError
from finesweep.event_log import LOG_NAME, EventLog, read_events
from finesweep.records import TrialRecord, TrialStatus

STATE_DIR = "finesweep"


def new_sweep_id() -> str:
    """A fresh sweep identity: time-ordered and unique."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"


def sweep_dir(storage_path: str, sweep_id: str) -> Path:
    """Where a sweep's log lives."""
    return Path(storage_path) / STATE_DIR / sweep_id


class SweepLog:
    """A ``SweepListener`` that appends every trial event to the sweep's log, then hands it on (to MLflow).

    The log is written before anything else learns of an event, so whatever MLflow or the terminal
    shows, the log has. Every event is flushed to the OS at once; trial starts and ends are then synced
    to the disk in the background (``EventLog.sync_soon``), and a finished trial's training state is
    deleted only once its end is on the disk.

    Args:
        log: the sweep's event log.
        sweep_id: the sweep's identity (part of every MLflow run key).
        sink: receives each event once it is in the log.
        known: values each known trial last ran with (resumed sweeps), by number.
    """

    def __init__(self, log: EventLog, sweep_id: str, sink: Callable[[Dict[str, Any]], None],
                 known: Optional[Dict[int, Dict[str, Any]]] = None) -> None:
        self.log = log
        self.sweep_id = sweep_id
        self.sink = sink
        self._params: Dict[int, Dict[str, Any]] = dict(known or {})
        self._placed: Dict[int, tuple] = {}

    def event(self, kind: str, durable: bool = False, **data: Any) -> Dict[str, Any]:
        """Append a sweep-level event (selection, best, register, note, finished ...) and hand it on."""
        event = self.log.append(kind, durable=durable, **data)
        self.sink(event)
        return event

    def trial_started(self, record: TrialRecord) -> None:
        before = self._params.get(record.number)
        changed = {k: v for k, v in record.params.items() if before is not None and before.get(k) != v}
        self.event("trial_started", sweep_id=self.sweep_id, number=record.number, phase=record.phase,
                   params=record.params, optuna_number=record.optuna_number, attempt=record.attempts,
                   changed=changed)
        self.log.sync_soon()
        self._params[record.number] = dict(record.params)

    def trial_result(self, record: TrialRecord, metrics: Dict[str, float]) -> None:
        placement = (record.node, record.device, record.precision)
        placed: Dict[str, Any] = {}
        if record.node and self._placed.get(record.number) != placement:  # where it runs, once per attempt
            self._placed[record.number] = placement
            placed = {"node": record.node, "device": record.device, "precision": record.precision}
        self.event("trial_result", number=record.number, metrics=metrics, at=int(time.time() * 1000),
                   checkpoint=record.checkpoint, seen_at=record.seen_at, **placed)

    def trial_retrying(self, record: TrialRecord) -> None:
        self.event("trial_retrying", durable=True, number=record.number, attempt=record.attempts,
                   failure=record.failure, error=record.error or "")

    def trial_ended(self, record: TrialRecord) -> None:
        self.event("trial_ended", number=record.number, status=record.status.value,
                   failure=record.failure if record.status is TrialStatus.failed else "", error=record.error or "",
                   checkpoint=record.checkpoint, epochs_run=record.epochs_run, best_epoch=record.best_epoch,
                   attempts=record.attempts)
        # Once the end is on disk the trial is never continued: its training state is dead weight.
        checkpoint = record.checkpoint
        self.log.sync_soon(lambda: drop_training_state(checkpoint))

    def trial_interrupted(self, record: TrialRecord) -> None:
        """The sweep stopped (Ctrl-C) while this trial ran; it is continued on resume."""
        self.event("trial_interrupted", durable=True, number=record.number)


@dataclass
class TrialState:
    """One trial as the log tells it."""

    number: int
    phase: str
    params: Dict[str, Any]
    optuna_number: Optional[int] = None
    status: str = TrialStatus.running.value
    history: List[Dict[str, float]] = field(default_factory=list)
    times: List[int] = field(default_factory=list)
    """When each epoch was logged (ms), so MLflow receives the same (key, step, time) on every replay."""
    seqs: List[int] = field(default_factory=list)
    """The log position of each result."""
    seen: List[float] = field(default_factory=list)
    """When the scheduler decided on each result: replaying results in this order rebuilds ASHA's rungs."""
    checkpoint: Optional[str] = None
    checkpoint_epoch: int = 0
    failure: str = ""
    error: str = ""
    attempts: int = 1
    interrupted: bool = False
    checkpoint_deleted: bool = False

    @property
    def finished(self) -> bool:
        """Ended for good (completed, stopped early or failed); a running or interrupted trial is not."""
        return self.status != TrialStatus.running.value

    def record(self, metric: str, mode: Any) -> TrialRecord:
        """The trial as a ``TrialRecord`` (what the runner, the view and model selection work with)."""
        rec = TrialRecord(f"log-{self.number}", self.number, dict(self.params), phase=self.phase)
        for metrics in self.history:
            rec.add_result(metrics, metric, mode)
        rec.status = TrialStatus(self.status)
        rec.checkpoint, rec.error, rec.failure = self.checkpoint, self.error or None, self.failure
        rec.optuna_number, rec.attempts = self.optuna_number, self.attempts
        return rec


@dataclass
class SweepState:
    """Everything the log says about a sweep."""

    sweep_id: str
    folder: Path
    header: Dict[str, Any]
    """The ``sweep`` event: name, config, space, objective, data fingerprint, planned trials, parent run key."""
    trials: Dict[int, TrialState] = field(default_factory=dict)
    budget: int = 0
    """Search trials planned in all (raised by extending the sweep)."""
    selections: int = 0
    registered: Optional[str] = None
    status: str = "RUNNING"
    """RUNNING while a session is on (or was killed), KILLED after Ctrl-C, FINISHED or FAILED at the end."""
    events: int = 0

    @property
    def name(self) -> str:
        """The sweep's name."""
        return str(self.header["name"])

    def search_trials(self) -> List[TrialState]:
        """Trials of the search phase, by number."""
        return [t for n, t in sorted(self.trials.items()) if t.phase == "search"]

    def unfinished(self) -> List[TrialState]:
        """Trials to continue: started, not ended."""
        return [t for n, t in sorted(self.trials.items()) if not t.finished]

    @property
    def next_number(self) -> int:
        """The number the next new trial gets."""
        return max(self.trials, default=-1) + 1

    @property
    def complete(self) -> bool:
        """The sweep ran to its end: every planned trial ended, the winner was chosen."""
        return self.status in ("FINISHED", "FAILED")


def load_state(folder: Path) -> SweepState:
    """Replay a sweep's log.

    Raises:
        UserError: no log in ``folder``.
    """
    events = list(read_events(folder / LOG_NAME))
    if not events or events[0]["kind"] != "sweep":
        raise UserError(f"no finesweep log in {folder} (expected {LOG_NAME} starting with the sweep). "
                        "Check cluster.storage_path: it must be the one the sweep ran with.")
    state = SweepState(sweep_id=events[0]["sweep_id"], folder=folder, header=events[0],
                       budget=int(events[0]["budget"]))
    for event in events[1:]:
        _apply(state, event)
    state.events = len(events)
    return state


def find_sweeps(storage_path: str) -> List[Path]:
    """Every sweep folder under a storage path, newest first."""
    root = Path(storage_path) / STATE_DIR
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if (p / LOG_NAME).is_file()), key=lambda p: p.name, reverse=True)


def fingerprint(arrays: Sequence[Any]) -> str:
    """A short content hash of numpy arrays (the tokenised data a sweep trained on)."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()[:16]


def _apply(state: SweepState, event: Dict[str, Any]) -> None:
    kind = event["kind"]
    number = int(event.get("number", -1))
    trial = state.trials.get(number)
    if kind == "trial_started":
        if trial is None:
            state.trials[number] = TrialState(number, event["phase"], event["params"], event.get("optuna_number"))
        else:  # resumed or retried: the same trial goes on
            trial.status, trial.interrupted, trial.attempts = TrialStatus.running.value, False, event["attempt"]
            trial.params = event["params"]
    elif kind == "trial_result" and trial is not None:
        trial.history.append(event["metrics"])
        trial.times.append(event["at"])
        trial.seqs.append(event["seq"])
        trial.seen.append(float(event.get("seen_at") or event["time"]))
        if event.get("checkpoint"):
            trial.checkpoint, trial.checkpoint_epoch = event["checkpoint"], int(event["metrics"].get("epoch", 0))
    elif kind == "trial_ended" and trial is not None:
        trial.status, trial.failure, trial.error = event["status"], event.get("failure", ""), event.get("error", "")
    elif kind == "trial_retrying" and trial is not None:
        trial.failure, trial.error = event.get("failure", ""), event.get("error", "")
    elif kind == "trial_interrupted" and trial is not None:
        trial.interrupted = True
    elif kind == "checkpoint_deleted" and trial is not None:
        trial.checkpoint_deleted = True
    elif kind == "extended":
        state.budget = int(event["budget"])
    elif kind == "session":
        state.status = "RUNNING"
    elif kind == "selection":
        state.selections += 1
    elif kind == "registered":
        state.registered = event["version"]
    elif kind == "finished":
        state.status = event["status"]


def locate(storage_path: str, ref: Optional[str]) -> Path:
    """The folder of the sweep ``ref`` names under a storage path.

    ``ref`` is a sweep id, a parent run id (or a unique prefix of either), or a sweep name (its latest
    unfinished run, else its latest); None is the latest unfinished sweep.

    Raises:
        UserError: nothing matches, or a prefix matches more than one sweep.
    """
    from finesweep.tracking import Cursor

    folders = find_sweeps(storage_path)
    if not folders:
        raise UserError(f"no sweep logs under {Path(storage_path) / STATE_DIR}. Run finesweep resume from the "
                        "folder the sweep ran in, or pass cluster.storage_path=<the path it ran with>.")
    states = [load_state(folder) for folder in folders]
    if ref is None:
        unfinished = [s for s in states if not s.complete]
        if not unfinished:
            raise UserError(f"every sweep under {storage_path} is finished; nothing to resume. Name one to extend "
                            "it: finesweep resume RUN search.num_trials=N.")
        return unfinished[0].folder
    by_id = [s for s in states if s.sweep_id.startswith(ref)
             or Cursor.load(s.folder).runs.get("sweep", "").startswith(ref)]
    by_name = [s for s in states if s.name == ref]
    found = by_id or sorted(by_name, key=lambda s: s.complete)[:1]
    if len(found) > 1:
        raise UserError(f"{ref!r} matches {len(found)} sweeps ({', '.join(s.sweep_id for s in found)}). "
                        "Give more characters of the id.")
    if not found:
        known = ", ".join(f"{s.name} ({s.sweep_id})" for s in states[:8])
        raise UserError(f"no sweep {ref!r} under {storage_path}: give a sweep id, a parent run id or a sweep name "
                        f"(known: {known}).")
    return found[0].folder
