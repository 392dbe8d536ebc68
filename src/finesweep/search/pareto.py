"""Ranking trials by several objectives: dominance, non-dominated fronts, Syne Tune's epsilon-net tie-break,
Deb's rule for constraints, the exact hypervolume and the knee of a front.

Every point is a sequence of *gains*: larger is better in every coordinate (a caller negates a minimised
objective). A NaN coordinate is the worst value there is: it compares as ``-inf``, so a trial whose metric was
never measured, or diverged, is dominated by any trial that equals it elsewhere. Equal points (duplicates)
never dominate each other: they share a front, and inside it the earlier one goes first.
"""

from __future__ import annotations

import math
from typing import List, Mapping, Optional, Sequence, Tuple

import numpy as np

Point = Sequence[float]
Bounds = Tuple[Optional[float], Optional[float]]
"""A constraint on one metric: (low, high), either None for no bound on that side."""


def _gains(points: Sequence[Point]) -> np.ndarray:
    """The points as an (n, d) float array with NaN turned into ``-inf`` (the worst gain)."""
    if len(points) == 0:
        return np.zeros((0, 0))
    widths = {len(p) for p in points}
    if len(widths) != 1:
        raise ValueError(f"Every point needs the same number of coordinates, but got lengths {sorted(widths)}.")
    array = np.array(points, dtype=float).reshape(len(points), widths.pop())
    return np.where(np.isnan(array), -np.inf, array)


def dominates(a: Point, b: Point) -> bool:
    """Whether ``a`` is at least as good as ``b`` in every coordinate and better in one (NaN is the worst)."""
    pair = _gains([a, b])
    return bool(np.all(pair[0] >= pair[1]) and np.any(pair[0] > pair[1]))


def fronts(points: Sequence[Point]) -> List[List[int]]:
    """Non-dominated sorting: the indices of front 0 (dominated by no point), then of front 1 (dominated only by
    front 0), and so on; each front in ascending index order."""
    gains = _gains(points)
    if len(gains) == 0:
        return []
    at_least = np.all(gains[:, None, :] >= gains[None, :, :], axis=-1)
    better = np.any(gains[:, None, :] > gains[None, :, :], axis=-1)
    beats = at_least & better  # beats[i, j]: point i dominates point j
    beaten_by = beats.sum(axis=0)
    left = np.ones(len(gains), dtype=bool)
    found: List[List[int]] = []
    while left.any():
        front = np.flatnonzero(left & (beaten_by == 0))
        found.append([int(i) for i in front])
        left[front] = False
        beaten_by = beaten_by - beats[front].sum(axis=0)
    return found


def epsilon_net_order(points: Sequence[Point], indices: Sequence[int]) -> List[int]:
    """Order the members of one front so that they spread out (an epsilon-net), as Syne Tune's MO-ASHA does.

    The first is the best in the first coordinate (the primary objective); each next one is the member farthest
    (Euclidean distance on the raw gains, no normalisation) from the nearest already chosen. Ties go to the
    member earlier in ``indices``. This is ``compute_epsilon_net(X, dim=0)`` of Syne Tune's
    ``multiobjective/non_dominated_priority.py`` on costs ``X = -gains``. A member with a NaN or infinite
    coordinate has no distance to speak of: such members come last, in the order given.
    """
    gains = _gains(points)
    members = [int(i) for i in indices]
    finite = [i for i in members if np.all(np.isfinite(gains[i]))]
    rest = [i for i in members if not np.all(np.isfinite(gains[i]))]
    return _farthest_first(gains, finite) + rest


def _farthest_first(gains: np.ndarray, members: List[int]) -> List[int]:
    if len(members) <= 1:
        return list(members)
    spread = gains[members]
    chosen = [int(np.argmax(spread[:, 0]))]  # np.argmax keeps the first of equal maxima, as Syne Tune's argmin
    left = [k for k in range(len(members)) if k != chosen[0]]
    nearest = np.linalg.norm(spread[left] - spread[chosen[0]], axis=-1)
    while left:
        pick = int(np.argmax(nearest))
        chosen.append(left.pop(pick))
        nearest = np.delete(nearest, pick)
        if left:  # the distance to the nearest chosen member, kept up to date as members are chosen
            nearest = np.minimum(nearest, np.linalg.norm(spread[left] - spread[chosen[-1]], axis=-1))
    return [members[k] for k in chosen]


def order(points: Sequence[Point]) -> List[int]:
    """All indices, best first: front by front, each front in ``epsilon_net_order`` (Syne Tune's
    ``nondominated_sort`` with ``dim=0``)."""
    return [i for front in fronts(points) for i in epsilon_net_order(points, front)]


