"""Optuna samplers by name: one small factory each, one registration line each."""

from __future__ import annotations

import dataclasses
import random
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence

import optuna

from finesweep.config import ExperimentConfig, ObjectiveConfig, Sampler, SchedulerKind, SearchConfig
from finesweep.config.sampler_choice import chosen_sampler
from finesweep.config.space import Param, grid
from finesweep.search.fidelity import RungGPSampler, RungMOTPESampler, RungTPESampler, rungs
from finesweep.search.gp_acquisition import CandidateGPSampler
from finesweep.search.prior import Prior, PriorRungMOTPESampler, PriorRungTPESampler, PriorTPESampler
from finesweep.search.searcher import constraints_of

Milestones = Optional[Sequence[int]]

ASHA_RANDOM_SHARE = 1 / 3
"""Share of TPE's proposals drawn at random instead when ASHA stops trials early (BOHB's random fraction).

Under ASHA most proposals cost one rung, so exploring is cheap, and TPE alone can settle on one region.
Measured with an in-process copy of the LCBench benchmark's search (10 tasks x 6 seeds, rung-wise TPE;
not shipped, benchmarks/search_efficiency.py is the reference): median speed-up over random search 6.0x
with a third at random, 5.4x with a fifth. Without early stopping every proposal costs a full trial and
TPE proposes them all.
"""


def random_share(config: ExperimentConfig) -> float:
    """The share of proposals a sweep's TPE or GP draws at random (``ASHA_RANDOM_SHARE`` under ASHA, else 0)."""
    return ASHA_RANDOM_SHARE if config.scheduler.kind is SchedulerKind.asha else 0.0


def fidelity_rungs(config: ExperimentConfig) -> Optional[List[int]]:
    """ASHA's rungs in epochs (the full budget last) when ASHA stops trials early, else None."""
    sched = config.scheduler
    if sched.kind is not SchedulerKind.asha:
        return None
    return rungs(sched.grace_period, sched.reduction_factor, sched.budget)


def sampler_factory(config: ExperimentConfig, params: Sequence[Param]) -> Callable[[int], optuna.samplers.BaseSampler]:
    """seed -> the sampler that proposes one trial of this sweep (see ``make_sampler``)."""
    share, milestones = random_share(config), fidelity_rungs(config)
    return lambda seed: make_sampler(config.search, params, seed, share, milestones, config.objective)


def make_sampler(search: SearchConfig, params: Sequence[Param], seed: Optional[int] = None,
                 random_share: float = 0.0, milestones: Optional[Sequence[int]] = None,
                 objective: Optional[ObjectiveConfig] = None) -> optuna.samplers.BaseSampler:
    """The Optuna sampler a sweep asks for, seeded with ``seed`` (default ``search.seed``).

    ``random_share``: for TPE and GP, the chance that this proposal is drawn at random instead; which ones are
    is a function of the seed alone, so a resumed sweep proposes what the lost one would have.
    ``milestones``: ASHA's rungs; TPE and GP are then fitted one rung at a time (``fidelity``).
    ``objective``: with constraints, TPE, GP and NSGA-II read each trial's (``constraints_of``) and prefer feasible
    configurations; they serve several objectives as they come (Optuna's MOTPE, log EHVI and NSGA-II).
    """
    if seed is not None:
        search = dataclasses.replace(search, seed=seed)
    # a composed sweep's ``auto`` is settled already (config.compose); a SearchConfig built in code is settled here
    search = dataclasses.replace(search, sampler=chosen_sampler(search, params, objective))
    if (search.sampler in (Sampler.tpe, Sampler.gp) and random_share > 0
            and random.Random(search.seed).random() < random_share):
        return optuna.samplers.RandomSampler(seed=search.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", FutureWarning)  # GPSampler's constraints_func: Optuna 5 deprecates it
        return _FACTORIES[search.sampler](search, params, milestones, objective)


def _grid(search: SearchConfig, params: Sequence[Param], milestones: Milestones,
          objective: Optional[ObjectiveConfig]) -> optuna.samplers.BaseSampler:
    grid(params)  # raises on continuous ranges
    # BruteForceSampler, not GridSampler: it finds what is left from the study's own trials (their
    # values), so a study rebuilt from the sweep's log on resume walks on where it stopped, and it
    # expands each define-by-run branch of a conditional space on its own. Running leaves are
    # skipped, so with trials in flight every combination still runs exactly once. GridSampler keeps
    # its progress in system attributes and shuffles its grid by seed, which a resume would lose.
    return optuna.samplers.BruteForceSampler(seed=search.seed)


def _random(search: SearchConfig, params: Sequence[Param], milestones: Milestones,
            objective: Optional[ObjectiveConfig]) -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=search.seed)


