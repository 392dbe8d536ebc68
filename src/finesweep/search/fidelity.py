"""TPE and GP that compare trials at one fidelity at a time, for sweeps whose trials ASHA stops early (BOHB's rule).

Under ASHA most trials end at a low rung. Optuna's TPE, given PRUNED trials, ranks every COMPLETE
trial above every PRUNED one and the rest by how far they got: its "good" set mixes full-budget and
partial scores, and its "bad" set is dominated by trials stopped at the first rung, easy negatives
that say little about where, among the promising configurations, the best one lies.

``RungTPESampler`` shows TPE one rung at a time instead, as BOHB fits one model per budget: the highest
rung that at least ``min_points`` trials have reached, each of those trials scored by its best value up
to that rung (the checkpoint it would keep), the others left out. Trials still running below that rung
stay visible as running (``constant_liar``), so two workers do not propose the same point. While no
rung has enough trials, proposals are random (TPE's start-up).

Everything it reads is in the study (intermediate values by epoch), so a study rebuilt from the sweep's
log proposes exactly what the lost one would have.

``RungMOTPESampler`` does the same for several objectives (Optuna's MOTPE): a trial's values at each report are in
its ``searcher.STEPS_ATTR`` (Optuna keeps intermediate values of one objective only), and at a rung each trial
stands for its values at its best report up to it by the primary objective, the checkpoint it would keep. Without
it MOTPE is told stopped trials' low-fidelity values beside full-budget ones.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Sequence

import optuna
from optuna.distributions import BaseDistribution
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from finesweep.adapters import optuna_private
from finesweep.search.gp_acquisition import CandidateGPSampler
from finesweep.search.searcher import STEPS_ATTR


def rungs(grace_period: int, reduction_factor: float, max_epochs: int) -> List[int]:
    """ASHA's milestones in epochs, lowest first, ending with the full budget: 4, 3, 52 -> [4, 12, 36, 52]."""
    milestones, milestone = [], float(grace_period)
    while milestone < max_epochs:
        milestones.append(int(milestone))
        milestone *= reduction_factor
    return [*dict.fromkeys(milestones), max_epochs]


def score_at(trial: FrozenTrial, rung: int, maximize: bool) -> Optional[float]:
    """The trial's best intermediate value up to ``rung`` epochs, or None if it did not reach the rung."""
    values = trial.intermediate_values
    if not values or max(values) < rung:
        return None
    seen = [v for step, v in values.items() if step <= rung and not math.isnan(v)]
    if not seen:
        return None
    return max(seen) if maximize else min(seen)


def rung_gamma(n: int) -> int:
    """TPE's "good" trials among ``n`` at a rung: the best 15% (BOHB's share), 1 to 25.

    Optuna's default is 10%: at a rung that a few dozen trials reached it keeps 2-3 of them, and TPE
    then proposes little but their neighbours.
    """
    return min(max(1, math.ceil(0.15 * n)), 25)


class RungView:
    """What a rung-wise sampler shows its model: the study at the highest rung that at least ``min_points`` trials
    reached, each of them at its score there (see the module's docstring).

    Args:
        milestones: the rungs in epochs, lowest first, the full budget last (``rungs``).
        min_points: trials a rung needs before a model is fitted on it (BOHB: the number of dimensions + 1).
        multi: score each trial by every objective's values at its best report (``values_at``), not by its best
            intermediate value (``score_at``).
    """

    def __init__(self, milestones: Sequence[int], min_points: int, multi: bool = False) -> None:
        self.milestones = tuple(milestones)
        self.min_points = max(2, min_points)
        self.multi = multi

    def __call__(self, study: Study, current: FrozenTrial) -> Optional[optuna_private.StudyView]:
        """The study as seen at the highest rung with enough trials; None while no rung has them."""
        maximize = study.directions[0] is StudyDirection.MAXIMIZE
        trials = [t for t in optuna_private.every_trial(study)
                  if t.number != current.number and t.state in (TrialState.COMPLETE, TrialState.PRUNED,
                                                                 TrialState.RUNNING)]
        for rung in reversed(self.milestones):
            scored = [(t, self.score(t, rung, maximize)) for t in trials]
            if sum(s is not None for _, s in scored) >= self.min_points:
                # a trial running below the rung stays as it is: a pending point for the constant liar
                return optuna_private.StudyView(study, [t if s is None else self.at_rung(t, s) for t, s in scored
                                                        if s is not None or t.state is TrialState.RUNNING])
        return None

    def score(self, trial: FrozenTrial, rung: int, maximize: bool) -> Any:
        """What the trial stands for at ``rung`` (``score_at`` or ``values_at``), or None if it did not reach it."""
        return values_at(trial, rung, maximize) if self.multi else score_at(trial, rung, maximize)

    def at_rung(self, trial: FrozenTrial, score: Any) -> FrozenTrial:
        """The trial as the model sees it at the rung: finished, with ``score``."""
        values = dict(values=score) if self.multi else dict(value=score)
        return optuna.trial.create_trial(params=trial.params, distributions=trial.distributions,
                                         system_attrs=trial.system_attrs, **values)


