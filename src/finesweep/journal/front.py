"""The Pareto front of a multi-objective sweep, read from its trials' records.

A trial stands for one point: every objective's value at its best epoch (by the primary objective), the
checkpoint it keeps. A trial is feasible when those values meet ``objective.constraints``. The front is the
feasible trials no other feasible trial dominates (``search/pareto.py``); it is what model selection re-trains
and chooses from, what the checkpoint keeper keeps, and what the report and the parent run show.
"""

from __future__ import annotations

import math
from typing import List, Sequence, Tuple

from finesweep.config import Mode, ObjectiveConfig
from finesweep.journal.records import TrialRecord, ranked
from finesweep.search import pareto


def gains(values: Sequence[float], modes: Sequence[Mode]) -> Tuple[float, ...]:
    """Values as gains (larger is better in every coordinate): minimised objectives negated, NaN stays NaN."""
    return tuple(v if mode is Mode.max else -v for v, mode in zip(values, modes, strict=True))


def point(record: TrialRecord, objective: ObjectiveConfig) -> Tuple[float, ...]:
    """The trial's objective values at its best epoch, as gains."""
    return gains(record.values(objective.metrics), [mode for _, mode in objective.terms])


def feasible(record: TrialRecord, objective: ObjectiveConfig) -> bool:
    """Whether the trial's best epoch meets every constraint (a constrained metric it never reported does not)."""
    if not objective.constraints:
        return True
    return pareto.violation(record.at_best, objective.bounds) <= 0


def pareto_front(records: Sequence[TrialRecord], objective: ObjectiveConfig) -> List[TrialRecord]:
    """The feasible, non-dominated trials that can win (``ranked``: never a failed one), best primary value first.

    With one objective the front is the best trial (ties included), so a single-objective sweep with constraints
    selects the best feasible trial.
    """
    contenders = [r for r in ranked(records, objective.mode)
                  if feasible(r, objective) and not any(math.isnan(v) for v in point(r, objective))]
    if not contenders:
        return []
    first = set(pareto.fronts([point(r, objective) for r in contenders])[0])
    return [r for index, r in enumerate(contenders) if index in first]


def front_numbers(records: Sequence[TrialRecord], objective: ObjectiveConfig) -> set[int]:
    """The trial numbers on the front."""
    return {r.number for r in pareto_front(records, objective)}
