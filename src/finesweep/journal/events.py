"""The sweep's events: one frozen dataclass per kind, one way to encode them, one way to decode them.

A sweep is the sequence of these events, appended to its journal (``file.py``) before anything else learns
of them. Resume replays them (``replay.py``), the MLflow projector sends them (``finesweep.tracking``), and
the report reads them (``finesweep.report.facts``): all three consume these classes, so a field added here
is a field every reader sees, and a typo in a field name is an error where it is made.

On disk an event is one JSON object: ``seq`` (its position), ``kind`` (the class's ``KIND``), ``time``
(Unix seconds) and its fields. ``decode`` reads what this and earlier versions wrote: a field an earlier
version did not write takes its default, a field renamed since is read under its old name, and an event
kind this version does not know comes back as ``UnknownEvent`` (it keeps its place in the sequence).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Tuple, Type

import finesweep
from finesweep.config.sweep import Sweep, git_state
from finesweep.journal.records import TrialStatus

LOG_NAME = "events.jsonl"
"""The journal's file name inside a sweep's folder."""


@dataclass(frozen=True, kw_only=True)
class Event:
    """What every event has: its position in the journal and when it was appended (set by the file)."""

    KIND: ClassVar[str] = ""
    DURABLE: ClassVar[bool] = False
    """Appended only once the disk has it (the sweep's own milestones); others are flushed to the OS at once."""

    seq: int = -1
    time: float = 0.0


@dataclass(frozen=True, kw_only=True)
class SweepStarted(Event):
    """The journal's first event: everything needed to continue the sweep, and to log it to MLflow later."""

    KIND: ClassVar[str] = "sweep"
    DURABLE: ClassVar[bool] = True

    sweep_id: str
    name: str
    experiment: str
    artifact_root: str
    tracking_uri: str
    folder: str
    tags: Dict[str, str]
    """The parent run's tags; ``finesweep.sweep_file`` is the sweep file's path, ``finesweep.objective``
    its objective (``max val/accuracy``)."""
    params: Dict[str, str]
    """The parent run's params."""
    config_yaml: str
    """The composed config, resolved: what a resume continues with."""
    sweep_yaml: str
    sweep_file: str
    """The sweep file's name (its artifact under ``sweep/``)."""
    space: Dict[str, Dict[str, Any]]
    budget: int
    """Search trials planned."""
    data_fingerprint: Optional[str] = None
    """Content hash of the prepared data; a resume must see the same."""


@dataclass(frozen=True, kw_only=True)
class SessionStarted(Event):
    """A resume started another session of the driver over the sweep."""

    KIND: ClassVar[str] = "session"
    DURABLE: ClassVar[bool] = True

    session: int


@dataclass(frozen=True, kw_only=True)
class SweepExtended(Event):
    """A resume raised the number of search trials."""

    KIND: ClassVar[str] = "extended"
    DURABLE: ClassVar[bool] = True

    budget: int


@dataclass(frozen=True, kw_only=True)
class TrialStarted(Event):
    """A trial started, or went on (resumed, retried: the same number again)."""

    KIND: ClassVar[str] = "trial_started"

    sweep_id: str
    number: int
    phase: str
    """search, final (re-training with fresh seeds) or baseline."""
    params: Dict[str, Any]
    optuna_number: Optional[int] = None
    attempt: int = 1
    changed: Dict[str, Any] = field(default_factory=dict)
    """Values that differ from the trial's previous attempt (an out-of-memory retry's smaller batch)."""
    effective_batch: int = 0
    """Examples per optimiser step: per-device batch x workers x accumulation (0: a journal from before it)."""
    sampler_attrs: Dict[str, Any] = field(default_factory=dict)
    """What the sampler recorded on the trial's Optuna trial when proposing it (NSGA-II's generation)."""


@dataclass(frozen=True, kw_only=True)
class TrialResult(Event):
    """One epoch of a trial: its metrics and the checkpoint it can continue from."""

    KIND: ClassVar[str] = "trial_result"

    number: int
    metrics: Dict[str, float]
    """Every metric of the epoch, and ``epoch`` (1-based)."""
    at: int
    """When it was recorded (Unix ms): MLflow receives the same (key, step, time) on every replay."""
    checkpoint: Optional[str] = None
    seen_at: float = 0.0
    """When the scheduler decided on it (Unix s; 0 = ``time``): replaying in this order rebuilds ASHA's rungs."""
    node: str = ""
    """Where the trial runs (host and IP; its workers' nodes), its device, precision and worker count: set on its
    first result of an attempt (0 workers: not set)."""
    device: str = ""
    precision: str = ""
    workers: int = 0
    worker_pids: str = ""


@dataclass(frozen=True, kw_only=True)
class TrialRetrying(Event):
    """A trial failed and runs again from its last checkpoint."""

    KIND: ClassVar[str] = "trial_retrying"
    DURABLE: ClassVar[bool] = True

    number: int
    attempt: int
    """The attempt about to start (2 for the first retry)."""
    failure: str
    error: str = ""


@dataclass(frozen=True, kw_only=True)
class TrialEnded(Event):
    """A trial ended for good: completed, stopped early or failed."""

    KIND: ClassVar[str] = "trial_ended"

    number: int
    status: TrialStatus
    failure: str = ""
    error: str = ""
    checkpoint: Optional[str] = None
    epochs_run: int = 0
    best_epoch: Optional[int] = None
    attempts: int = 1


@dataclass(frozen=True, kw_only=True)
class TrialInterrupted(Event):
    """The sweep stopped (Ctrl-C) while the trial ran; a resume continues it."""

    KIND: ClassVar[str] = "trial_interrupted"
    DURABLE: ClassVar[bool] = True

    number: int


@dataclass(frozen=True, kw_only=True)
class CheckpointDeleted(Event):
    """A finished trial's checkpoint folder was deleted: it can no longer win."""

    KIND: ClassVar[str] = "checkpoint_deleted"

    number: int


@dataclass(frozen=True, kw_only=True)
class Note(Event):
    """Something worth a tag on the parent run (a failed report, a selection fallback ...)."""

    KIND: ClassVar[str] = "note"

    tag: str
    text: str


@dataclass(frozen=True, kw_only=True)
class SelectionMade(Event):
    """Model selection chose the winner of a selection round: its metrics and the leaderboard."""

    KIND: ClassVar[str] = "selection"
    DURABLE: ClassVar[bool] = True

    round: int
    metrics: Dict[str, float]
    tags: Dict[str, Any]
    leaderboard_csv: str
    leaderboard_md: str
    recipe: Dict[str, Any] = field(default_factory=dict)
    """The recipe's values of the searched keys (the configuration the verdict compares the winner with)."""
    breakdown_name: str = ""
    """What the registered model's per-class (per-entity-type) test table is called; empty = none."""
    breakdown_csv: str = ""
    breakdown_md: str = ""
    generations: List[Dict[str, str]] = field(default_factory=list)
    """Generative tasks: the registered model's generated text for ``final.generate_samples`` validation prompts
    (prompt, reference, generation); empty = none."""
    generated_by: Optional[int] = None
    """The trial whose weights generated them (its child run gets the table too)."""
    front: List[Dict[str, Any]] = field(default_factory=list)
    """A multi-objective sweep's feasible Pareto front: one row per search trial on it (``trial``, ``params``,
    ``values`` of every objective, ``checkpoint``, and what registering it needs: ``preprocessor``, ``meta``,
    ``task``); empty with one objective."""
    selected_trial: Optional[int] = None
    """The front point a user chose with ``finesweep select`` (this round registers it); None = model selection's."""


@dataclass(frozen=True, kw_only=True)
class BestChosen(Event):
    """The sweep's best trial as a session ends (the selected winner, else the search's best)."""

    KIND: ClassVar[str] = "best"

    round: int
    number: int
    params: Dict[str, Any]
    value: float
    epoch: Optional[int]
    metric: str
    checkpoint: Optional[str] = None


@dataclass(frozen=True, kw_only=True)
class RegisterRequested(Event):
    """The winner of a round is to be logged as an MLflow model and registered (MLflow gives the version)."""

    KIND: ClassVar[str] = "register"
    DURABLE: ClassVar[bool] = True

    round: int
    name: str
    checkpoint: Optional[str]
    preprocessor: str
    """Where the model's preprocessing files (its tokenizer) are read from: the model it was fine-tuned from."""
    meta: Dict[str, Any]
    """The task's serving metadata, written beside the weights."""
    task: str = "classification"
    """The task's registered name (journals written before tasks had names served text classification)."""


@dataclass(frozen=True, kw_only=True)
class BaselineScored(Event):
    """The config without searched values was trained once (``final.baseline``): its scores and the gain."""

    KIND: ClassVar[str] = "baseline"
    DURABLE: ClassVar[bool] = True

    metrics: Dict[str, float]


REPORT_HTML = "report.html"
"""The report's page in its folder."""


@dataclass(frozen=True, kw_only=True)
class ReportWritten(Event):
    """The sweep's report was built into ``folder``."""

    KIND: ClassVar[str] = "report"

    folder: str

    @property
    def html(self) -> Path:
        """The report's page."""
        return Path(self.folder) / REPORT_HTML


@dataclass(frozen=True, kw_only=True)
class SweepEnded(Event):
    """A session ended: FINISHED, FAILED (no trial finished) or KILLED (interrupted)."""

    KIND: ClassVar[str] = "finished"
    DURABLE: ClassVar[bool] = True

    status: str


@dataclass(frozen=True, kw_only=True)
class UnknownEvent(Event):
    """An event of a kind this version does not know (written by a newer one): kept, never interpreted."""

    kind: str
    data: Dict[str, Any] = field(default_factory=dict)


KINDS: Dict[str, Type[Event]] = {cls.KIND: cls for cls in (
    SweepStarted, SessionStarted, SweepExtended, TrialStarted, TrialResult, TrialRetrying, TrialEnded,
    TrialInterrupted, CheckpointDeleted, Note, SelectionMade, BestChosen, RegisterRequested, BaselineScored,
    ReportWritten, SweepEnded)}
"""Every event class by the kind it is written as."""

RENAMED: Dict[str, Dict[str, str]] = {"register": {"tokenizer": "preprocessor"}}
"""Fields read under the name earlier versions wrote them with: kind -> {old name: field}."""


def encode(event: Event) -> Dict[str, Any]:
    """The event as the JSON object the journal holds."""
    if isinstance(event, UnknownEvent):
        return {**event.data, "seq": event.seq, "kind": event.kind, "time": event.time}
    values = {f.name: getattr(event, f.name) for f in dataclasses.fields(event)}
    return {"seq": values.pop("seq"), "kind": event.KIND, "time": values.pop("time"), **values}


def to_json(event: Event) -> str:
    """One line of the journal (without its checksum): sorted keys, Enums by value, paths as text."""
    return json.dumps(encode(event), sort_keys=True, default=_plain)


def decode(record: Mapping[str, Any]) -> Event:
    """An event from its JSON object, as this or an earlier version wrote it.

    Raises:
        ValueError: a field the event needs is missing (the journal is not one finesweep wrote).
    """
    kind = str(record.get("kind", ""))
    cls = KINDS.get(kind)
    if cls is None:
        data = {k: v for k, v in record.items() if k not in ("seq", "kind", "time")}
        return UnknownEvent(seq=int(record.get("seq", -1)), time=float(record.get("time", 0.0)), kind=kind, data=data)
    renamed = RENAMED.get(kind, {})
    names, enums = _fields(cls)
    values = {renamed.get(k, k): v for k, v in record.items() if renamed.get(k, k) in names}
    for name, enum_type in enums.items():
        if name in values:
            values[name] = enum_type(values[name])
    try:
        return cls(**values)
    except TypeError as exc:
        raise ValueError(f"journal event {record.get('seq')} ({kind}) lacks a field: {exc}") from None


_FIELDS: Dict[Type[Event], Tuple[frozenset[str], Dict[str, Type[enum.Enum]]]] = {}


def _fields(cls: Type[Event]) -> Tuple[frozenset[str], Dict[str, Type[enum.Enum]]]:
    """An event class's field names, and those that hold an Enum (read back from their values); cached."""
    if cls not in _FIELDS:
        hints = typing.get_type_hints(cls)
        names = frozenset(f.name for f in dataclasses.fields(cls))
        enums = {name: hint for name, hint in hints.items()
                 if name in names and isinstance(hint, type) and issubclass(hint, enum.Enum)}
        _FIELDS[cls] = (names, enums)
    return _FIELDS[cls]


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def sweep_started(sweep: Sweep, data_fingerprint: str, sweep_id: str, folder: Path) -> SweepStarted:
    """The journal's first event for a new sweep: everything needed to continue it, and to log it to MLflow."""


    config = sweep.config
    commit, dirty = git_state(Path.cwd())
    objective = f"{config.objective.mode.value} {config.objective.metric}"
    tags = {"finesweep.version": finesweep.__version__, "mlflow.source.git.commit": commit,
            "finesweep.git_dirty": dirty, "finesweep.sweep_file": str(sweep.sweep_file),
            "finesweep.objective": objective}
    if config.objective.multi:
        tags["finesweep.objectives"] = ", ".join(f"{mode.value} {metric}" for metric, mode in config.objective.terms)
    if config.objective.constraints:
        tags["finesweep.constraints"] = json.dumps({m: {"min": b.min, "max": b.max}
                                                    for m, b in config.objective.constraints.items()})
    params = {"sampler": config.search.sampler.value, "scheduler": config.scheduler.kind.value,
              "objective": objective, "search_space": json.dumps(sweep.space_description(), sort_keys=True),
              "num_trials": str(config.search.num_trials), "max_concurrent": str(config.search.max_concurrent),
              "seed": str(config.search.seed), "max_epochs": str(config.scheduler.max_epochs),
              "unit": config.scheduler.unit.value, "budget": str(config.scheduler.budget),
              **({"max_steps": str(config.scheduler.max_steps),
                  "report_every": str(config.scheduler.report_every)} if config.scheduler.max_steps else {}),
              "grace_period": str(config.scheduler.grace_period),
              "reduction_factor": str(config.scheduler.reduction_factor),
              "model.name_or_path": config.model.name_or_path, "data.path": config.data.path}
    return SweepStarted(sweep_id=sweep_id, name=config.name, experiment=config.experiment_name,
                        artifact_root=config.tracking.artifact_root, tracking_uri=config.tracking.uri,
                        folder=str(folder), tags=tags, params=params, config_yaml=sweep.yaml_text,
                        sweep_yaml=sweep.sweep_file.read_text() if sweep.sweep_file.is_file() else "",
                        sweep_file=sweep.sweep_file.name, space=sweep.space_description(),
                        budget=sweep.planned_trials, data_fingerprint=data_fingerprint)
