"""TPE that starts from the user's prior belief and trusts it less with every trial (πBO, Hvarfner et al., 2022).

A searched key with a prior (``config/prior.py``) has a distribution centred on its value, as PriorBand
(Mallik et al., 2023) and NePS define one: on the unit interval of the key's range (of its logarithm where the key
is log), a normal truncated to [0, 1] with standard deviation 0.5 (``low`` confidence), 0.25 (``medium``) or 0.125
(``high``); a categorical key's prior choice weighs 2, 4 or 6 against 1 for every other choice.

The prior enters TPE in three places:
- the prior's mode is the search's first trial (``config.recipe.mode_point``, enqueued like the recipe);
- TPE's start-up proposals (before its model has enough trials) are drawn from the prior, not uniformly;
- after that, each proposal scores TPE's candidates (drawn from l(x), the good trials' density, and as many from
  the prior) by log l(x) - log g(x) + t (β / n) log π(x): πBO's prior-weighted acquisition, the prior's weight
  fading with n, the trials finished so far (β = ``DECAY``);
- t, the prior's trust (``trust``), weighs the prior by the evidence, as PriorBand does: it stays 1 while the
  finished trials do not contradict the prior, and falls to 0 once the better trials lie away from it. It also is
  the chance that a start-up proposal comes from the prior rather than uniformly. A misleading prior costs the
  first few proposals; a good one keeps its weight until TPE's own model has the trials to decide.

Keys without a prior are drawn uniformly among the prior's candidates and weigh nothing. Everything a proposal
reads is in the study and the sampler's seed, so a study rebuilt from the journal proposes what the lost one would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState
from scipy import stats

from finesweep.adapters import optuna_private
from finesweep.config import Confidence
from finesweep.config.space import Param
from finesweep.search.fidelity import RungMOTPESampler, RungTPESampler

STD = {Confidence.low: 0.5, Confidence.medium: 0.25, Confidence.high: 0.125}
"""Standard deviation of a numeric prior on the unit interval of the key's (log) range, by confidence (NePS's)."""

CATEGORICAL_WEIGHT = {Confidence.low: 2.0, Confidence.medium: 4.0, Confidence.high: 6.0}
"""Weight of a categorical prior's choice against 1 for each other choice, by confidence (NePS's)."""

DECAY = 10.0
"""β of πBO: after n finished trials the prior's log density is weighed by β / n (all of it until n = β)."""

MIN_EVIDENCE = 6
"""Finished trials before the search checks the prior against them (``trust``); until then it trusts it wholly."""


@dataclass(frozen=True)
class KeyPrior:
    """One key's prior over Optuna's internal representation of its values (a categorical's index)."""

    distribution: BaseDistribution
    mode: float
    confidence: Confidence

    def sample(self, rng: np.random.RandomState, size: int) -> np.ndarray:
        """``size`` draws from the prior."""
        if isinstance(self.distribution, CategoricalDistribution):
            return np.asarray(rng.choice(len(self.distribution.choices), size=size, p=self._choice_probabilities()))
        centre, std = self._unit(np.array([self.mode]))[0], STD[self.confidence]
        low, high = (0.0 - centre) / std, (1.0 - centre) / std
        return self._from_unit(np.asarray(stats.truncnorm.rvs(low, high, loc=centre, scale=std, size=size,
                                                              random_state=rng)))

    def log_pdf(self, values: np.ndarray) -> np.ndarray:
        """The prior's log density at ``values`` (on the unit interval; a categorical's log probability)."""
        if isinstance(self.distribution, CategoricalDistribution):
            return np.asarray(np.log(self._choice_probabilities()[values.astype(int)]))
        centre, std = self._unit(np.array([self.mode]))[0], STD[self.confidence]
        low, high = (0.0 - centre) / std, (1.0 - centre) / std
        return np.asarray(stats.truncnorm.logpdf(self._unit(values), low, high, loc=centre, scale=std))

    def _choice_probabilities(self) -> np.ndarray:
        weights = np.ones(len(getattr(self.distribution, "choices", ())))
        weights[int(self.mode)] = CATEGORICAL_WEIGHT[self.confidence]
        return np.asarray(weights / weights.sum())

    def _unit(self, values: np.ndarray) -> np.ndarray:
        low, high, log = _range(self.distribution)
        if log:
            return (np.log(values) - math.log(low)) / (math.log(high) - math.log(low)) if high > low else values * 0
        return (values - low) / (high - low) if high > low else values * 0

    def _from_unit(self, unit: np.ndarray) -> np.ndarray:
        return from_unit(self.distribution, np.clip(unit, 0.0, 1.0))


