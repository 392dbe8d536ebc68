"""What a report shows, read once from the sweep's journal: trials, when and where they ran, the winner."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from finesweep.config import ExperimentConfig, Mode
from finesweep.config.compose import stored
from finesweep.config.space import Param
from finesweep.journal.events import (
    LOG_NAME,
    BaselineScored,
    BestChosen,
    SelectionMade,
    TrialEnded,
    TrialInterrupted,
    TrialResult,
    TrialRetrying,
    TrialStarted,
)
from finesweep.journal.file import read_events
from finesweep.journal.records import TrialRecord, TrialStatus
from finesweep.journal.replay import SweepState, load_state
from finesweep.search.samplers import fidelity_rungs
from finesweep.tracking.cursor import Cursor


@dataclass
class TrialFacts:
    """One trial: its record (values, history, status) and the spans of time it held a worker."""

    record: TrialRecord
    spans: List[Tuple[float, float]] = field(default_factory=list)
    """(start, end) Unix times of each attempt (a resumed or retried trial has several)."""
    node: str = ""

    @property
    def number(self) -> int:
        """The trial's number in the sweep."""
        return self.record.number

    @property
    def ended_at(self) -> float:
        """When the trial ended for good (its last span's end)."""
        return self.spans[-1][1] if self.spans else math.inf


@dataclass
class SweepFacts:
    """Everything the report draws, from the log alone (no MLflow, no Ray)."""

    state: SweepState
    config: ExperimentConfig
    params: Sequence[Param]
    trials: List[TrialFacts]
    selection: Optional[SelectionMade]
    """The latest selection: the winner's metrics and the leaderboard (None before one)."""
    registered: str
    """``name/version`` of the registered model, or ""."""
    best: Optional[BestChosen]
    """The sweep's best trial as its latest session ended."""
    baseline: Dict[str, float] = field(default_factory=dict)
    """The ``baseline`` event's metrics (final.baseline): the default recipe's scores and the winner's gain."""

    @property
    def metric(self) -> str:
        """The objective's metric."""
        return self.config.objective.metric

    @property
    def mode(self) -> Mode:
        """min or max."""
        return self.config.objective.mode

    def search(self) -> List[TrialFacts]:
        """Search trials, by number."""
        return [t for t in self.trials if t.record.phase == "search"]

    def rungs(self) -> List[int]:
        """The epochs (or steps) where ASHA compares trials (none without ASHA)."""
        return (fidelity_rungs(self.config) or [])[:-1]  # the last is the full budget, not a comparison


def registered_version(folder: Path) -> str:
    """``name/version`` of the sweep's latest registered model ("" before one): MLflow gives the version, and
    the cursor beside the journal has it once the registration was sent."""
    return Cursor.load(folder).latest_registered()


def read_facts(folder: Path, registered: str = "") -> SweepFacts:
    """Read a sweep's journal folder.

    Args:
        folder: ``<storage_path>/finesweep/<sweep id>``.
        registered: the registry's ``name/version`` when the caller knows it (MLflow gives the version).
    """
    state = load_state(folder)
    sweep = stored(state.header.config_yaml, Path(state.header.tags["finesweep.sweep_file"]), [])
    config = sweep.config
    spans: Dict[int, List[Tuple[float, float]]] = {}
    open_at: Dict[int, float] = {}
    nodes: Dict[int, str] = {}
    selection: Optional[SelectionMade] = None
    best: Optional[BestChosen] = None
    baseline: Dict[str, float] = {}
    for event in read_events(folder / LOG_NAME):
        if isinstance(event, TrialStarted):
            open_at[event.number] = event.time
        elif isinstance(event, (TrialEnded, TrialInterrupted, TrialRetrying)) and event.number in open_at:
            spans.setdefault(event.number, []).append((open_at.pop(event.number), event.time))
        elif isinstance(event, TrialResult) and event.node:
            nodes[event.number] = event.node
        elif isinstance(event, SelectionMade) and event.selected_trial is None:  # not a user's pick (finesweep select)
            selection = event
        elif isinstance(event, BestChosen):
            best = event
        elif isinstance(event, BaselineScored):
            baseline = dict(event.metrics)
    registered = registered or registered_version(folder)
    trials = [TrialFacts(t.record(config.objective.metric, config.objective.mode), spans.get(n, []), nodes.get(n, ""))
              for n, t in sorted(state.trials.items())]
    return SweepFacts(state, config, sweep.params, trials, selection, registered, best, baseline)


def finished(trials: List[TrialFacts]) -> List[TrialFacts]:
    """Trials that ended with a value (completed or stopped early), in the order they ended."""
    done = [t for t in trials if t.record.status in (TrialStatus.completed, TrialStatus.early_stopped)
            and t.record.best_value is not None]
    return sorted(done, key=lambda t: (t.ended_at, t.number))


def slots(trials: List[TrialFacts]) -> List[Tuple[int, TrialFacts, float, float]]:
    """Each span on a worker slot: (slot, trial, start, end), the fewest slots that hold them all."""
    spans = sorted(((s, e, t) for t in trials for s, e in t.spans), key=lambda x: (x[0], x[1]))
    free_at: List[float] = []
    placed = []
    for start, end, trial in spans:
        slot = next((i for i, f in enumerate(free_at) if f <= start), len(free_at))
        if slot == len(free_at):
            free_at.append(end)
        free_at[slot] = end
        placed.append((slot, trial, start, end))
    return placed


def utilisation(placed: List[Tuple[int, TrialFacts, float, float]], capacity: int) -> Optional[float]:
    """Busy worker-time over the capacity's time from the first start to the last end."""
    if not placed:
        return None
    span = max(e for _, _, _, e in placed) - min(s for _, _, s, _ in placed)
    busy = sum(e - s for _, _, s, e in placed)
    return busy / (capacity * span) if span > 0 else None
