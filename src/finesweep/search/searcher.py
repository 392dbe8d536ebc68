"""The search as Ray Tune sees it: an Optuna study asked and told through Tune's ``Searcher`` interface.

Deciding stays Optuna's (its samplers, its study); this module only connects it to Tune, in a way
that makes a sweep reproducible and resumable:

- Every proposal is made by a sampler seeded with ``proposal_seed(search.seed, trial number)``, so what
  the study proposes is a pure function of the seed and the study's history. A study rebuilt from the
  sweep's log (``rebuild_study``) therefore proposes exactly what the lost one would have.
- Trials to run again (resumed from a checkpoint, or retried after a failure) are queued and handed
  to Tune before any new proposal; they keep their trial number and their Optuna trial.
- The value told to Optuna is the trial's best epoch, the same number that ranks trials; a trial ASHA
  stopped early is told PRUNED (``STOPPED_STATE``), its epochs as intermediate values.

``PointsSearcher`` hands Tune a fixed list of configurations (model selection's re-training runs).
"""

from __future__ import annotations

import collections
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher

from finesweep.adapters import optuna_private
from finesweep.config import Mode, ObjectiveConfig
from finesweep.config.space import Param, suggest

MARKER = "__finesweep__"
"""Key of the trial config that carries finesweep's own bookkeeping (never a config value)."""

SamplerFactory = Callable[[int], optuna.samplers.BaseSampler]
"""seed -> a fresh sampler."""

STOPPED_STATE = TrialState.PRUNED
"""How a trial ASHA stopped early is told to Optuna: PRUNED, with its per-epoch values as intermediate values.

Ray's ``OptunaSearch`` tells it COMPLETE with its last low-fidelity value, so TPE would rank a one-epoch
score beside full-budget ones. Under ASHA finesweep's TPE reads the intermediate values one rung at a time
(``fidelity.RungTPESampler``); benchmarks/search_efficiency.py measures both against COMPLETE.
"""


CONSTRAINTS_ATTR = "constraints"
"""The user attribute holding a trial's constraint values for Optuna's ``constraints_func`` (<= 0: met)."""

STEPS_ATTR = "values_by_step"
"""The user attribute holding a multi-objective trial's objective values at each report (``{"step": [values]}``):
what Optuna's intermediate values hold for one objective, read by the rung-wise MOTPE (``fidelity.py``)."""

MISSING_VIOLATION = 1.0e12
"""A constrained metric a trial never reported breaks its constraint by this much (Optuna refuses NaN)."""


def constraint_values(metrics: Mapping[str, float], objective: ObjectiveConfig) -> List[float]:
    """Optuna's constraint values of a trial with ``metrics``: ``value - max`` and ``min - value`` for each bound
    of ``objective.constraints`` (<= 0 where the bound is met)."""
    found: List[float] = []
    for metric, (low, high) in objective.bounds.items():
        value = metrics.get(metric)
        missing = value is None or math.isnan(value)
        for bound, sign in ((high, 1.0), (low, -1.0)):
            if bound is not None:
                found.append(MISSING_VIOLATION if missing else sign * (float(value or 0.0) - bound))
    return found


def constraints_of(trial: optuna.trial.FrozenTrial) -> Sequence[float]:
    """Optuna's ``constraints_func``: the values the searcher stored on the trial before telling it."""
    return list(trial.user_attrs.get(CONSTRAINTS_ATTR, ()))


def told_state(state: TrialState, multi: bool) -> TrialState:
    """How a trial that ended in ``state`` is told to Optuna: with several objectives a trial ASHA stopped is told
    COMPLETE with its values (Optuna's multi-objective samplers learn from COMPLETE trials only, and under MO-ASHA
    most trials are stopped ones); with one, as ``STOPPED_STATE`` says."""
    return TrialState.COMPLETE if multi and state is TrialState.PRUNED else state


