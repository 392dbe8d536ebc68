"""``search.sampler: auto``, settled once when the sweep is composed: a Gaussian process where it serves, else TPE.

On LCBench (``benchmarks/search_efficiency.py``) a GP fitted one ASHA rung at a time reached a final regret several
times lower than rung-wise TPE, as Syne Tune's Hyper-Tune does with its GP. It needs one fixed space of numbers and
choices and one score per trial; TPE serves the rest:

- a prior (``search.prior`` or a key's ``prior:``): πBO's weighting is built on TPE (``search/prior.py``);
- several objectives or constraints: MOTPE and its feasibility handling, measured with MO-ASHA;
- conditional keys (``when:``): a key that only some trials have is outside a GP's one space.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

from finesweep.config.choices import Sampler
from finesweep.config.schema import ExperimentConfig, ObjectiveConfig, SearchConfig
from finesweep.config.space import Param


def chosen_sampler(search: SearchConfig, params: Sequence[Param], objective: Optional[ObjectiveConfig]) -> Sampler:
    """The sampler ``auto`` stands for in this search (any other choice is kept); no objective = one, unconstrained."""
    if search.sampler is not Sampler.auto:
        return search.sampler
    several = objective is not None and (objective.multi or bool(objective.constraints))
    return Sampler.tpe if several or any(p.prior is not None or p.when for p in params) else Sampler.gp


def settled(config: ExperimentConfig, params: Sequence[Param]) -> ExperimentConfig:
    """``config`` with ``search.sampler: auto`` replaced by the sampler it stands for."""
    sampler = chosen_sampler(config.search, params, config.objective)
    if sampler is config.search.sampler:
        return config
    return dataclasses.replace(config, search=dataclasses.replace(config.search, sampler=sampler))
