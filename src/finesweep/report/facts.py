"""What a report shows, read once from the sweep's log: trials, when and where they ran, the winner."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from finesweep.config import ExperimentConfig, Mode
from finesweep.records import TrialRecord, TrialStatus
from finesweep.samplers import fidelity_rungs
from finesweep.search_space import Param
from finesweep.state import SweepState, load_state, read_events
from finesweep.sweep import resumed


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
    selection: Dict[str, Any]
    """The latest ``selection`` event: winner's metrics and leaderboard ({} before one)."""
    registered: str
    """``name/version`` of the registered model, or ""."""
    best: Dict[str, Any]
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
        """The epochs where ASHA compares trials (none without ASHA)."""
        return (fidelity_rungs(self.config) or [])[:-1]  # the last is the full budget, not a comparison


def registered_version(folder: Path) -> str:
    """``name/version`` of the sweep's latest registered model ("" before one): MLflow gives the version, and
    the cursor beside the log has it once the registration was sent."""
    from finesweep.tracking import Cursor

    rounds = Cursor.load(folder).registered
    return rounds[max(rounds, key=int)] if rounds else ""


def read_facts(folder: Path, registered: str = "") -> SweepFacts:
    """Read a sweep's log folder.

    Args:
        folder: ``<storage_path>/finesweep/<sweep id>``.
        registered: the registry's ``name/version`` when the caller knows it (MLflow gives the version).
    """
    state = load_state(folder)
    sweep = resumed(folder, [])
    config = sweep.config
    spans: Dict[int, List[Tuple[float, float]]] = {}
    open_at: Dict[int, float] = {}
    nodes: Dict[int, str] = {}
    selection: Dict[str, Any] = {}
    best: Dict[str, Any] = {}
    baseline: Dict[str, float] = {}
    for event in read_events(folder / "events.jsonl"):
        kind, number = event["kind"], event.get("number", -1)
        if kind == "trial_started":
            open_at[number] = event["time"]
        elif kind in ("trial_ended", "trial_interrupted", "trial_retrying") and number in open_at:
            spans.setdefault(number, []).append((open_at.pop(number), event["time"]))
        elif kind == "trial_result" and event.get("node"):
            nodes[number] = event["node"]
        elif kind == "selection":
            selection = event
        elif kind == "best":
            best = event
        elif kind == "baseline":
            baseline = event["metrics"]
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