def constrained_order(points: Sequence[Point], violations: Sequence[float]) -> List[int]:
    """All indices, best first, by Deb's rule: the feasible points (violation <= 0) in ``order``, then the
    infeasible ones by smaller total violation, equal violations in ``order`` among themselves.

    A NaN violation counts as infinite (nothing is known to hold).
    """
    if len(violations) != len(points):
        raise ValueError(f"Every point needs one violation, but got {len(points)} points and "
                         f"{len(violations)} violations.")
    amounts = [math.inf if math.isnan(v) else float(v) for v in violations]
    feasible = [i for i, v in enumerate(amounts) if v <= 0]
    groups = sorted({v for v in amounts if v > 0})
    ranked = _order_among(points, feasible)
    for amount in groups:
        ranked += _order_among(points, [i for i, v in enumerate(amounts) if v == amount])
    return ranked


def _order_among(points: Sequence[Point], subset: List[int]) -> List[int]:
    return [subset[k] for k in order([points[i] for i in subset])]


def hypervolume(points: Sequence[Point], reference: Point) -> float:
    """The volume dominated by the points and bounded below by ``reference``.

    A point that is not strictly better than the reference in every coordinate (NaN included) adds nothing.
    Exact: a sweep in 2-D; in more dimensions the space is cut into slabs along the last coordinate, each slab
    the (d-1)-dimensional volume of the points above it (HSO), which is quick for a few hundred points in 3-D.
    """
    bound = np.array(reference, dtype=float)
    if bound.ndim != 1 or np.isnan(bound).any():
        raise ValueError(f"The reference needs one number per coordinate and no NaN, but got {list(reference)}.")
    gains = _gains(points)
    if len(gains) == 0:
        return 0.0
    if gains.shape[1] != len(bound):
        raise ValueError(f"The points have {gains.shape[1]} coordinates but the reference has {len(bound)}.")
    above = gains[np.all(gains > bound, axis=1)]
    if len(above) == 0:
        return 0.0
    return _volume(above[fronts(above.tolist())[0]], bound)


def _volume(points: np.ndarray, bound: np.ndarray) -> float:
    if points.shape[1] == 1:
        return float(points[:, 0].max() - bound[0])
    if points.shape[1] == 2:
        return _area(points, bound)
    by_last = points[np.argsort(-points[:, -1], kind="stable")]
    total = 0.0
    for i in range(len(by_last)):
        floor = by_last[i + 1, -1] if i + 1 < len(by_last) else bound[-1]
        if by_last[i, -1] > floor:  # the slab between this point's last coordinate and the next lower one
            total += float(by_last[i, -1] - floor) * _volume(by_last[: i + 1, :-1], bound[:-1])
    return total


def _area(points: np.ndarray, bound: np.ndarray) -> float:
    by_x = points[np.argsort(-points[:, 0], kind="stable")]
    total, top = 0.0, float(bound[1])
    for i in range(len(by_x)):
        top = max(top, float(by_x[i, 1]))  # the highest y among the points at or right of this x
        left = by_x[i + 1, 0] if i + 1 < len(by_x) else bound[0]
        total += float(by_x[i, 0] - left) * (top - float(bound[1]))
    return total


def knee(points: Sequence[Point]) -> int:
    """The index (into ``points``) of the knee of the first front.

    The rule: min-max normalise each coordinate over the first front (a coordinate in which the front does not
    vary is 1 for all), and take the member closest (Euclidean) to the ideal point, all ones; the first such
    member on a tie. A member with a NaN or infinite coordinate is never the knee unless the whole front has
    one, and a front of one point is its own knee.
    """
    gains = _gains(points)
    if len(gains) == 0:
        raise ValueError("A knee needs at least one point, but got none.")
    front = fronts(points)[0]
    finite = [i for i in front if np.all(np.isfinite(gains[i]))]
    if not finite:
        return front[0]
    members = gains[finite]
    low, span = members.min(axis=0), np.ptp(members, axis=0)
    scaled = np.where(span > 0, (members - low) / np.where(span > 0, span, 1.0), 1.0)
    return finite[int(np.argmin(np.linalg.norm(1.0 - scaled, axis=1)))]


def violation(values: Mapping[str, float], constraints: Mapping[str, Bounds]) -> float:
    """How far the values are outside their constraints, summed over the constrained metrics (0 = feasible).

    A constraint is (low, high) with None for an open side; a metric the values lack, or hold as NaN, is
    infinitely infeasible: nothing says it holds.
    """
    total = 0.0
    for metric, (low, high) in constraints.items():
        value = values.get(metric)
        if value is None or math.isnan(value):
            return math.inf
        if low is not None and value < low:
            total += low - value
        if high is not None and value > high:
            total += value - high
    return total
