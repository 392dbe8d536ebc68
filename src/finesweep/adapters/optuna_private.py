"""Optuna's private APIs finesweep uses, in one place, checked against the installed Optuna on import.

- ``TPESampler._gamma``: how many trials are TPE's "good" ones. Optuna 4.9 deprecated the ``gamma`` argument (to
  go in 6.0), but its split still reads this attribute; the rung-wise TPE (``search/fidelity.py``) sets BOHB's 15%.
- ``TPESampler._random_sampler``: the sampler TPE proposes with until it has enough trials; the rung-wise TPE uses
  it while no rung has enough.
- ``Study._get_trials(deepcopy, states, use_cache)``: what TPE reads trials with. The rung-wise TPE reads the
  study's trials with it (without a deep copy of each) and hands TPE a view that answers it.
- ``optuna.study._constrained_optimization._CONSTRAINTS_KEY``: the system attribute a sampler's ``after_trial``
  stores a trial's constraint values under; a study rebuilt from the journal sets it as the lost one had it.
- ``FrozenTrial._trial_id``: the storage id that continues a trial of a study rebuilt from the sweep's journal
  (``optuna.trial.Trial(study, trial_id)``).
- TPE's proposal step (``TPESampler._sample``): its trials split into good and bad (``_split_trials`` with
  ``_gamma``, running trials with ``_constant_liar``), its Parzen estimators (``_build_parzen_estimator``), its
  random state (``_rng``) and candidate count (``_n_ei_candidates``). The prior-weighted TPE (``search/prior.py``)
  proposes as that step does, with the prior's candidates and weight added.
- ``GPSampler._optimize_acqf(acqf, best_params)`` (the hook Optuna names for overriding how the acquisition is
  maximised), ``GPSampler._rng``, and the acquisition's ``search_space`` (``sample_normalized_params``,
  ``is_categorical``, ``discrete_indices``, ``get_choices_of_discrete_params``) and ``eval_acqf_no_grad``: the GP
  sampler scores candidates instead of running local searches (``search/gp_acquisition.py``).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Container, Dict, List, Optional, Tuple

import numpy as np
import optuna
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from finesweep import adapters

TESTED_WITH = "5.0"
"""The Optuna release (major.minor) these names were read from."""


def missing() -> List[str]:
    """What of Optuna's private API this Optuna lacks (empty when everything finesweep uses is there)."""
    sampler = optuna.samplers.TPESampler(seed=0)
    names = ("_gamma", "_random_sampler", "_rng", "_n_ei_candidates", "_constant_liar", "_build_parzen_estimator")
    gone = [f"TPESampler.{name}" for name in names if not hasattr(sampler, name)]
    try:
        from optuna.samplers._tpe.sampler import _split_trials  # noqa: F401
    except ImportError:
        gone.append("optuna.samplers._tpe.sampler._split_trials")
    method = getattr(Study, "_get_trials", None)
    if method is None or not {"deepcopy", "states", "use_cache"} <= set(inspect.signature(method).parameters):
        gone.append("Study._get_trials(deepcopy, states, use_cache)")
    try:
        from optuna.study._constrained_optimization import _CONSTRAINTS_KEY  # noqa: F401
    except ImportError:
        gone.append("optuna.study._constrained_optimization._CONSTRAINTS_KEY")
    trial = optuna.trial.create_trial(value=0.0)
    if not hasattr(trial, "_trial_id"):
        gone.append("FrozenTrial._trial_id")
    gp = optuna.samplers.GPSampler(seed=0)
    gone += [f"GPSampler.{name}" for name in ("_optimize_acqf", "_rng") if not hasattr(gp, name)]
    try:
        from optuna._gp.search_space import SearchSpace

        gone += [f"optuna._gp.search_space.SearchSpace.{n}" for n in ("sample_normalized_params",
                                                                      "get_choices_of_discrete_params")
                 if not hasattr(SearchSpace, n)]
    except ImportError:
        gone.append("optuna._gp.search_space.SearchSpace")
    return gone


def require() -> None:
    """Raise one clear line (``ImportError``) when this Optuna lacks what finesweep uses of it."""
    adapters.require("Optuna", optuna.__version__, TESTED_WITH, missing())


def set_good_share(sampler: optuna.samplers.TPESampler, good: Callable[[int], int]) -> None:
    """Set how many of n trials TPE's split calls good."""
    sampler._gamma = good


def startup_sampler(sampler: optuna.samplers.TPESampler) -> optuna.samplers.BaseSampler:
    """The random sampler TPE proposes with before it has enough trials."""
    return sampler._random_sampler


