"""Pareto helpers, checked against independent references: brute force, Optuna's non-dominated sort and
hypervolume, Syne Tune's epsilon-net, a unit-cell count, and fronts worked out by hand."""

from __future__ import annotations

import itertools
import math
import time
from typing import List, Sequence, Tuple

import numpy as np
import pytest
from optuna._hypervolume import compute_hypervolume
from optuna.study._multi_objective import _fast_non_domination_rank
from syne_tune.optimizer.schedulers.multiobjective.non_dominated_priority import (
    compute_epsilon_net,
    pareto_efficient,
)

from finesweep.search.pareto import (
    constrained_order,
    dominates,
    epsilon_net_order,
    fronts,
    hypervolume,
    knee,
    order,
    violation,
)

NAN, INF = math.nan, math.inf


def random_points(seed: int, dims: int, count: int, nan: bool = False) -> List[List[float]]:
    """Points on a coarse grid (duplicates and ties are common), some coordinates NaN when asked."""
    rng = np.random.default_rng(seed)
    points = rng.integers(0, 5, size=(count, dims)).astype(float) / 4
    if nan:
        points[rng.random(points.shape) < 0.1] = NAN
    found: List[List[float]] = points.tolist()
    return found


def gains_of(values: Sequence[Sequence[float]], modes: Sequence[str]) -> List[List[float]]:
    """Raw metric values -> gains: a minimised metric is negated."""
    return [[v if m == "max" else -v for v, m in zip(row, modes, strict=True)] for row in values]


def brute_fronts(points: Sequence[Sequence[float]]) -> List[List[int]]:
    """Fronts by the definition, NaN as -inf: peel off the points no remaining point dominates."""
    clean = [[-INF if math.isnan(x) else x for x in p] for p in points]

    def beats(a: Sequence[float], b: Sequence[float]) -> bool:
        return all(x >= y for x, y in zip(a, b, strict=True)) and any(x > y for x, y in zip(a, b, strict=True))

    left, found = list(range(len(points))), []
    while left:
        front = [i for i in left if not any(beats(clean[j], clean[i]) for j in left)]
        found.append(front)
        left = [i for i in left if i not in front]
    return found


def ranks_of(found: List[List[int]], count: int) -> List[int]:
    ranks = [0] * count
    for rank, front in enumerate(found):
        for i in front:
            ranks[i] = rank
    return ranks


def simplex(seed: int, dims: int, count: int) -> List[List[float]]:
    """Points with a constant sum: no point dominates another, so they form a single front."""
    rng = np.random.default_rng(seed)
    raw = rng.dirichlet(np.ones(dims), size=count)
    raw[:, -1] = 1 - raw[:, :-1].sum(axis=1)
    if count > 3:
        raw[rng.integers(count)] = raw[rng.integers(count)]  # a duplicate
    found: List[List[float]] = raw.tolist()
    return found


@pytest.mark.parametrize(("a", "b", "expected"), [
    ((1, 2), (1, 1), True), ((1, 1), (1, 1), False), ((2, 0), (0, 2), False), ((1, 1), (NAN, 1), True),
    ((NAN, 1), (NAN, 1), False), ((NAN, 1), (0, 1), False), ((-INF, 1), (NAN, 1), False),
], ids=["better-in-one", "equal", "trade-off", "nan-is-worst", "nan-equal", "nan-loses", "minus-inf-ties-nan"])
def test_dominates(a: Tuple[float, float], b: Tuple[float, float], expected: bool) -> None:
    assert dominates(a, b) is expected


@pytest.mark.parametrize("dims", [2, 3], ids=["2d", "3d"])
@pytest.mark.parametrize("seed", range(10))
def test_fronts_match_brute_force_with_nan_and_duplicates(dims: int, seed: int) -> None:
    points = random_points(seed, dims, 30, nan=True)
    assert fronts(points) == brute_fronts(points)


@pytest.mark.parametrize("modes", [("max", "max"), ("min", "max"), ("min", "min", "max"), ("max", "min", "min")],
                         ids=["max-max", "min-max", "min-min-max", "max-min-min"])
