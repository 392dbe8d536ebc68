"""MO-ASHA: asynchronous successive halving when a sweep has several objectives, and constraints.

The rule at a rung (Schmucker et al. 2021, arXiv 2106.12639, as Syne Tune's ``MOASHA`` implements it): a trial
arriving at a rung is ranked among the trials the rung has recorded plus itself, and it goes on iff its 0-based
position ``p`` among those ``n`` satisfies ``p / n <= 1 / reduction_factor``; the first arrival at an empty rung
always goes on. The ranking is non-dominated sorting of the objective vectors (in gains: a minimised metric is
negated), each front ordered by an epsilon-net (Syne Tune's ``compute_epsilon_net`` with ``dim=0``): first the
best in the primary objective, then each next the farthest from those already chosen. Ties keep arrival order, the
new trial last. See ``pareto.py`` for the helpers.

Two things Syne Tune's ``MOASHA`` (0.16.0) does differently, on purpose:

- It ranks with ``nondominated_sort``, whose output is an *order* (indices, best first) that ``Bracket.on_result``
  reads as a *priority per trial*; and ``compute_epsilon_net`` returns ranks that ``nondominated_sort`` reads as an
  order. The two mix-ups cancel when a rung is one front and not otherwise: with reduction factor 4, a trial that
  dominates all the others at its rung can be stopped. Here the position is the trial's true position in the
  order; decisions agree with Syne Tune's bracket fed that true ranking (tests/search/test_moasha.py).
- Constraints, which Syne Tune lacks: the ranking is Deb's rule (``pareto.constrained_order``): feasible trials
  first, infeasible ones after by smaller total violation. With ``stop_infeasible`` a trial is stopped at the first
  result that breaks a constraint, at a rung or not, and stays stopped.

A metric an objective or constraint names that a result lacks keeps the trial's last reported value (some metrics
are measured only when the primary objective improves); one never reported, or NaN, is the worst.

With one objective and no constraints nothing of this applies: the decisions are ``RecordingASHA``'s (Ray's
percentile cutoff, ties at it broken by validation loss), through its own code.
"""

from __future__ import annotations

import math
from types import MappingProxyType, SimpleNamespace
from typing import Any, Dict, Mapping, NamedTuple, Optional, Sequence, Set, Tuple

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from finesweep.adapters import ray_private
from finesweep.errors import ConfigError
from finesweep.search.asha import TIE_BREAK_METRIC, RecordingASHA, TieBreakingBracket
from finesweep.search.pareto import Bounds, constrained_order, violation
from finesweep.search.searcher import MARKER, marker_of

Objective = Tuple[str, str]
"""(metric, "max" or "min")."""

NO_CONSTRAINTS: Mapping[str, Bounds] = MappingProxyType({})


class Entry(NamedTuple):
    """What a rung records of one trial: its objective vector (gains), its total violation, and when it came."""

    gains: Tuple[float, ...]
    violation: float
    arrival: int
    """A counter over the scheduler's results: arrival order survives a trial taking over its old entries."""


class ParetoBracket(TieBreakingBracket):
    """An ASHA bracket whose rungs rank by Pareto fronts: the rung's ``seconds`` hold each trial's ``Entry``, and
    ``secondary`` is the arriving result's ``Entry``, set by the scheduler just before ``on_result``."""

    secondary: Any

    def decide(self, recorded: Dict[str, float], seconds: Dict[str, Any], value: Optional[float],
               secondary: Any) -> str:
        """CONTINUE or STOP for the entry ``secondary`` arriving at a rung whose entries are ``seconds``."""
        if not isinstance(secondary, Entry):
            return str(TrialScheduler.CONTINUE)
        rung = sorted((e for e in seconds.values() if isinstance(e, Entry)), key=lambda e: e.arrival)
        rung.append(secondary)  # alone at its rung, a trial is at position 0 and goes on, as in Syne Tune
        position = constrained_order([e.gains for e in rung], [e.violation for e in rung]).index(len(rung) - 1)
        # Syne Tune's comparison, written as it does so that float rounding agrees: position / n > 1 / rf stops.
        stop = position / len(rung) > 1 / self.rf
        return str(TrialScheduler.STOP if stop else TrialScheduler.CONTINUE)


