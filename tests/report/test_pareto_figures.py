"""The multi-objective figures: the Pareto front scatter and the hypervolume over time, checked against a
brute-force front and an inclusion-exclusion hypervolume computed here."""

from __future__ import annotations

import itertools
from types import SimpleNamespace
from typing import Any, Dict, List, Optional, Sequence, Tuple

import optuna
import pytest

from finesweep.config import Bound, ExperimentConfig, Mode, ObjectiveConfig, ObjectiveTerm
from finesweep.journal.records import TrialRecord, TrialStatus
from finesweep.report.facts import SweepFacts, TrialFacts
from finesweep.report.figures import every_figure, hypervolume_over_time, pareto_front

ACC, LATENCY, MEMORY = "val/accuracy", "inference/latency_ms", "inference/memory_mb"
MAX_LATENCY = 8.0


def record(number: int, accuracy: float, latency: float, status: TrialStatus = TrialStatus.completed,
           phase: str = "search") -> TrialRecord:
    """A trial whose first epoch is cheap and poor and whose second (its best) is the point it stands for."""
    made = TrialRecord(f"t{number}", number, {"optim.lr": 10.0 ** -(number + 1)}, status, phase=phase)
    made.add_result({"epoch": 1, ACC: accuracy - 0.3, LATENCY: 1.0, MEMORY: 100.0}, ACC, Mode.max)
    made.add_result({"epoch": 2, ACC: accuracy, LATENCY: latency, MEMORY: 100.0 + number}, ACC, Mode.max)
    return made


def objective(*extra: str, constrained: bool = True) -> ObjectiveConfig:
    also = [ObjectiveTerm(LATENCY, Mode.min), *(ObjectiveTerm(m, Mode.min) for m in extra)]
    return ObjectiveConfig(ACC, Mode.max, also, {LATENCY: Bound(max=MAX_LATENCY)} if constrained else {})


def sweep(records: Sequence[TrialRecord], goal: ObjectiveConfig, ends: Optional[Sequence[float]] = None,
          baseline: Optional[Dict[str, float]] = None, selection: Any = None) -> SweepFacts:
    config = ExperimentConfig()
    config.objective = goal
    ends = ends if ends is not None else [float(r.number + 1) for r in records]
    trials = [TrialFacts(r, [(0.0, end)]) for r, end in zip(records, ends, strict=True)]
    return SweepFacts(None, config, [], trials, selection, "", None, baseline or {})


# (accuracy, latency ms): trials 2 and 9 are the most accurate but too slow (infeasible: 9 would add volume,
# 2 is the slowest and would not); 3, 5 and 8 are dominated;
# 6 failed and never competes; 7 is still running (scored, not yet ended); 8 was stopped early.
POINTS = {0: (0.80, 5.0), 1: (0.85, 7.0), 2: (0.90, 12.0), 3: (0.78, 6.0), 4: (0.70, 3.0), 5: (0.85, 7.5),
          6: (0.95, 1.0), 7: (0.60, 2.5), 8: (0.79, 6.5), 9: (0.88, 9.0)}
STATUS = {6: TrialStatus.failed, 7: TrialStatus.running, 8: TrialStatus.early_stopped}
ENDS = {0: 3.0, 1: 9.0, 2: 1.0, 3: 4.0, 4: 7.0, 5: 2.0, 6: 5.0, 7: 99.0, 8: 6.0, 9: 8.0}
"""When each trial ended: not in number order, so the hypervolume's order is the order trials ended."""


def trials() -> List[TrialRecord]:
    return [record(n, a, lat, STATUS.get(n, TrialStatus.completed)) for n, (a, lat) in POINTS.items()]


def scored_points() -> Dict[int, Tuple[float, float]]:
    """What competes: every trial but the failed one, as gains (accuracy, -latency)."""
    return {n: (a, -lat) for n, (a, lat) in POINTS.items() if STATUS.get(n) is not TrialStatus.failed}


