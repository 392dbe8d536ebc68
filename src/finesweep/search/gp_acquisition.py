"""Where the GP sampler looks for its next point: expected improvement scored on candidates, without local searches.

Optuna's GPSampler maximises its acquisition function (log expected improvement) by scoring 2,048 random points and
running 10 gradient and line searches from the best of them and the best trial. With a GP fitted on a few dozen
trials that is most of a proposal's cost: half a second on 2 cores, three quarters of a finesweep search on LCBench's
surrogate, where a trial costs nothing. ``CandidateGPSampler`` scores candidates instead, in two batched evaluations:

1. ``RANDOM`` points drawn over the whole space (as Optuna draws its first ones);
2. ``ROUNDS`` times, ``LOCAL`` points around each of the ``SEEDS`` best candidates so far and around the best trial:
   Gaussian steps in the normalised space (a third of them each at ``STEPS``), numeric steps and integers snapped to
   their grid, and a categorical key moved to another choice with probability ``RECHOICE``.

The best candidate is the proposal, at a tenth of the cost of Optuna's optimiser (about 50 ms with the GP's fit), and
on LCBench the same final regret (benchmarks/search_efficiency.py, README). Everything is drawn from the sampler's
seeded random state, so a proposal is still a function of the seed and the study.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import numpy as np
import optuna

if TYPE_CHECKING:  # Optuna's GP internals: only their types are named here (adapters/optuna_private.py)
    from optuna._gp.acqf import BaseAcquisitionFunc
    from optuna._gp.search_space import SearchSpace

RANDOM = 2048
"""Random candidates over the whole space (as many as Optuna scores first)."""
LOCAL = 128
"""Candidates around each local centre: the ``SEEDS`` best candidates so far and the best trial."""
SEEDS = 8
"""How many of the best candidates so far get candidates around them, each round."""
ROUNDS = 2
"""Rounds of local candidates: the second is centred on the best of the first."""
STEPS = (0.01, 0.05, 0.15)
"""Standard deviations of the Gaussian steps in the normalised space (each unit wide)."""
RECHOICE = 0.2
"""Chance that a local candidate takes another value of a categorical key."""


class CandidateGPSampler(optuna.samplers.GPSampler):
    """Optuna's ``GPSampler`` whose acquisition is maximised over scored candidates (see the module's docstring)."""

    def _optimize_acqf(self, acqf: BaseAcquisitionFunc, best_params: Optional[np.ndarray]) -> np.ndarray:
        rng: np.random.RandomState = self._rng.rng
        space = acqf.search_space
        candidates = space.sample_normalized_params(RANDOM, rng)
        values = acqf.eval_acqf_no_grad(candidates)
        for _ in range(ROUNDS):
            centres = candidates[np.argsort(-values)[:SEEDS]]
            if best_params is not None:
                centres = np.vstack([centres, best_params])
            near = around(space, centres, rng)
            candidates, values = np.vstack([candidates, near]), np.concatenate([values, acqf.eval_acqf_no_grad(near)])
        return np.asarray(candidates[int(np.argmax(values))])


def around(space: SearchSpace, centres: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
    """``LOCAL`` candidates near each centre (rows of normalised parameters), on the space's grid."""
    points = np.repeat(centres, LOCAL, axis=0)
    scale = np.resize(np.repeat(np.array(STEPS), -(-LOCAL // len(STEPS))), LOCAL)
    steps = rng.normal(size=points.shape) * np.tile(scale, len(centres))[:, None]
    numeric = ~np.asarray(space.is_categorical, dtype=bool)
    points[:, numeric] = np.clip(points[:, numeric] + steps[:, numeric], 0.0, 1.0)
    for index, choices in zip(space.discrete_indices, space.get_choices_of_discrete_params(), strict=True):
        if space.is_categorical[index]:
            moved = rng.uniform(size=len(points)) < RECHOICE
            points[moved, index] = rng.randint(len(choices), size=int(moved.sum()))
        else:
            nearest = np.abs(points[:, index][:, None] - np.asarray(choices)[None, :]).argmin(axis=1)
            points[:, index] = np.asarray(choices)[nearest]
    return points