class Prior:
    """The prior over a whole search space: a ``KeyPrior`` per key that has one.

    Args:
        params: the sweep's searched values, some with a ``prior``.
    """

    def __init__(self, params: Sequence[Param]) -> None:
        self.keys: Dict[str, KeyPrior] = {}
        for param in params:
            if param.prior is None:
                continue
            distribution = param.to_optuna()
            mode = distribution.to_internal_repr(param.to_optuna_value(param.prior))
            self.keys[param.key] = KeyPrior(distribution, float(mode), param.prior_confidence)

    def __bool__(self) -> bool:
        return bool(self.keys)

    def covers(self, search_space: Dict[str, BaseDistribution]) -> bool:
        """Whether any key of ``search_space`` has a prior."""
        return any(key in self.keys for key in search_space)

    def sample(self, search_space: Dict[str, BaseDistribution], rng: np.random.RandomState,
               size: int) -> Dict[str, np.ndarray]:
        """``size`` points in Optuna's internal representation: keys with a prior from it, the others uniformly."""
        return {key: self.keys[key].sample(rng, size) if key in self.keys else uniform(distribution, rng, size)
                for key, distribution in search_space.items()}

    def log_pdf(self, samples: Dict[str, np.ndarray]) -> np.ndarray:
        """The prior's log density of each point, summed over the keys that have a prior."""
        size = len(next(iter(samples.values())))
        return sum((self.keys[key].log_pdf(values) for key, values in samples.items() if key in self.keys),
                   np.zeros(size))

    def weight(self, finished: int) -> float:
        """πBO's exponent of the prior after ``finished`` trials: β / n, at most 1."""
        return min(1.0, DECAY / max(1, finished))


class PriorStartup(optuna.samplers.BaseSampler):
    """What TPE proposes with before its model has enough trials: a draw from the prior where a key has one,
    uniform (Optuna's RandomSampler) where it does not."""

    def __init__(self, prior: Prior, seed: Optional[int]) -> None:
        self.prior = prior
        self.uniform = optuna.samplers.RandomSampler(seed=seed)
        self.rng = np.random.RandomState(seed)
        self.trust = 1.0
        """The chance that a proposal is drawn from the prior (``trust``), set by the TPE sampler before it asks."""
        self._from_prior: Dict[int, bool] = {}

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> Dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: Dict[str, BaseDistribution]) -> Dict[str, Any]:
        return {}

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        key = self.prior.keys.get(param_name)
        if trial.number not in self._from_prior:  # one draw a trial: all its keys from the prior, or none
            self._from_prior[trial.number] = bool(self.rng.uniform() < self.trust)
        if key is None or key.distribution != param_distribution or not self._from_prior[trial.number]:
            return self.uniform.sample_independent(study, trial, param_name, param_distribution)
        return param_distribution.to_external_repr(float(key.sample(self.rng, 1)[0]))

    def reseed_rng(self) -> None:
        self.uniform.reseed_rng()
        self.rng.seed()


class PriorWeighting(optuna.samplers.TPESampler):
    """The prior's part of a TPE sampler (see the module's docstring): start-up draws from the prior, and each
    proposal's candidates scored by πBO's prior-weighted acquisition. Mixed in before a TPE sampler class."""

    prior: Prior
    _finished: int = 0
    _trust: float = 1.0
    _startup: PriorStartup

    def install_prior(self, prior: Prior, seed: Optional[int]) -> None:
        """Use ``prior`` (called once, after the TPE sampler is built)."""
        self.prior = prior
        self._startup = PriorStartup(prior, seed)
        optuna_private.set_startup_sampler(self, self._startup)

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: Dict[str, BaseDistribution]) -> Dict[str, Any]:
        self._read(study)
        return super().sample_relative(study, trial, search_space)

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        self._read(study)
        return super().sample_independent(study, trial, param_name, param_distribution)

    def _read(self, study: Study) -> None:
        self._finished = finished_trials(study)
        self._trust = self._startup.trust = trust(self.prior, study)

    def _sample(self, study: Study, trial: FrozenTrial,
                search_space: Dict[str, BaseDistribution]) -> Dict[str, Any]:
        if not self.prior.covers(search_space):
            return super()._sample(study, trial, search_space)
        below, above = optuna_private.tpe_split(self, study, trial)
        good, bad = optuna_private.parzen_estimators(self, study, search_space, below, above)
        rng, count = optuna_private.tpe_rng(self), optuna_private.candidate_count(self)
        from_model, from_prior = good.sample(rng, count), self.prior.sample(search_space, rng, count)
        candidates = {key: np.concatenate([from_model[key], from_prior[key]]) for key in search_space}
        score = (good.log_pdf(candidates) - bad.log_pdf(candidates)
                 + self._trust * self.prior.weight(self._finished) * self.prior.log_pdf(candidates))
        best = int(np.argmax(score))
        return {key: distribution.to_external_repr(candidates[key][best].item())
                for key, distribution in search_space.items()}