def set_startup_sampler(sampler: optuna.samplers.TPESampler, startup: optuna.samplers.BaseSampler) -> None:
    """Make TPE propose with ``startup`` before it has enough trials (and for keys outside its joint space)."""
    sampler._random_sampler = startup  # type: ignore[assignment]  # TPE only calls BaseSampler's methods on it


def tpe_split(sampler: optuna.samplers.TPESampler, study: Study,
              trial: FrozenTrial) -> Tuple[List[FrozenTrial], List[FrozenTrial]]:
    """TPE's good and bad trials for proposing ``trial``, as ``TPESampler._sample`` splits them."""
    from optuna.samplers._tpe.sampler import _split_trials, default_gamma, default_gamma_multiobjective

    states = [TrialState.COMPLETE, TrialState.PRUNED] + ([TrialState.RUNNING] if sampler._constant_liar else [])
    trials = [t for t in study._get_trials(deepcopy=False, states=states, use_cache=not sampler._constant_liar)
              if t.number != trial.number]
    if sampler._gamma is None:
        sampler._gamma = default_gamma if len(study.directions) <= 1 else default_gamma_multiobjective
    finished = sum(t.state is not TrialState.RUNNING for t in trials)
    below, above = _split_trials(study, trials, sampler._gamma(finished))
    return below, above


def parzen_estimators(sampler: optuna.samplers.TPESampler, study: Study, search_space: Dict[str, Any],
                      below: List[FrozenTrial], above: List[FrozenTrial]) -> Tuple[Any, Any]:
    """TPE's densities l(x) of the good and g(x) of the bad trials over ``search_space``."""
    return (sampler._build_parzen_estimator(study, search_space, below, handle_below=True),
            sampler._build_parzen_estimator(study, search_space, above, handle_below=False))


def tpe_rng(sampler: optuna.samplers.TPESampler) -> np.random.RandomState:
    """The random state TPE draws its candidates with."""
    return sampler._rng.rng


def candidate_count(sampler: optuna.samplers.TPESampler) -> int:
    """How many candidates TPE draws from l(x) for each proposal (``n_ei_candidates``)."""
    return int(sampler._n_ei_candidates)


def every_trial(study: Study) -> List[FrozenTrial]:
    """The study's trials, not deep-copied (``study.trials`` copies every one: O(n) a call)."""
    return study._get_trials(deepcopy=False, use_cache=False)


def continued_trial(study: Study, frozen: FrozenTrial) -> optuna.trial.Trial:
    """A live trial object for a trial already in the study (one a rebuilt study holds, run on)."""
    return optuna.trial.Trial(study, frozen._trial_id)


class StudyView:
    """A read-only stand-in for a study that shows TPE other trials: it answers what TPE reads trials with.

    Args:
        study: the real study (everything else is read from it).
        trials: the trials to show instead of its own.
    """

    def __init__(self, study: Study, trials: List[FrozenTrial]) -> None:
        self._study = study
        self._view = trials

    def _get_trials(self, deepcopy: bool = True, states: Optional[Container[TrialState]] = None,
                    use_cache: bool = False) -> List[FrozenTrial]:
        return [t for t in self._view if states is None or t.state in states]

    def get_trials(self, deepcopy: bool = True, states: Optional[Container[TrialState]] = None) -> List[FrozenTrial]:
        """The shown trials in ``states`` (all when None)."""
        return self._get_trials(deepcopy, states)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)


require()


GA_ATTR_SUFFIX = ":generation"
"""The trial system attribute Optuna's genetic samplers (NSGA-II, NSGA-III) record each trial's generation under
(``BaseGASampler._get_generation_key``), set when the trial is asked for and read by every later proposal."""


def sampler_attrs(study: Study, trial: Any) -> dict[str, Any]:
    """The system attributes the sampler gave a trial when it was asked for that a rebuilt study must hold again to
    propose what the lost one would have: a genetic sampler's generation (chosen from the trials finished at that
    moment, which a study rebuilt later cannot know)."""
    found = study._storage.get_trial_system_attrs(trial._trial_id)
    return {k: v for k, v in found.items() if k.endswith(GA_ATTR_SUFFIX)}


def constraint_attrs(values: Optional[List[float]]) -> dict[str, Any]:
    """The system attributes a constrained sampler's ``after_trial`` stores for a trial told ``values``."""
    from optuna.study._constrained_optimization import _CONSTRAINTS_KEY

    return {_CONSTRAINTS_KEY: tuple(values or ())}