def beats(a: Tuple[float, float], b: Tuple[float, float]) -> bool:
    return all(x >= y for x, y in zip(a, b, strict=True)) and any(x > y for x, y in zip(a, b, strict=True))


def brute_front(points: Dict[int, Tuple[float, float]]) -> set[int]:
    feasible = {n: p for n, p in points.items() if -p[1] <= MAX_LATENCY}
    return {n for n, p in feasible.items() if not any(beats(q, p) for q in feasible.values())}


def union_area(corners: List[Tuple[float, float]]) -> float:
    """The area of the union of the boxes [0, x] x [0, y], by inclusion-exclusion over every subset."""
    total = 0.0
    for size in range(1, len(corners) + 1):
        for subset in itertools.combinations(corners, size):
            total += (-1) ** (size + 1) * min(c[0] for c in subset) * min(c[1] for c in subset)
    return total


def traces(figure: Any) -> Dict[str, Any]:
    return {trace.name: trace for trace in figure.data}


def numbers(trace: Any) -> set[int]:
    return {int(text.split(":")[0].removeprefix("trial ")) for text in trace.text}


def test_the_front_trace_holds_exactly_the_feasible_trials_no_feasible_trial_dominates() -> None:
    drawn = pareto_front(sweep(trials(), objective(), [ENDS[n] for n in POINTS]))
    assert drawn.figure is not None
    shown = traces(drawn.figure)
    expected = brute_front(scored_points())
    assert expected == {0, 1, 4, 7}, "the brute force itself, by hand"
    assert numbers(shown["Pareto front"]) == expected
    assert numbers(shown["dominated"]) == {3, 5, 8}
    assert numbers(shown["infeasible"]) == {2, 9}, "too slow: grey, whatever its accuracy"
    assert shown["infeasible"].marker.color == "#ced4da"
    assert 6 not in numbers(shown["Pareto front"]) | numbers(shown["dominated"]) | numbers(shown["infeasible"])
    line = shown["front line"]
    assert list(line.x) == [2.5, 3.0, 5.0, 7.0] and list(line.y) == pytest.approx([0.60, 0.70, 0.80, 0.85])
    assert line.line.shape == "hv", "cheaper to the left: each step holds its accuracy until the next cost"
    assert "optim.lr=0.01" in shown["Pareto front"].text[list(shown["Pareto front"].x).index(7.0)]


def test_the_points_are_each_trials_best_epoch_and_the_latency_bound_is_a_dashed_line() -> None:
    drawn = pareto_front(sweep(trials(), objective()))
    assert drawn.figure is not None
    front = traces(drawn.figure)["Pareto front"]
    assert sorted(zip(front.x, front.y, strict=True)) == sorted((POINTS[n][1], POINTS[n][0]) for n in (0, 1, 4, 7))
    (bound,) = drawn.figure.layout.shapes
    assert (bound.x0, bound.x1, bound.line.dash) == (MAX_LATENCY, MAX_LATENCY, "dash"), "a vertical line at x=8"
    assert "grey ones (2) break a constraint (inference/latency_ms <= 8;" in drawn.caption


@pytest.mark.parametrize("kind", ["own_run", "recipe_trial", "none"])
def test_the_baseline_is_a_star_when_a_baseline_run_exists(kind: str) -> None:
    records = trials()
    selection, baseline = None, None
    if kind == "own_run":
        records.append(record(20, 0.79, 6.5, phase="baseline"))
    elif kind == "recipe_trial":  # the recipe's search trial ran its full budget: it stood in for the baseline
        selection, baseline = SimpleNamespace(recipe=dict(records[0].params)), {f"baseline/{ACC}": 0.80}
    drawn = pareto_front(sweep(records, objective(), baseline=baseline, selection=selection))
    assert drawn.figure is not None
    shown = traces(drawn.figure)
    if kind == "none":
        assert "baseline" not in shown and "no baseline run" in drawn.caption
        return
    star = shown["baseline"]
    assert star.marker.symbol == "star"
    assert (list(star.x), list(star.y)) == (([6.5], [0.79]) if kind == "own_run" else ([5.0], [0.80]))
    if kind == "own_run":
        assert "1 of the 4 front trials dominate it" in drawn.caption, "trial 0 (0.80 at 5 ms) beats 0.79 at 6.5 ms"
    assert numbers(shown["Pareto front"]) == {0, 1, 4, 7}, "the baseline never joins the front"