class PriorTPESampler(PriorWeighting):
    """Optuna's TPE with a prior (``TPESampler``'s arguments)."""


class PriorRungTPESampler(PriorWeighting, RungTPESampler):
    """The rung-wise TPE (``fidelity.RungTPESampler``) with a prior."""


class PriorRungMOTPESampler(PriorWeighting, RungMOTPESampler):
    """The rung-wise MOTPE (``fidelity.RungMOTPESampler``) with a prior."""


def trust(prior: Prior, study: Study) -> float:
    """How far the trials so far bear the prior out, 0 to 1: 1 until ``MIN_EVIDENCE`` trials finished, then
    1 + z, clipped, where z = ρ √(n - 1) is the rank correlation ρ between the trials' prior density and their
    scores, in standard errors of a ρ that knows nothing (PriorBand's idea: weigh the prior by the evidence).

    The prior keeps its whole weight while the trials do not contradict it, and loses all of it once the good
    trials lie away from it by one standard error or more. A trial is scored by its objective at its first report
    when any trial was stopped early (ASHA: every trial reached it), else by its value.
    """
    trials = [t for t in optuna_private.every_trial(study) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    early = any(t.state is TrialState.PRUNED for t in trials)
    scored: List[Tuple[FrozenTrial, float]] = []
    for t in trials:
        score = _score(t, early)
        if score is not None and math.isfinite(score) and any(key in t.params for key in prior.keys):
            scored.append((t, score))
    if len(scored) < MIN_EVIDENCE:
        return 1.0
    density = [float(prior.log_pdf({key: np.array([t.distributions[key].to_internal_repr(t.params[key])])
                                    for key in prior.keys if key in t.params})[0]) for t, _ in scored]
    sign = 1.0 if study.directions[0] is StudyDirection.MAXIMIZE else -1.0
    rho = float(stats.spearmanr(density, [sign * score for _, score in scored]).statistic)
    if not math.isfinite(rho):
        return 1.0
    return float(min(1.0, max(0.0, 1.0 + rho * math.sqrt(len(scored) - 1))))


def _score(trial: FrozenTrial, early: bool) -> Optional[float]:
    if early and trial.intermediate_values:
        return trial.intermediate_values[min(trial.intermediate_values)]
    values = trial.values
    return None if not values else values[0]


def finished_trials(study: Study) -> int:
    """Trials of the study that finished (complete or stopped early): πBO's n."""
    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in optuna_private.every_trial(study))


def _range(distribution: BaseDistribution) -> Tuple[float, float, bool]:
    if isinstance(distribution, (FloatDistribution, IntDistribution)):
        return float(distribution.low), float(distribution.high), bool(distribution.log)
    raise TypeError(f"a {type(distribution).__name__} has no numeric range")


def from_unit(distribution: BaseDistribution, unit: np.ndarray) -> np.ndarray:
    """Points of the unit interval as values of ``distribution`` (internal representation), on its step grid."""
    low, high, log = _range(distribution)
    values = np.exp(math.log(low) + unit * (math.log(high) - math.log(low))) if log else low + unit * (high - low)
    step = getattr(distribution, "step", None)
    if step is not None:
        values = low + np.round((values - low) / step) * step
    return np.clip(values, low, high)


def uniform(distribution: BaseDistribution, rng: np.random.RandomState, size: int) -> np.ndarray:
    """``size`` uniform draws (on the log scale where log) in Optuna's internal representation."""
    if isinstance(distribution, CategoricalDistribution):
        return rng.randint(len(distribution.choices), size=size).astype(float)
    return from_unit(distribution, rng.uniform(0.0, 1.0, size=size))