class RungTPESampler(optuna.samplers.TPESampler):
    """TPE fitted at the highest rung with at least ``min_points`` trials (see the module's docstring).

    Args:
        milestones: the rungs in epochs, lowest first, the full budget last (``rungs``).
        min_points: trials a rung needs before TPE is fitted on it (BOHB: the number of dimensions + 1).
        good: n trials at the rung -> how many of them are TPE's "good" ones (``rung_gamma``).
        kwargs: ``TPESampler``'s.
    """

    multi = False

    def __init__(self, milestones: Sequence[int], min_points: int, good: Callable[[int], int] = rung_gamma,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Optuna 4.9 deprecated the ``gamma`` argument (to go in 6.0) but its split still reads this
        # attribute; tests/search/test_fidelity.py checks that the split uses it.
        optuna_private.set_good_share(self, good)
        self.view = RungView(milestones, min_points, self.multi)

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: Dict[str, BaseDistribution]) -> Dict[str, Any]:
        view = self.view(study, trial)
        return {} if view is None else super().sample_relative(view, trial, search_space)  # type: ignore[arg-type]

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        view = self.view(study, trial)
        if view is None:
            return optuna_private.startup_sampler(self).sample_independent(study, trial, param_name,
                                                                           param_distribution)
        return super().sample_independent(view, trial, param_name, param_distribution)  # type: ignore[arg-type]


class RungMOTPESampler(RungTPESampler):
    """MOTPE fitted at the highest rung with at least ``min_points`` trials, each at its values there (see the
    module's docstring); the same arguments as ``RungTPESampler``."""

    multi = True


class RungGPSampler(CandidateGPSampler):
    """Optuna's Gaussian-process sampler (log expected improvement) fitted at the highest rung with at least
    ``min_points`` trials, as MOBSTER's and Hyper-Tune's GP models are fitted on the results at a resource level;
    random proposals until a rung has them. Several objectives: the trials' values there (Optuna's log EHVI).

    Args:
        milestones: the rungs in epochs, lowest first, the full budget last (``rungs``).
        min_points: trials a rung needs before the GP is fitted on it.
        multi: the sweep has several objectives.
        kwargs: ``GPSampler``'s.
    """

    def __init__(self, milestones: Sequence[int], min_points: int, multi: bool = False, **kwargs: Any) -> None:
        super().__init__(n_startup_trials=max(2, min_points), warn_independent_sampling=False, **kwargs)
        self.view = RungView(milestones, min_points, multi)

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: Dict[str, BaseDistribution]) -> Dict[str, Any]:
        view = self.view(study, trial)
        return {} if view is None else super().sample_relative(view, trial, search_space)  # type: ignore[arg-type]


def values_at(trial: FrozenTrial, rung: int, maximize: bool) -> Optional[List[float]]:
    """A multi-objective trial's values at its best report (by the primary objective) up to ``rung``, or None if it
    did not reach the rung."""
    steps: Dict[int, List[float]] = {int(step): [float(v) for v in values]
                                     for step, values in (trial.user_attrs.get(STEPS_ATTR) or {}).items()}
    if not steps or max(steps) < rung:
        return None
    seen = [values for step, values in steps.items() if step <= rung and not math.isnan(values[0])]
    if not seen:
        return None
    primary = [values[0] for values in seen]
    return seen[primary.index(max(primary) if maximize else min(primary))]