def _startup(search: SearchConfig) -> int:
    # Optuna's default of 10 random start-up trials would leave a 12-trial sweep almost all random;
    # a quarter of the budget (2..10) keeps TPE and GP useful on small budgets.
    return max(2, min(10, (search.num_trials or 0) // 4))


def _rung_points(search: SearchConfig, params: Sequence[Param]) -> int:
    # BOHB fits a rung once it holds dimensions + 1 trials; small sweeps start at their start-up count.
    return max(2, min(len(params) + 1, _startup(search)))


def _tpe(search: SearchConfig, params: Sequence[Param], milestones: Milestones,
         objective: Optional[ObjectiveConfig]) -> optuna.samplers.BaseSampler:
    startup = _startup(search)
    # constant_liar: concurrent trials see each other as pending, so they are not proposed twice.
    options: Dict[str, Any] = dict(seed=search.seed, multivariate=True, group=True, constant_liar=True,
                                   constraints_func=constraints_of if _constrained(objective) else None)
    prior = Prior(params)
    sampler: optuna.samplers.TPESampler
    if milestones is None:
        sampler = (PriorTPESampler if prior else optuna.samplers.TPESampler)(n_startup_trials=startup, **options)
    else:
        points = _rung_points(search, params)
        multi = objective is not None and objective.multi
        rung_wise = ((PriorRungMOTPESampler if multi else PriorRungTPESampler) if prior
                     else RungMOTPESampler if multi else RungTPESampler)
        sampler = rung_wise(milestones, points, n_startup_trials=points, **options)
    if isinstance(sampler, (PriorTPESampler, PriorRungTPESampler, PriorRungMOTPESampler)):
        sampler.install_prior(prior, search.seed)  # the search's prior (config/prior.py): πBO's weighting
    return sampler


def _gp(search: SearchConfig, params: Sequence[Param], milestones: Milestones,
        objective: Optional[ObjectiveConfig]) -> optuna.samplers.BaseSampler:
    constraints = constraints_of if _constrained(objective) else None
    sampler: optuna.samplers.GPSampler
    if milestones is None:
        sampler = CandidateGPSampler(seed=search.seed, n_startup_trials=_startup(search),
                                     constraints_func=constraints, warn_independent_sampling=False)
    else:
        multi = objective is not None and objective.multi
        sampler = RungGPSampler(milestones, _rung_points(search, params), multi, seed=search.seed,
                                constraints_func=constraints)
    return sampler


def _constrained(objective: Optional[ObjectiveConfig]) -> bool:
    return objective is not None and bool(objective.constraints)


NSGA2_MAX_POPULATION = 50
"""Optuna's default population; a sweep of fewer trials gets a quarter of its budget (at least 4), so it sees a few
generations instead of one random one."""


def _nsga2(search: SearchConfig, params: Sequence[Param], milestones: Milestones,
           objective: Optional[ObjectiveConfig]) -> optuna.samplers.BaseSampler:
    population = max(4, min(NSGA2_MAX_POPULATION, (search.num_trials or 0) // 4))
    return optuna.samplers.NSGAIISampler(population_size=population, seed=search.seed,
                                         constraints_func=constraints_of if _constrained(objective) else None)


_FACTORIES: Dict[Sampler, Callable[[SearchConfig, Sequence[Param], Milestones, Optional[ObjectiveConfig]],
                                   optuna.samplers.BaseSampler]] = {
    Sampler.grid: _grid,
    Sampler.random: _random,
    Sampler.tpe: _tpe,
    Sampler.gp: _gp,
    Sampler.nsga2: _nsga2,
}
