"""Replaying a sweep's journal: what ``finesweep resume``, ``ls``, ``report`` and the Python API read.

A sweep is a sequence of events (``events.py``) appended to ``<storage_path>/finesweep/<sweep id>/events.jsonl``
(``file.py``). ``SweepState`` is what replaying them gives: the trials, their values, results, checkpoints
and how each ended, the budget, the selection rounds, the sweep's status.

Ray Tune has an experiment restore of its own, but it restores neither ASHA's rungs (ray#30838) nor the
link between a trial and its MLflow run, and its searcher state is a pickle; this journal is plain data
that any machine seeing the storage path can read.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Type

from finesweep.config import Mode, progress_of
from finesweep.errors import UserError
from finesweep.journal.events import (
    LOG_NAME,
    CheckpointDeleted,
    Event,
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
from finesweep.journal.file import read_events
from finesweep.journal.records import TrialRecord, TrialStatus

STATE_DIR = "finesweep"
"""The folder under ``cluster.storage_path`` that holds one folder per sweep."""


def new_sweep_id() -> str:
    """A fresh sweep identity: time-ordered and unique."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"


def sweep_dir(storage_path: str, sweep_id: str) -> Path:
    """Where a sweep's journal lives."""
    return Path(storage_path) / STATE_DIR / sweep_id


@dataclass
class TrialHistory:
    """One trial as the journal tells it."""

    number: int
    phase: str
    params: Dict[str, Any]
    optuna_number: Optional[int] = None
    status: TrialStatus = TrialStatus.running
    history: List[Dict[str, float]] = field(default_factory=list)
    seqs: List[int] = field(default_factory=list)
    """The journal position of each result."""
    seen: List[float] = field(default_factory=list)
    """When the scheduler decided on each result: replaying results in this order rebuilds ASHA's rungs."""
    checkpoint: Optional[str] = None
    checkpoint_epoch: int = 0
    failure: str = ""
    error: str = ""
    attempts: int = 1
    interrupted: bool = False
    checkpoint_deleted: bool = False
    sampler_attrs: Dict[str, Any] = field(default_factory=dict)
    """What the sampler recorded on its Optuna trial when proposing it (``TrialStarted.sampler_attrs``)."""

    @property
    def finished(self) -> bool:
        """Ended for good (completed, stopped early or failed); a running or interrupted trial is not."""
        return self.status is not TrialStatus.running

    @property
    def epochs(self) -> int:
        """The progress of its last result in the sweep's unit: its epoch, or its step (0 before one)."""
        return progress_of(self.history[-1]) if self.history else 0

    def resumable_checkpoint(self) -> Optional[str]:
        """The checkpoint of its last epoch, which a resumed trial continues from; None = start again."""
        return self.checkpoint if self.checkpoint_epoch == self.epochs else None

    def record(self, metric: str, mode: Mode) -> TrialRecord:
        """The trial as a ``TrialRecord`` (what the runner, the view and model selection work with)."""
        rec = TrialRecord(f"log-{self.number}", self.number, dict(self.params), phase=self.phase)
        for metrics in self.history:
            rec.add_result(metrics, metric, mode)
        rec.status = self.status
        rec.checkpoint, rec.error, rec.failure = self.checkpoint, self.error or None, self.failure
        rec.optuna_number, rec.attempts = self.optuna_number, self.attempts
        rec.sampler_attrs = dict(self.sampler_attrs)
        return rec


@dataclass
class SweepState:
    """Everything the journal says about a sweep."""

    folder: Path
    header: SweepStarted
    trials: Dict[int, TrialHistory] = field(default_factory=dict)
    budget: int = 0
    """Search trials planned in all (raised by extending the sweep)."""
    selections: int = 0
    status: str = "RUNNING"
    """RUNNING while a session is on (or was killed), KILLED after Ctrl-C, FINISHED or FAILED at the end."""
    sessions: int = 1

    @property
    def sweep_id(self) -> str:
        """The sweep's identity."""
        return self.header.sweep_id

    @property
    def name(self) -> str:
        """The sweep's name."""
        return self.header.name

    def search_trials(self) -> List[TrialHistory]:
        """Trials of the search phase, by number."""
        return [t for n, t in sorted(self.trials.items()) if t.phase == "search"]

    def unfinished(self) -> List[TrialHistory]:
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

    def apply(self, event: Event) -> None:
        """Take one more event of the journal into account."""
        replay = _REPLAY.get(type(event))
        if replay is not None:
            replay(self, event)


