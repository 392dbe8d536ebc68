"""ASHA as finesweep runs it: in epochs, ties at a rung's cutoff broken by validation loss, rungs replayable.

Ray's ASHA keeps a trial whose objective is *equal* to its rung's cutoff. On a small validation split
accuracy moves in steps of 1/n, and every configuration stuck at chance ties at the same value: with
reduction factor 2, four trials at 0.200 and the cutoff at 0.200, all four run their full budget.
Here a tie at the cutoff is settled by a secondary key (``val/loss``: lower is better), as if the
trials were ordered by (objective, -loss): a tied trial goes on only if, ordered that way, it would
sit above the rung's cutoff position. Without a tie, or without the secondary value, the decision is
Ray's.
"""

from __future__ import annotations

import bisect
import math
from typing import Any, Dict, List, Optional, Sequence

from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from finesweep.adapters import ray_private
from finesweep.search.searcher import MARKER, marker_of

TIE_BREAK_METRIC = "val/loss"
"""The secondary key: a tie on the objective at a rung's cutoff goes to the lower validation loss."""


class TieBreakingBracket(ray_private.Bracket):  # type: ignore[misc]  # Ray's private bracket: Any to mypy
    """One ASHA bracket whose rungs also record each trial's secondary value (larger is better).

    ``secondary`` is the current result's secondary value, set by the scheduler just before
    ``on_result`` (Ray's bracket API passes the objective alone).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.secondary: Optional[float] = None
        self.seconds: List[Dict[str, Optional[float]]] = [{} for _ in ray_private.rungs(self)]
        """Per rung, each trial's secondary value (as the rung records each trial's objective)."""

    def on_result(self, trial: Trial, cur_iter: int, cur_rew: Optional[float]) -> str:
        for index, (milestone, recorded) in enumerate(ray_private.rungs(self)):  # highest rung first
            if cur_iter >= milestone and trial.trial_id in recorded and not ray_private.stops_last_trials(self):
                break
            if cur_iter < milestone or trial.trial_id in recorded:
                continue
            action = self.decide(recorded, self.seconds[index], cur_rew, self.secondary)
            if cur_rew is not None:
                recorded[trial.trial_id] = cur_rew
                self.seconds[index][trial.trial_id] = self.secondary
            return action
        return TrialScheduler.CONTINUE

    def decide(self, recorded: Dict[str, float], seconds: Dict[str, Optional[float]], value: Optional[float],
               secondary: Optional[float]) -> str:
        """CONTINUE or STOP for ``value`` arriving at a rung that has ``recorded`` (values larger-is-better)."""
        found = self.cutoff(recorded)
        if found is None or value is None or math.isnan(value):
            return TrialScheduler.CONTINUE
        cutoff = float(found)
        if value != cutoff or secondary is None:
            return TrialScheduler.STOP if value < cutoff else TrialScheduler.CONTINUE
        # A tie: where would the trial sit among the recorded ones, ordered by (value, secondary)?
        values = sorted(v for v in recorded.values() if not math.isnan(v))
        cutoff_position = (1 - 1 / self.rf) * (len(values) - 1)  # np.percentile's linear position
        tied = [seconds.get(key) for key, v in recorded.items() if v == value]
        not_better = sum(1 for s in tied if s is None or s <= secondary)
        position = bisect.bisect_left(values, value) + not_better
        return TrialScheduler.CONTINUE if position > cutoff_position else TrialScheduler.STOP


class _Replayed:
    """Stands in for a Tune trial when past results are replayed into the scheduler."""

    def __init__(self, trial_id: str, number: int) -> None:
        self.trial_id = trial_id
        self.config = {MARKER: {"number": number}}


class RecordingASHA(ASHAScheduler):
    """ASHA in epochs that breaks ties by validation loss, remembers which trials it stopped early, and
    whose rungs survive a restart.

    Ray's ASHA keys its rungs by Tune trial id and Tune's experiment restore does not keep them
    (ray#30838). Here every trial is known by its finesweep number too: ``replay`` rebuilds the rungs
    from the sweep's log, and a trial that comes back (resumed, retried) takes over its old entries.

    Args:
        tie_break: the secondary key's metric (lower is better), or None for Ray's rule (ties go on).
        kwargs: ``ASHAScheduler``'s.
    """

    def __init__(self, tie_break: Optional[str] = TIE_BREAK_METRIC, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tie_break = tie_break
        grace = kwargs.get("grace_period", 1)
        settings = ray_private.bracket_settings(self)
        ray_private.set_brackets(self, [
            TieBreakingBracket(grace, settings["max_t"], settings["reduction_factor"], s,
                               stop_last_trials=settings["stop_last_trials"])
            for s in range(len(ray_private.brackets(self)))])
        self.stopped_early: set[int] = set()
        self._ids: Dict[int, str] = {}

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        super().on_trial_add(tune_controller, trial)
        number = marker_of(trial.config).get("number")
        if number is None:
            return
        old = self._ids.get(number)
        if old is not None and old != trial.trial_id:
            for bracket in ray_private.brackets(self):
                for (_, recorded), seconds in zip(ray_private.rungs(bracket), bracket.seconds, strict=True):
                    if old in recorded:
                        recorded[trial.trial_id] = recorded.pop(old)
                        seconds[trial.trial_id] = seconds.pop(old, None)
        self._ids[number] = trial.trial_id

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: Dict[str, Any]) -> str:
        self._arm(trial, result)
        decision = str(super().on_trial_result(tune_controller, trial, result))
        number = marker_of(trial.config).get("number")
        time_attr, budget = ray_private.budget(self)
        if decision == TrialScheduler.STOP and result.get(time_attr, 0) < budget and number is not None:
            self.stopped_early.add(number)
        return decision

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: Dict[str, Any]) -> None:
        self._arm(trial, result)
        super().on_trial_complete(tune_controller, trial, result)

    def replay(self, number: int, results: Sequence[Dict[str, float]]) -> str:
        """Feed a past trial's results (in the order they came) and return the last decision."""
        trial: Any = _Replayed(f"replayed-{number}", number)  # stands in for a Tune trial: what ASHA reads of one
        if ray_private.bracket_of(self, trial.trial_id) is None:
            self.on_trial_add(None, trial)
        decision = str(TrialScheduler.CONTINUE)
        for result in results:
            decision = self.on_trial_result(None, trial, result)
        return decision

    def _arm(self, trial: Trial, result: Dict[str, Any]) -> None:
        bracket = ray_private.bracket_of(self, trial.trial_id)
        if isinstance(bracket, TieBreakingBracket):
            bracket.secondary = self._secondary(result)

    def _secondary(self, result: Dict[str, Any]) -> Optional[float]:
        if self.tie_break is None or self.tie_break == ray_private.metric(self) or self.tie_break not in result:
            return None
        loss = float(result[self.tie_break])
        return None if math.isnan(loss) else -loss  # larger is better, like the rungs' values