class _Memory:
    """The last value each watched metric took, per trial: a result that lacks a metric keeps the older one."""

    def __init__(self, metrics: Sequence[str]) -> None:
        self.metrics = tuple(dict.fromkeys(metrics))
        self.values: Dict[Any, Dict[str, float]] = {}

    def update(self, key: Any, result: Mapping[str, Any]) -> Dict[str, float]:
        known = self.values.setdefault(key, {})
        for metric in self.metrics:
            if result.get(metric) is not None:
                known[metric] = float(result[metric])
        return dict(known)


def _key(trial: Any) -> Any:
    """A trial's finesweep number (what survives a resume), or its Tune id when it has none."""
    number = marker_of(trial.config).get("number")
    return trial.trial_id if number is None else number


def _breaks(known: Mapping[str, float], constraints: Mapping[str, Bounds]) -> bool:
    """Whether a reported value (NaN included) lies outside its bounds; a metric not reported yet breaks nothing."""
    return violation(known, {m: b for m, b in constraints.items() if m in known}) > 0


def _early(result: Mapping[str, Any], time_attr: Optional[str], budget: Optional[float]) -> bool:
    if time_attr is None or budget is None:
        return True
    return bool(result.get(time_attr, 0) < budget)


def _check_constraints(constraints: Mapping[str, Bounds]) -> None:
    for metric, (low, high) in constraints.items():
        if low is not None and high is not None and low > high:
            raise ConfigError(f"constraints.{metric}: `low <= high` must hold, but got (low={low}, high={high}). "
                              "Swap the bounds, or leave one of them out (null).")


def _check_objectives(objectives: Sequence[Objective]) -> None:
    if not objectives:
        raise ConfigError("objectives: MO-ASHA needs at least one (metric, mode), but got none.")
    for metric, mode in objectives:
        if mode not in ("max", "min"):
            raise ConfigError(f"objectives.{metric}: mode must be 'max' or 'min', but got {mode!r}.")
    names = [metric for metric, _ in objectives]
    if len(set(names)) != len(names):
        raise ConfigError(f"objectives: each metric may appear once, but got {names}. Remove the repeated one.")