@pytest.mark.parametrize("seed", range(8))
def test_fronts_match_optunas_non_dominated_sort(modes: Tuple[str, ...], seed: int) -> None:
    values = random_points(seed, len(modes), 40)
    gains = gains_of(values, modes)
    losses = -np.array(gains)  # Optuna minimises
    expected = _fast_non_domination_rank(losses).tolist()
    assert ranks_of(fronts(gains), len(gains)) == expected


def test_empty_and_single_point() -> None:
    assert fronts([]) == [] and order([]) == []
    assert fronts([[NAN, NAN]]) == [[0]] and order([[1.0, 2.0]]) == [0]


def syne_tune_epsilon_net(gains: Sequence[Sequence[float]], members: Sequence[int]) -> List[int]:
    """Syne Tune's epsilon-net on the members (costs = -gains, dim=0); it returns each member's rank."""
    ranks = compute_epsilon_net(-np.array([gains[i] for i in members]), dim=0)
    return [members[k] for k in np.argsort(ranks)]


@pytest.mark.parametrize("dims", [2, 3], ids=["2d", "3d"])
@pytest.mark.parametrize("seed", range(12))
def test_epsilon_net_matches_syne_tune_on_random_fronts(dims: int, seed: int) -> None:
    points = simplex(seed, dims, 3 + seed * 2)
    assert fronts(points) == [list(range(len(points)))]
    assert epsilon_net_order(points, range(len(points))) == syne_tune_epsilon_net(points, range(len(points)))
    grid = random_points(seed, dims, 40)  # ties and duplicates inside each front
    for front in fronts(grid):
        assert epsilon_net_order(grid, front) == syne_tune_epsilon_net(grid, front)


def test_epsilon_net_by_hand() -> None:
    # Best first coordinate first: (3, 0); farthest from it: (0, 3); then (2, 2) (nearest chosen 2.24 away)
    # before (2.5, 0.4) (0.64 away); a member with NaN goes last.
    points: List[List[float]] = [[0, 3], [2.5, 0.4], [3, 0], [2, 2], [NAN, 9]]
    assert epsilon_net_order(points, [0, 1, 2, 3, 4]) == [2, 0, 3, 1, 4]
    assert epsilon_net_order(points, [3]) == [3]


@pytest.mark.parametrize("dims", [2, 3], ids=["2d", "3d"])
@pytest.mark.parametrize("seed", range(6))
def test_order_is_syne_tunes_fronts_each_in_its_epsilon_net(dims: int, seed: int) -> None:
    points = random_points(seed, dims, 30)
    costs = -np.array(points)
    expected, remaining = [], np.arange(len(points))
    while remaining.size:  # Syne Tune's nondominated_sort, each front in the order its epsilon-net ranks give
        mask = pareto_efficient(costs[remaining])
        expected += syne_tune_epsilon_net(points, remaining[mask].tolist())
        remaining = remaining[~mask]
    assert order(points) == expected


def test_constrained_order_by_hand() -> None:
    points: List[List[float]] = [[5, 5], [1, 1], [0, 2], [9, 9], [8, 8], [7, 7], [NAN, NAN]]
    violations = [0, 0, -1, 0.5, 0.2, 0.5, 0]
    # feasible: 0 (dominates), then the front {1, 2} by epsilon-net (1 has the better first gain), then 6 (NaN);
    # infeasible by violation: 4 (0.2), then {3, 5} at 0.5 in order: 3 dominates 5.
    assert constrained_order(points, violations) == [0, 1, 2, 6, 4, 3, 5]
    assert constrained_order([[1, 1], [2, 2]], [NAN, 1.0]) == [1, 0]
    with pytest.raises(ValueError, match="one violation, but got 2 points and 1 violations"):
        constrained_order([[1, 1], [2, 2]], [0.0])


@pytest.mark.parametrize("seed", range(8))
def test_constrained_order_agrees_with_optunas_constrained_ranks(seed: int) -> None:
    rng = np.random.default_rng(seed)
    points = random_points(seed, 2, 40)
    violations = np.where(rng.random(40) < 0.4, rng.integers(1, 4, 40) / 2, -rng.random(40))
    ranks = _fast_non_domination_rank(-np.array(points), penalty=violations)
    ranked = constrained_order(points, violations.tolist())
    assert sorted(ranked) == list(range(40))
    assert list(ranks[ranked]) == sorted(ranks), "Optuna's constrained rank never falls along our order"