@dataclass
class Rerun:
    """A trial to run again: same number, same values, continuing from ``checkpoint`` (None = from scratch)."""

    number: int
    params: Dict[str, Any]
    optuna_number: Optional[int] = None
    checkpoint: Optional[str] = None
    attempt: int = 1

    def config(self) -> Dict[str, Any]:
        """The Tune trial config: the values plus the marker."""
        marker = {"number": self.number, "optuna": self.optuna_number, "checkpoint": self.checkpoint,
                  "attempt": self.attempt}
        return {**self.params, MARKER: marker}


@dataclass
class Numbering:
    """Hands out trial numbers, shared by the searchers of one sweep (search and re-training)."""

    next: int = 0

    def take(self) -> int:
        number, self.next = self.next, self.next + 1
        return number


def proposal_seed(seed: int, number: int) -> int:
    """The seed of the sampler that proposes trial ``number`` of a sweep seeded ``seed``.

    Mixed, not added: with ``seed + number``, the sweep seeded 1 would propose trial n as the sweep
    seeded 0 proposes trial n + 1, and two "independent" seeds would run the same trials shifted by one.
    """
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


def params_of(config: Mapping[str, Any]) -> Dict[str, Any]:
    """A trial config without the marker: the sampled values."""
    return {key: value for key, value in config.items() if key != MARKER}


def marker_of(config: Mapping[str, Any]) -> Dict[str, Any]:
    """finesweep's bookkeeping of a trial config (number, Optuna trial, checkpoint, attempt)."""
    return dict(config.get(MARKER) or {})


@dataclass
class _Queue:
    """Reruns waiting for a slot, shared with whoever decides them (the event bridge, for retries)."""

    items: Deque[Rerun] = field(default_factory=collections.deque)

    def push(self, rerun: Rerun) -> None:
        self.items.append(rerun)


