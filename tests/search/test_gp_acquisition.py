"""The GP sampler's acquisition maximised over scored candidates: on the space's grid, near the maximum, seeded."""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna
from optuna._gp.search_space import SearchSpace
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from finesweep.search.gp_acquisition import LOCAL, CandidateGPSampler, around

SPACE = SearchSpace({"a": FloatDistribution(0.0, 1.0), "lr": FloatDistribution(1e-5, 1e-2, log=True),
                     "n": IntDistribution(1, 10), "c": CategoricalDistribution(["x", "y", "z"]),
                     "b": FloatDistribution(0.0, 1.0), "d": FloatDistribution(0.0, 1.0)})
PEAK = np.array([0.31, 0.62, 0.0, 2.0, 0.77, 0.18])  # n's and c's entries are set from the grid below


class Bump:
    """An acquisition function with one narrow peak (what ``_optimize_acqf`` is handed: ``search_space`` and
    ``eval_acqf_no_grad``), counting how many points it scored."""

    def __init__(self, peak: np.ndarray) -> None:
        self.search_space, self.peak, self.scored = SPACE, peak, 0

    def eval_acqf_no_grad(self, x: np.ndarray) -> np.ndarray:
        self.scored += len(x)
        return -np.sum((x - self.peak) ** 2 / 0.003, axis=1)


def peak() -> np.ndarray:
    grid = dict(zip(SPACE.discrete_indices, SPACE.get_choices_of_discrete_params(), strict=True))
    point = PEAK.copy()
    point[2] = grid[2][4]  # n = 5
    return point


def test_local_candidates_stay_on_the_spaces_grid() -> None:
    middle = np.full(6, 0.5)
    middle[3] = 1.0  # choice "y"
    points = around(SPACE, np.vstack([peak(), middle]), np.random.RandomState(0))
    assert points.shape == (2 * LOCAL, 6)
    numeric = [0, 1, 4, 5]
    assert ((points[:, numeric] >= 0) & (points[:, numeric] <= 1)).all()
    grid = dict(zip(SPACE.discrete_indices, SPACE.get_choices_of_discrete_params(), strict=True))
    assert np.isin(points[:, 2], grid[2]).all(), "integers snapped to their grid"
    assert set(points[:, 3]) <= {0.0, 1.0, 2.0}, "categorical keys are choice indices"
    assert 0.05 < np.mean(points[:LOCAL, 3] != 2.0) < 0.4, "a categorical key moves to another choice now and then"
    values = SPACE.get_unnormalized_param(points[0])
    assert values["c"] in ("x", "y", "z") and 1 <= values["n"] <= 10


def test_the_proposal_is_near_a_narrow_peak_random_points_alone_miss() -> None:
    target = peak()
    found, random_best = [], []
    for seed in range(5):
        sampler = CandidateGPSampler(seed=seed)
        acqf: Any = Bump(target)
        found.append(np.abs(sampler._optimize_acqf(acqf, None) - target).max())
        drawn = SPACE.sample_normalized_params(acqf.scored, np.random.RandomState(seed))
        random_best.append(np.abs(drawn[np.argmax(Bump(target).eval_acqf_no_grad(drawn))] - target).max())
    assert np.median(found) < 0.05 < np.median(random_best)


def test_the_best_trial_is_a_centre_too() -> None:
    target = peak()
    acqf: Any = Bump(target)
    best = target.copy()
    best[0] += 0.02
    chosen = CandidateGPSampler(seed=0)._optimize_acqf(acqf, best[None, :])
    assert np.abs(chosen - target).max() < 0.03


def test_a_study_proposes_the_same_point_for_the_same_seed() -> None:
    def propose(seed: int) -> float:
        study = optuna.create_study(sampler=CandidateGPSampler(seed=seed, n_startup_trials=4))
        study.optimize(lambda t: (t.suggest_float("x", 0, 1) - 0.3) ** 2, n_trials=8)
        return float(study.trials[-1].params["x"])

    assert propose(3) == propose(3) != propose(4)