def test_constrained_order_without_violations_is_order() -> None:
    points = random_points(3, 3, 25)
    assert constrained_order(points, [0.0] * 25) == order(points)


@pytest.mark.parametrize("dims", [2, 3, 4], ids=["2d", "3d", "4d"])
@pytest.mark.parametrize("seed", range(6))
def test_hypervolume_matches_optuna(dims: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    points = (rng.random((30 if dims < 4 else 15, dims)) * 2 - 0.5).round(1)  # some below the reference
    points[0] = points[1]  # a duplicate
    reference = np.zeros(dims)
    # Optuna minimises and needs every point inside the box: a clipped point adds no volume, as ours ignores it.
    expected = compute_hypervolume(np.minimum(-points, -reference), -reference)
    assert hypervolume(points.tolist(), reference.tolist()) == pytest.approx(expected, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_hypervolume_2d_counts_unit_cells(seed: int) -> None:
    rng = np.random.default_rng(seed)
    points = rng.integers(-2, 9, size=(12, 2)).tolist()
    # A unit cell [i, i+1] x [j, j+1] above the reference (0, 0) is covered iff a point dominates its top corner.
    cells = sum(1 for i, j in itertools.product(range(9), range(9))
                if any(x >= i + 1 and y >= j + 1 for x, y in points))
    assert hypervolume(points, [0, 0]) == cells


def test_hypervolume_ignores_nan_and_points_not_above_the_reference() -> None:
    assert hypervolume([[2, 3], [NAN, 9], [5, 0], [-1, 7]], [0, 0]) == 6.0
    assert hypervolume([[2, 3], [2, 3], [1, 1]], [0, 0]) == 6.0
    assert hypervolume([], [0, 0]) == 0.0
    assert hypervolume([[1, 2, 3]], [0, 0, 0]) == 6.0
    with pytest.raises(ValueError, match="no NaN"):
        hypervolume([[1, 1]], [NAN, 0])


def test_hypervolume_of_a_large_3d_front_is_quick() -> None:
    rng = np.random.default_rng(0)
    sphere = np.abs(rng.normal(size=(300, 3)))
    sphere /= np.linalg.norm(sphere, axis=1, keepdims=True)  # every point on the front: the hardest case
    start = time.perf_counter()
    ours = hypervolume(sphere.tolist(), [0, 0, 0])
    assert time.perf_counter() - start < 5
    assert ours == pytest.approx(compute_hypervolume(-sphere, np.zeros(3)), rel=1e-12)


def test_knee_by_hand() -> None:
    # Normalised over the front, (0.9, 0.9) is 0.1 from the ideal (1, 1); the extremes are 1 away. The dominated
    # (0.5, 0.5) and the NaN point are not candidates.
    assert knee([[0, 1], [0.5, 0.5], [0.9, 0.9], [1, 0], [NAN, 2]]) == 2
    # Scales differ: accuracy in [0.7, 0.9], latency gain in [-100, -10]; (0.88, -40) is nearest the ideal.
    assert knee([[0.9, -100], [0.7, -10], [0.88, -40], [0.8, -20]]) == 2
    assert knee([[3, 4]]) == 0
    assert knee([[1, 5], [1, 5]]) == 0, "equal points: the first"
    assert knee([[NAN, 1], [1, NAN]]) == 0, "no finite member: the first of the front"
    with pytest.raises(ValueError, match="at least one point"):
        knee([])


@pytest.mark.parametrize(("values", "expected"), [
    ({"mem": 8.0, "ppl": 0.02}, 0.0),
    ({"mem": 12.0, "ppl": 0.02}, 2.0),
    ({"mem": 12.0, "ppl": -0.5}, 2.0 + 0.4),
    ({"mem": 8.0}, INF),
    ({"mem": 8.0, "ppl": NAN}, INF),
], ids=["feasible", "over-high", "both", "missing", "nan"])
def test_violation_by_hand(values: dict[str, float], expected: float) -> None:
    constraints = {"mem": (None, 10.0), "ppl": (-0.1, 0.05)}
    assert violation(values, constraints) == pytest.approx(expected)
    assert violation(values, {}) == 0.0