class StudySearcher(Searcher):
    """Proposes trials from an Optuna study; queued reruns first.

    Args:
        study: the study (new, or rebuilt from the sweep's log).
        params: the search space.
        sampler: seed -> a fresh sampler of the sweep's kind.
        seed: ``search.seed``; trial n is proposed with ``proposal_seed(seed, n)``.
        budget: how many trials the search runs in all (those in the study count).
        mode: whether larger values are better.
        numbering: trial numbers shared with re-training.
        reruns: trials to run again before any new proposal.
        points: known configurations the study's first trials run (``config.recipe.start_points``): trial i of
            the study takes point i (Optuna's ``enqueue_trial``), so a rebuilt study that has asked i trials goes
            on with point i and never runs one twice. A point may leave keys to the sampler.
        objective: the sweep's objectives and constraints; None = ``mode`` on one metric, no constraints. With
            several objectives a trial is told its values at its best epoch (by the primary objective), and no
            intermediate values (Optuna reports one objective only).
    """

    def __init__(self, study: optuna.Study, params: Sequence[Param], sampler: SamplerFactory, seed: int,
                 budget: int, mode: Mode, numbering: Numbering, reruns: Sequence[Rerun] = (),
                 points: Sequence[Dict[str, Any]] = (), objective: Optional[ObjectiveConfig] = None) -> None:
        super().__init__()
        by_key = {p.key: p for p in params}
        self.points = [{k: by_key[k].to_optuna_value(v) for k, v in point.items()} for point in points]
        self.study = study
        self.params = tuple(params)
        self.sampler = sampler
        self.seed = seed
        self.budget = budget
        self.direction = mode  # Tune's Searcher has a `mode` of its own: the string it was given, if any
        self.numbering = numbering
        self.queue = _Queue(collections.deque(reruns))
        self._trials: Dict[int, optuna.trial.Trial] = {}  # finesweep number -> Optuna trial
        self._open = {r.number for r in reruns}  # numbers started but not yet told to Optuna
        self._best: Dict[int, float] = {}
        self.objective = objective
        self._points: Dict[int, List[float]] = {}  # number -> every objective's value at its best epoch
        self._constraints: Dict[int, List[float]] = {}  # number -> Optuna's constraint values at its best epoch
        self._steps: Dict[int, Dict[str, List[float]]] = {}  # number -> every objective's values at each report

    def suggest(self, trial_id: str) -> Optional[Any]:
        if self.queue.items:
            rerun = self.queue.items.popleft()
            self._open.add(rerun.number)
            return rerun.config()
        if self.asked() >= self.budget:
            # Nothing new to propose; a trial still running may yet fail and be queued for a retry.
            return None if self._open else Searcher.FINISHED
        number = self.numbering.take()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            index = self.asked()
            self.study.sampler = self.sampler(proposal_seed(self.seed, index))
            if index < len(self.points):  # waits in the study only until the ask below takes it
                self.study.enqueue_trial(self.points[index], skip_if_exists=False)
            trial = self.study.ask()
        values = suggest(trial, self.params)
        self._trials[number] = trial
        self._open.add(number)
        return {**values, MARKER: {"number": number, "optuna": trial.number, "checkpoint": None, "attempt": 1,
                                   "sampler_attrs": optuna_private.sampler_attrs(self.study, trial)}}

    def on_trial_complete(self, trial_id: str, result: Optional[Dict[str, Any]] = None, error: bool = False) -> None:
        """Tune's notice; the event bridge tells the study instead, once it knows how the trial ended."""

    def asked(self) -> int:
        """Trials in the study (asked, finished or not); ``study.trials`` would deep-copy every one of them."""
        return len(self.study.get_trials(deepcopy=False))

    def observe(self, number: int, optuna_number: Optional[int], step: int, value: float,
                metrics: Optional[Mapping[str, float]] = None) -> None:
        """Record an epoch's objective as the Optuna trial's intermediate value (one objective), and the values
        of every objective and constraint at the trial's best epoch so far (``metrics``: the whole report)."""
        trial = self._trial(number, optuna_number)
        if trial is None or value is None or math.isnan(value):
            return
        multi = self.objective is not None and self.objective.multi
        if not multi:
            trial.report(value, step)
        elif self.objective is not None:
            seen_now = dict(metrics or {})
            self._steps.setdefault(number, {})[str(step)] = [float(seen_now.get(m, math.nan))
                                                             for m in self.objective.metrics]
        if self.direction.better(value, self._best.get(number)):
            self._best[number] = value
            if self.objective is not None:
                seen = dict(metrics or {})
                self._points[number] = [float(seen.get(m, math.nan)) for m in self.objective.metrics]
                self._constraints[number] = constraint_values(seen, self.objective)

    def tell(self, number: int, optuna_number: Optional[int], state: TrialState) -> None:
        """Close the Optuna trial: COMPLETE with its best value, PRUNED (Optuna keeps its last value) or FAIL."""
        self._open.discard(number)
        trial = self._trial(number, optuna_number)
        if trial is None:
            return
        multi = self.objective is not None and self.objective.multi
        state = told_state(state, multi)
        value: Union[None, float, List[float]] = self._points.get(number) if multi else self._best.get(number)
        if state is TrialState.COMPLETE and value is None:
            state = TrialState.FAIL  # a trial that never reported its objective taught nothing
        if number in self._constraints and self.objective is not None and self.objective.constraints:
            trial.set_user_attr(CONSTRAINTS_ATTR, self._constraints[number])
        if multi and number in self._steps:
            trial.set_user_attr(STEPS_ATTR, self._steps[number])
        try:
            self.study.tell(trial, value if state is TrialState.COMPLETE else None, state=state)
        except RuntimeError:
            pass  # BruteForceSampler calls study.stop() once the grid is exhausted, outside optimize()

    def release(self, number: int) -> None:
        """A queued or running rerun will not come back (e.g. the sweep is ending)."""
        self._open.discard(number)

    def _trial(self, number: int, optuna_number: Optional[int]) -> Optional[optuna.trial.Trial]:
        if number not in self._trials and optuna_number is not None and optuna_number < self.asked():
            frozen = self.study.get_trials(deepcopy=False)[optuna_number]  # a trial of the rebuilt study, continued
            self._trials[number] = optuna_private.continued_trial(self.study, frozen)
        return self._trials.get(number)