def test_the_hypervolume_grows_as_trials_end_and_ends_at_the_normalised_area_of_the_feasible_front() -> None:
    drawn = hypervolume_over_time(sweep(trials(), objective(), [ENDS[n] for n in POINTS]))
    assert drawn.figure is not None
    (series,) = drawn.figure.data
    ended = [n for n in sorted(ENDS, key=ENDS.__getitem__) if STATUS.get(n) not in (TrialStatus.failed,
                                                                                    TrialStatus.running)]
    assert [t.removeprefix("trial ") for t in series.text] == [str(n) for n in ended]
    volumes = list(series.y)
    assert all(b >= a for a, b in itertools.pairwise(volumes)) and 0.0 <= volumes[0] and volumes[-1] <= 1.0
    points = scored_points()  # the running trial 7 sets the scale but has not ended: it adds no volume
    lows = [min(p[i] for p in points.values()) for i in (0, 1)]
    spans = [max(p[i] for p in points.values()) - lows[i] for i in (0, 1)]
    corners = [((points[n][0] - lows[0]) / spans[0], (points[n][1] - lows[1]) / spans[1]) for n in ended
               if POINTS[n][1] <= MAX_LATENCY]
    assert volumes[-1] == pytest.approx(union_area(corners))
    assert ended[:2] == [2, 5] and volumes[0] == 0.0 < volumes[1], "2 is infeasible and adds nothing; 5 does"


def test_the_hypervolume_of_three_trials_by_hand() -> None:
    # accuracy 0.9/0.7/0.8 -> 1, 0, 0.5; latency 10/2/4 -> 0, 1, 0.75: only the third adds, 0.5 * 0.75
    records = [record(0, 0.9, 10.0), record(1, 0.7, 2.0), record(2, 0.8, 4.0)]
    drawn = hypervolume_over_time(sweep(records, objective(constrained=False)))
    assert drawn.figure is not None
    assert list(drawn.figure.data[0].y) == pytest.approx([0.0, 0.0, 0.375])
    assert "min-max scaled" in drawn.caption and "reference point is their worst value" in drawn.caption


def test_too_few_trials_give_no_figure_and_say_why() -> None:
    alone = sweep([record(0, 0.8, 5.0)], objective())
    assert hypervolume_over_time(alone).figure is None
    assert "at least 2" in hypervolume_over_time(alone).caption
    empty = pareto_front(sweep([], objective()))
    assert empty.figure is None and "No search trial reported every objective" in empty.caption


def test_three_objectives_draw_the_first_two_and_say_so() -> None:
    drawn = pareto_front(sweep(trials(), objective(MEMORY)))
    assert drawn.figure is not None
    assert "first two of 3 objectives" in drawn.caption
    assert "front line" not in traces(drawn.figure), "seen in two of three objectives, the front is no staircase"
    assert numbers(traces(drawn.figure)["Pareto front"]) >= {0, 1, 4, 7}, "memory can only add trials to the front"


@pytest.mark.parametrize("multi", [True, False], ids=["multi", "single"])
def test_only_a_multi_objective_sweep_gets_the_front_and_the_hypervolume(multi: bool) -> None:
    goal = objective() if multi else ObjectiveConfig(ACC, Mode.max)
    study = optuna.create_study(direction="maximize")
    names = [f.name for f in every_figure(sweep(trials(), goal), study)]
    assert ("pareto_front" in names and "hypervolume" in names) is multi
    assert ("pareto_front" in names or "hypervolume" in names) is multi
    if multi:
        assert names.index("pareto_front") == names.index("history") + 1