def load_state(folder: Path) -> SweepState:
    """Replay a sweep's journal.

    Raises:
        UserError: no journal in ``folder``.
    """
    events = read_events(folder / LOG_NAME)
    header = next(events, None)
    if not isinstance(header, SweepStarted):
        raise UserError(f"no finesweep log in {folder} (expected {LOG_NAME} starting with the sweep). "
                        "Check cluster.storage_path: it must be the one the sweep ran with.")
    state = SweepState(folder=folder, header=header, budget=header.budget)
    for event in events:
        state.apply(event)
    return state


def find_sweeps(storage_path: str) -> List[Path]:
    """Every sweep folder under a storage path, newest first."""
    root = Path(storage_path) / STATE_DIR
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if (p / LOG_NAME).is_file()), key=lambda p: p.name, reverse=True)


def locate(storage_path: str, ref: Optional[str], parent_run: Callable[[Path], str] = lambda folder: "") -> Path:
    """The folder of the sweep ``ref`` names under a storage path.

    ``ref`` is a sweep id, a parent run id (or a unique prefix of either), or a sweep name (its latest
    unfinished run, else its latest); None is the latest unfinished sweep.

    Args:
        parent_run: a sweep folder -> the id of its parent run in the tracking store ("" if none yet).

    Raises:
        UserError: nothing matches, or a prefix matches more than one sweep.
    """
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
    by_id = [s for s in states if s.sweep_id.startswith(ref) or (parent_run(s.folder) or "\0").startswith(ref)]
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


# --- one replay per event kind that changes the state --------------------------------------------------

def _trial_started(state: SweepState, event: TrialStarted) -> None:
    trial = state.trials.get(event.number)
    if trial is None:
        state.trials[event.number] = TrialHistory(event.number, event.phase, dict(event.params), event.optuna_number,
                                                  sampler_attrs=dict(event.sampler_attrs))
        return
    # resumed or retried: the same trial goes on
    trial.status, trial.interrupted, trial.attempts, trial.params = (TrialStatus.running, False, event.attempt,
                                                                     dict(event.params))


def _trial_result(state: SweepState, event: TrialResult) -> None:
    trial = state.trials.get(event.number)
    if trial is None:
        return
    trial.history.append(dict(event.metrics))
    trial.seqs.append(event.seq)
    trial.seen.append(event.seen_at or event.time)
    if event.checkpoint:
        trial.checkpoint, trial.checkpoint_epoch = event.checkpoint, progress_of(event.metrics)


def _trial_ended(state: SweepState, event: TrialEnded) -> None:
    trial = state.trials.get(event.number)
    if trial is not None:
        trial.status, trial.failure, trial.error = event.status, event.failure, event.error


def _trial_retrying(state: SweepState, event: TrialRetrying) -> None:
    trial = state.trials.get(event.number)
    if trial is not None:
        trial.failure, trial.error = event.failure, event.error


def _trial_interrupted(state: SweepState, event: TrialInterrupted) -> None:
    trial = state.trials.get(event.number)
    if trial is not None:
        trial.interrupted = True


def _checkpoint_deleted(state: SweepState, event: CheckpointDeleted) -> None:
    trial = state.trials.get(event.number)
    if trial is not None:
        trial.checkpoint_deleted = True


def _extended(state: SweepState, event: SweepExtended) -> None:
    state.budget = event.budget


def _session(state: SweepState, event: SessionStarted) -> None:
    state.status, state.sessions = "RUNNING", event.session


def _selection(state: SweepState, event: SelectionMade) -> None:
    state.selections += 1


def _ended(state: SweepState, event: SweepEnded) -> None:
    state.status = event.status


_REPLAY: Dict[Type[Event], Callable[[SweepState, Any], None]] = {
    TrialStarted: _trial_started, TrialResult: _trial_result, TrialEnded: _trial_ended,
    TrialRetrying: _trial_retrying, TrialInterrupted: _trial_interrupted, CheckpointDeleted: _checkpoint_deleted,
    SweepExtended: _extended, SessionStarted: _session, SelectionMade: _selection, SweepEnded: _ended,
}
"""What each kind of event changes; the others (notes, the report, registration requests) change nothing here."""