class PointsSearcher(Searcher):
    """Hands Tune a fixed list of configurations, each once; reruns of them first.

    Args:
        points: (number, values) of every configuration to run.
        reruns: configurations to continue from a checkpoint (resume) before the rest.
    """

    def __init__(self, points: Sequence[Rerun], reruns: Sequence[Rerun] = ()) -> None:
        super().__init__()
        self.queue = _Queue(collections.deque([*reruns, *points]))
        self._open: set[int] = set()

    def suggest(self, trial_id: str) -> Optional[Any]:
        if self.queue.items:
            rerun = self.queue.items.popleft()
            self._open.add(rerun.number)
            return rerun.config()
        return None if self._open else Searcher.FINISHED

    def on_trial_complete(self, trial_id: str, result: Optional[Dict[str, Any]] = None, error: bool = False) -> None:
        """The event bridge says when a configuration is done (a failed one may be retried)."""

    def observe(self, number: int, optuna_number: Optional[int], step: int, value: float,
                metrics: Optional[Mapping[str, float]] = None) -> None:
        """Fixed points teach nothing."""

    def tell(self, number: int, optuna_number: Optional[int], state: TrialState) -> None:
        self._open.discard(number)

    def release(self, number: int) -> None:
        self._open.discard(number)


@dataclass(frozen=True)
class PastTrial:
    """A trial of the sweep's log, as the rebuilt study needs it."""

    optuna_number: int
    params: Dict[str, Any]
    state: TrialState
    value: Optional[float]
    intermediate: Dict[int, float]
    values: Optional[List[float]] = None
    """Every objective's value at its best epoch (a multi-objective sweep); None = one objective."""
    constraints: Optional[List[float]] = None
    """Optuna's constraint values (``constraint_values``), when the sweep has constraints."""
    sampler_attrs: Optional[Dict[str, Any]] = None
    """What the sampler recorded on the trial when it was asked for (``optuna_private.sampler_attrs``)."""
    steps: Optional[Dict[str, List[float]]] = None
    """A multi-objective trial's values at each report (``STEPS_ATTR``)."""


Modes = Union[Mode, Sequence[Mode]]
"""One objective's mode, or every objective's, the primary first."""


def rebuild_study(mode: Modes, params: Sequence[Param], past: Sequence[PastTrial]) -> optuna.Study:
    """A study holding the sweep's past trials, in their original order, ready to propose the next one."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    modes = [mode] if isinstance(mode, Mode) else list(mode)
    study = (optuna.create_study(direction=modes[0].direction) if len(modes) == 1
             else optuna.create_study(directions=[m.direction for m in modes]))
    by_key = {p.key: p for p in params}
    for trial in sorted(past, key=lambda t: t.optuna_number):
        told = _told_value(trial)
        constrained = trial.constraints is not None and trial.state in (TrialState.COMPLETE, TrialState.PRUNED)
        study.add_trial(optuna.trial.create_trial(
            params={k: by_key[k].to_optuna_value(v) for k, v in trial.params.items()},
            distributions={k: by_key[k].to_optuna() for k in trial.params},
            value=told if not isinstance(told, list) else None, values=told if isinstance(told, list) else None,
            state=trial.state, intermediate_values=trial.intermediate,
            user_attrs={**({CONSTRAINTS_ATTR: trial.constraints} if constrained else {}),
                        **({STEPS_ATTR: trial.steps} if trial.steps and trial.state is not TrialState.RUNNING
                           else {})} or None,
            # what the samplers' after_trial stored when the trial was told
            system_attrs={**(trial.sampler_attrs or {}),
                          **(optuna_private.constraint_attrs(trial.constraints) if constrained else {})} or None))
    return study


def _told_value(trial: PastTrial) -> Union[None, float, List[float]]:
    # What ``study.tell`` would have stored: the value(s) of a COMPLETE trial, a PRUNED one's last intermediate value.
    if trial.state is TrialState.COMPLETE:
        return trial.values if trial.values is not None else trial.value
    if trial.state is TrialState.PRUNED and trial.intermediate:
        return trial.intermediate[max(trial.intermediate)]
    return None


def new_study(mode: Modes) -> optuna.Study:
    """An empty in-memory study (several modes: a multi-objective one)."""
    return rebuild_study(mode, (), ())