class ParetoASHA(RecordingASHA):
    """ASHA over several objectives (MO-ASHA) and constraints, whose rungs replay on resume like RecordingASHA's.

    Args:
        objectives: (metric, "max" or "min") in order; the first is the primary objective, the one given to
            ``set_search_properties`` and the one the epsilon-net starts from.
        constraints: metric -> (low, high), None for an open side.
        stop_infeasible: stop a trial at the first result that breaks a constraint.
        tie_break: ``RecordingASHA``'s, used with one objective and no constraints (with several, the
            epsilon-net settles ties).
        asha_kwargs: ``ASHAScheduler``'s (time_attr, max_t, grace_period, reduction_factor).
    """

    def __init__(self, objectives: Sequence[Objective], constraints: Mapping[str, Bounds] = NO_CONSTRAINTS,
                 stop_infeasible: bool = False, tie_break: Optional[str] = TIE_BREAK_METRIC,
                 **asha_kwargs: Any) -> None:
        _check_objectives(objectives)
        _check_constraints(constraints)
        super().__init__(tie_break=tie_break, **asha_kwargs)
        self.objectives = [(metric, "max" if mode == "max" else "min") for metric, mode in objectives]
        self.constraints = dict(constraints)
        self.stop_infeasible = stop_infeasible
        self.pareto = len(self.objectives) > 1 or bool(self.constraints)
        """Whether the Pareto rule decides (else RecordingASHA's, untouched)."""
        self._memory = _Memory([m for m, _ in self.objectives] + list(self.constraints))
        self._arrivals = 0
        self._infeasible: Set[Any] = set()
        if self.pareto:
            self._use_pareto_brackets(asha_kwargs.get("grace_period", 1))

    def _use_pareto_brackets(self, grace: float) -> None:
        settings = ray_private.bracket_settings(self)
        ray_private.set_brackets(self, [
            ParetoBracket(grace, settings["max_t"], settings["reduction_factor"], s,
                          stop_last_trials=settings["stop_last_trials"])
            for s in range(len(ray_private.brackets(self)))])

    def set_search_properties(self, metric: Optional[str], mode: Optional[str], **spec: Any) -> bool:
        primary, primary_mode = self.objectives[0]
        if (metric is not None and metric != primary) or (mode is not None and mode != primary_mode):
            raise ConfigError(f"The scheduler's metric and mode must be its primary objective ({primary}, "
                              f"{primary_mode}), but got ({metric}, {mode}). Put that objective first.")
        return bool(super().set_search_properties(metric, mode, **spec))

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: Dict[str, Any]) -> str:
        if not self.pareto:
            return super().on_trial_result(tune_controller, trial, result)
        key = _key(trial)
        known = self._memory.update(key, result)
        if key in self._infeasible:
            return str(TrialScheduler.STOP)  # stopped for a broken constraint: never promoted afterwards
        decision = super().on_trial_result(tune_controller, trial, self._filled(result, known))
        if self.stop_infeasible and _breaks(known, self.constraints):
            decision = self._stop_infeasible(trial, key, result)
        return decision

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: Dict[str, Any]) -> None:
        if not self.pareto:
            super().on_trial_complete(tune_controller, trial, result)
            return
        known = self._memory.update(_key(trial), result)
        super().on_trial_complete(tune_controller, trial, self._filled(result, known))

    def _filled(self, result: Dict[str, Any], known: Mapping[str, float]) -> Dict[str, Any]:
        """The result with every watched metric at its carried value (NaN when never reported)."""
        return {**result, **{metric: known.get(metric, math.nan) for metric in self._memory.metrics}}

    def _stop_infeasible(self, trial: Trial, key: Any, result: Mapping[str, Any]) -> str:
        self._infeasible.add(key)
        number = marker_of(trial.config).get("number")
        time_attr, budget = ray_private.budget(self)
        if number is not None and _early(result, time_attr, budget):
            self.stopped_early.add(number)
        return str(TrialScheduler.STOP)

    def _arm(self, trial: Trial, result: Dict[str, Any]) -> None:
        bracket = ray_private.bracket_of(self, trial.trial_id)
        if not isinstance(bracket, ParetoBracket):
            super()._arm(trial, result)
            return
        bracket.secondary = self._entry(result)

    def _entry(self, filled: Mapping[str, Any]) -> Entry:
        gains = tuple(float(filled[m]) if mode == "max" else -float(filled[m]) for m, mode in self.objectives)
        self._arrivals += 1
        return Entry(gains, violation(filled, self.constraints), self._arrivals)


class InfeasibleStopper(FIFOScheduler):
    """FIFO that stops a trial at the first result that breaks a constraint (``scheduler.kind: fifo`` with
    ``stop_infeasible``), remembers which trials it stopped early, and replays on resume.

    A metric a result lacks keeps the trial's last reported value; a metric never reported breaks nothing yet.

    Args:
        constraints: metric -> (low, high), None for an open side.
        time_attr, max_t: the budget, when known: a stop at or past it is not early.
    """

    def __init__(self, constraints: Mapping[str, Bounds], time_attr: Optional[str] = None,
                 max_t: Optional[float] = None) -> None:
        _check_constraints(constraints)
        super().__init__()  # type: ignore[no-untyped-call]  # Ray's FIFOScheduler.__init__ carries no annotations
        self.constraints = dict(constraints)
        self.time_attr = time_attr
        self.max_t = max_t
        self.stopped_early: set[int] = set()
        self._memory = _Memory(list(self.constraints))
        self._infeasible: Set[Any] = set()

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: Dict[str, Any]) -> str:
        key = _key(trial)
        known = self._memory.update(key, result)
        if key in self._infeasible:
            return str(TrialScheduler.STOP)
        if not _breaks(known, self.constraints):
            return str(TrialScheduler.CONTINUE)
        self._infeasible.add(key)
        number = marker_of(trial.config).get("number")
        if number is not None and _early(result, self.time_attr, self.max_t):
            self.stopped_early.add(number)
        return str(TrialScheduler.STOP)

    def replay(self, number: int, results: Sequence[Dict[str, float]]) -> str:
        """Feed a past trial's results (in the order they came) and return the last decision."""
        trial: Any = SimpleNamespace(trial_id=f"replayed-{number}", config={MARKER: {"number": number}})
        decision = str(TrialScheduler.CONTINUE)
        for result in results:
            decision = self.on_trial_result(None, trial, result)
        return decision
