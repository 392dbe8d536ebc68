"""MO-ASHA's decisions: RecordingASHA's with one objective, Syne Tune's MOASHA rule with several, constraints by
Deb's rule, carried-forward metrics, infeasible trials stopped, and rungs that replay on resume.

Syne Tune's ``MOASHA`` (0.16.0) is driven directly on the same arrivals. Its ``nondominated_sort`` mixes up ranks
and orders twice (see moasha.py's docstring): the mix-ups cancel when a rung is a single front, where the stock
scheduler must agree with ours; elsewhere ours agrees with Syne Tune's bracket given the ranking its code means,
built from its own ``pareto_efficient`` and ``compute_epsilon_net``.
"""

from __future__ import annotations

import math
import pickle
import random
import re
from datetime import datetime
from types import SimpleNamespace
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pytest
from ray.tune.schedulers import TrialScheduler
from syne_tune.backend.trial_status import Trial as SyneTrial
from syne_tune.optimizer.schedulers.multiobjective.moasha import MOASHA
from syne_tune.optimizer.schedulers.multiobjective.multiobjective_priority import MOPriority
from syne_tune.optimizer.schedulers.multiobjective.non_dominated_priority import (
    compute_epsilon_net,
    pareto_efficient,
)

from finesweep.adapters import ray_private
from finesweep.errors import ConfigError
from finesweep.search.asha import RecordingASHA
from finesweep.search.moasha import Entry, InfeasibleStopper, ParetoASHA
from finesweep.search.searcher import MARKER

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP
Arrival = Tuple[int, Dict[str, float]]  # (finesweep trial number, the result it reports)
Objectives = List[Tuple[str, str]]


def tune_trial(number: int, attempt: int = 0) -> Any:
    suffix = f"-{attempt}" if attempt else ""
    return SimpleNamespace(trial_id=f"t{number}{suffix}", config={MARKER: {"number": number}})


def pareto(objectives: Objectives, **kwargs: Any) -> ParetoASHA:
    settings = {"time_attr": "epoch", "max_t": 9, "grace_period": 1, "reduction_factor": 3, **kwargs}
    scheduler = ParetoASHA(objectives, **settings)
    scheduler.set_search_properties(*objectives[0])
    return scheduler


def drive(arrivals: Sequence[Arrival], decide: Callable[[int, Dict[str, float]], str]) -> List[str]:
    """Feed the results in order to ``decide(trial number, result)``; a stopped trial's later results are skipped
    ("-"), as Tune would."""
    decisions: List[str] = []
    stopped = set()
    for number, result in arrivals:
        decisions.append("-" if number in stopped else decide(number, dict(result)))
        if decisions[-1] == STOP:
            stopped.add(number)
    return decisions


def run(scheduler: Any, arrivals: Sequence[Arrival]) -> List[str]:
    """finesweep's scheduler, through Ray's scheduler API."""
    trials: Dict[int, Any] = {}

    def decide(number: int, result: Dict[str, float]) -> str:
        if number not in trials:
            trials[number] = tune_trial(number)
            scheduler.on_trial_add(None, trials[number])
        return str(scheduler.on_trial_result(None, trials[number], result))

    return drive(arrivals, decide)


def run_syne_tune(scheduler: MOASHA, arrivals: Sequence[Arrival], objectives: Objectives) -> List[str]:
    """The same, for Syne Tune, which minimises every metric: a maximised one is negated."""
    trials: Dict[int, SyneTrial] = {}

    def decide(number: int, result: Dict[str, float]) -> str:
        if number not in trials:
            trials[number] = SyneTrial(trial_id=number, config={}, creation_time=datetime(2024, 1, 1))
            scheduler.on_trial_add(trials[number])
        costs = {m: -result[m] if mode == "max" else result[m] for m, mode in objectives}
        return str(scheduler.on_trial_result(trials[number], {"epoch": result["epoch"], **costs}))

    return drive(arrivals, decide)


class MeantRanking(MOPriority):  # type: ignore[misc]  # Syne Tune ships no types
    """Syne Tune's non-dominated sort as its code means it: fronts by ``pareto_efficient``, each front in the order
    ``compute_epsilon_net(dim=0)`` ranks it (argsort of its ranks), and the priority of each trial its position."""

    def priority_unsafe(self, objectives: np.ndarray) -> np.ndarray:
        ordered: List[int] = []
        remaining = np.arange(len(objectives))
        while remaining.size:
            mask = pareto_efficient(objectives[remaining])
            front = remaining[mask]
            ordered += front[np.argsort(compute_epsilon_net(objectives[front], dim=0))].tolist()
            remaining = remaining[~mask]
        priority = np.empty(len(ordered), dtype=int)
        priority[ordered] = np.arange(len(ordered))
        return priority


def syne_tune(objectives: Objectives, meant: bool = True, **kwargs: Any) -> MOASHA:
    settings = {"time_attr": "epoch", "max_t": 9, "grace_period": 1, "reduction_factor": 3, **kwargs}
    names = [m for m, _ in objectives]
    priority = MeantRanking(metrics=names) if meant else None
    return MOASHA(config_space={}, metrics=names, do_minimize=True, multiobjective_priority=priority, **settings)


def arrivals(seed: int, metrics: Sequence[str], trials: int = 16, count: int = 80, max_t: int = 9,
             grid: int = 4, missing: float = 0.0, draw: Optional[Any] = None) -> List[Arrival]:
    """Asynchronous results: any trial may report its next epoch; values on a grid (ties and duplicates are
    common); a non-primary metric absent with probability ``missing``."""
    rng = random.Random(seed)
    epochs: Dict[int, int] = {}
    found: List[Arrival] = []
    for _ in range(count):
        number = rng.randrange(trials)
        if epochs.get(number, 0) >= max_t:
            continue
        epochs[number] = epochs.get(number, 0) + 1
        values = draw(rng) if draw else [rng.randrange(grid + 1) / grid for _ in metrics]
        result = {"epoch": float(epochs[number]), **dict(zip(metrics, values, strict=True))}
        for metric in metrics[1:]:
            if rng.random() < missing:
                del result[metric]
        found.append((number, result))
    return found


# --- one objective: RecordingASHA, decision for decision ---------------------------------------------------------


@pytest.mark.parametrize("mode", ["max", "min"])
@pytest.mark.parametrize("factor", [2, 3, 4])
@pytest.mark.parametrize("seed", range(12))
def test_one_objective_decides_as_recording_asha(mode: str, factor: int, seed: int) -> None:
    draw = (lambda rng: [rng.randrange(6) / 5, rng.randrange(4) / 3]) if seed % 2 else None  # ties in both keys
    sequence = arrivals(seed, ["val/accuracy", "val/loss"], trials=20, count=120, grid=3, draw=draw)
    ours = pareto([("val/accuracy", mode)], reduction_factor=factor)
    theirs = RecordingASHA(time_attr="epoch", max_t=9, grace_period=1, reduction_factor=factor)
    theirs.set_search_properties("val/accuracy", mode)
    assert run(ours, sequence) == run(theirs, sequence)
    assert ours.stopped_early == theirs.stopped_early
    assert not ours.pareto and all(type(b).__name__ == "TieBreakingBracket" for b in ray_private.brackets(ours))


# --- several objectives: Syne Tune's MOASHA -------------------------------------------------------------------------

OBJECTIVE_SETS: Dict[str, Objectives] = {
    "max-min": [("acc", "max"), ("ppl", "min")],
    "min-min": [("loss", "min"), ("latency", "min")],
    "max-min-max": [("acc", "max"), ("ppl", "min"), ("f1", "max")],
    "min-max-min": [("loss", "min"), ("acc", "max"), ("mem", "min")],
}


@pytest.mark.parametrize("factor", [2, 3, 4])
@pytest.mark.parametrize("name", sorted(OBJECTIVE_SETS))
@pytest.mark.parametrize("seed", range(6))
def test_several_objectives_decide_as_syne_tunes_moasha_meant(name: str, factor: int, seed: int) -> None:
    objectives = OBJECTIVE_SETS[name]
    sequence = arrivals(seed, [m for m, _ in objectives], grid=3 if seed % 2 else 10)
    settings: Dict[str, Any] = {"reduction_factor": factor, "grace_period": 1 + seed % 2, "max_t": 9}
    ours = run(pareto(objectives, **settings), sequence)
    assert ours == run_syne_tune(syne_tune(objectives, **settings), sequence, objectives)
    assert STOP in ours and CONTINUE in ours


def on_a_plane(dims: int) -> Any:
    """Values whose gains sum to 1: no point dominates another, so every rung is a single front."""
    def draw(rng: random.Random) -> List[float]:
        cuts = sorted(rng.randrange(9) / 8 for _ in range(dims - 1))
        return [b - a for a, b in zip([0.0, *cuts], [*cuts, 1.0], strict=True)]
    return draw


@pytest.mark.parametrize("factor", [2, 3, 4])
@pytest.mark.parametrize("dims", [2, 3], ids=["2d", "3d"])
@pytest.mark.parametrize("seed", range(6))
def test_where_every_rung_is_one_front_stock_syne_tune_agrees(dims: int, factor: int, seed: int) -> None:
    objectives: Objectives = [("a", "max"), ("b", "max"), ("c", "max")][:dims]
    sequence = arrivals(seed, [m for m, _ in objectives], draw=on_a_plane(dims))
    ours = run(pareto(objectives, reduction_factor=factor), sequence)
    assert ours == run_syne_tune(syne_tune(objectives, meant=False, reduction_factor=factor), sequence, objectives)


def test_stock_syne_tune_stops_a_trial_that_dominates_its_rung_and_ours_does_not() -> None:
    """The documented difference: rung 1 holds two trials that trade off; the third beats both in both."""
    objectives: Objectives = [("acc", "max"), ("ppl", "min")]
    sequence: List[Arrival] = [(0, {"epoch": 1.0, "acc": 0.8, "ppl": 2.0}), (1, {"epoch": 1.0, "acc": 0.7, "ppl": 1.0}),
                               (2, {"epoch": 1.0, "acc": 0.9, "ppl": 0.5})]
    stock = run_syne_tune(syne_tune(objectives, meant=False, reduction_factor=4), sequence, objectives)
    assert stock == [CONTINUE, STOP, STOP]
    assert run(pareto(objectives, reduction_factor=4), sequence) == [CONTINUE, STOP, CONTINUE]
    assert run_syne_tune(syne_tune(objectives, reduction_factor=4), sequence, objectives) == [CONTINUE, STOP, CONTINUE]


def test_the_rule_by_hand() -> None:
    """Reduction factor 3: the second arrival goes on only as the better of two (position 0 of 2); the fourth
    at position 1 of 4 (1/4 is not above 1/3) goes on."""
    sequence: List[Arrival] = [(0, {"epoch": 1.0, "acc": 0.5, "ppl": 1.0}), (1, {"epoch": 1.0, "acc": 0.4, "ppl": 2.0}),
                               (2, {"epoch": 1.0, "acc": 0.6, "ppl": 1.5}), (3, {"epoch": 1.0, "acc": 0.1, "ppl": 0.1})]
    # Trial 1 is dominated by trial 0: position 1 of 2. Trial 2 trades off with trial 0 and has the better
    # accuracy: the epsilon-net takes it first (position 0 of 3).
    # Trial 3 has the best perplexity: front {0, 2, 3}; epsilon-net 2, then 3 (farthest), then 0: position 1 of 4.
    assert run(pareto([("acc", "max"), ("ppl", "min")]), sequence) == [CONTINUE, STOP, CONTINUE, CONTINUE]


# --- constraints, missing metrics, infeasible trials -----------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_constraints_every_trial_meets_change_nothing(seed: int) -> None:
    objectives = OBJECTIVE_SETS["max-min"]
    sequence = arrivals(seed, ["acc", "ppl", "mem"])
    constrained = pareto(objectives, constraints={"mem": (0.0, 1.0)}, stop_infeasible=True)
    assert run(constrained, sequence) == run_syne_tune(syne_tune(objectives), sequence, objectives)


def test_an_infeasible_trial_ranks_below_the_feasible_ones() -> None:
    """A difference from Syne Tune, which has no constraints: trial 1 dominates trial 0 but uses too much memory."""
    objectives: Objectives = [("acc", "max"), ("ppl", "min")]
    sequence: List[Arrival] = [(0, {"epoch": 1.0, "acc": 0.5, "ppl": 2.0, "mem": 8.0}),
                               (1, {"epoch": 1.0, "acc": 0.9, "ppl": 1.0, "mem": 12.0}),
                               (2, {"epoch": 1.0, "acc": 0.4, "ppl": 3.0, "mem": 9.0}),
                               (3, {"epoch": 1.0, "acc": 0.9, "ppl": 1.0, "mem": 13.0})]
    constrained = pareto(objectives, constraints={"mem": (None, 10.0)}, reduction_factor=2)
    # 1 is second of two (position 1 of 2 is not above 1/2); 2 is feasible: before 1, after 0: position 1 of 3;
    # 3 breaks the limit by more than 1 does: last, position 3 of 4, above 1/2. Syne Tune sees 3 as 1's
    # duplicate, after 1 and before 0 and 2: it goes on.
    assert run(constrained, sequence) == [CONTINUE, CONTINUE, CONTINUE, STOP]
    assert run_syne_tune(syne_tune(objectives, reduction_factor=2), sequence, objectives)[1:] == [CONTINUE, STOP,
                                                                                                   CONTINUE]
    assert constrained.stopped_early == {3}


def test_one_objective_with_constraints_ranks_by_deb_s_rule() -> None:
    scheduler = pareto([("acc", "max")], constraints={"mem": (None, 10.0)}, reduction_factor=2)
    sequence: List[Arrival] = [(0, {"epoch": 1.0, "acc": 0.9, "mem": 12.0}),
                               (1, {"epoch": 1.0, "acc": 0.5, "mem": 8.0}),
                               (2, {"epoch": 1.0, "acc": 0.8, "mem": 15.0})]
    assert scheduler.pareto
    assert run(scheduler, sequence) == [CONTINUE, CONTINUE, STOP]


def test_a_missing_metric_carries_the_last_reported_value() -> None:
    objectives: Objectives = [("acc", "max"), ("ppl", "min")]
    # Trial 1 reports no perplexity at epoch 3 (rung 3): its 0.1 from epoch 2 ranks it, not NaN.
    again = pareto(objectives, reduction_factor=3)  # rungs at epochs 1, 3, 9
    carried = [(0, {"epoch": 3.0, "acc": 0.5, "ppl": 0.5}), (1, {"epoch": 2.0, "acc": 0.6, "ppl": 0.1}),
               (1, {"epoch": 3.0, "acc": 0.6})]
    # At rung 3, trial 1 (0.6, carried 0.1) dominates trial 0: position 0, it goes on. With NaN for perplexity it
    # would trade off and come after trial 0 (a NaN member is last in its front): position 1 of 2, stopped.
    assert run(again, carried) == [CONTINUE, CONTINUE, CONTINUE]
    assert [e.gains for e in _rung(again, 3).values()] == [(0.5, -0.5), (0.6, -0.1)]


def test_a_metric_never_reported_is_the_worst() -> None:
    objectives: Objectives = [("acc", "max"), ("ppl", "min")]
    sequence: List[Arrival] = [(0, {"epoch": 1.0, "acc": 0.5, "ppl": 0.5}), (1, {"epoch": 1.0, "acc": 0.6})]
    scheduler = pareto(objectives)
    assert run(scheduler, sequence) == [CONTINUE, STOP]
    gains = [e.gains for e in _rung(scheduler, 1).values()]
    assert gains[0] == (0.5, -0.5) and gains[1][0] == 0.6 and math.isnan(gains[1][1])


def test_stop_infeasible_stops_at_any_report_and_keeps_the_trial_stopped() -> None:
    objectives: Objectives = [("acc", "max"), ("ppl", "min")]
    scheduler = pareto(objectives, constraints={"drift": (None, 0.05)}, stop_infeasible=True, max_t=8,
                       reduction_factor=2)  # rungs at epochs 1, 2, 4, 8
    trial = tune_trial(0)
    scheduler.on_trial_add(None, trial)

    def decide(result: Dict[str, float]) -> str:
        return scheduler.on_trial_result(None, trial, result)

    assert decide({"epoch": 1.0, "acc": 0.5, "ppl": 1.0}) == CONTINUE, "never measured: nothing broken yet"
    assert decide({"epoch": 2.0, "acc": 0.6, "ppl": 0.9, "drift": 0.01}) == CONTINUE
    assert decide({"epoch": 3.0, "acc": 0.7, "ppl": 0.8, "drift": 0.2}) == STOP, "epoch 3 is no rung"
    assert scheduler.stopped_early == {0}
    # Alone at rung 4 and back within bounds, it would go on: stopped for a broken constraint, it stays stopped.
    assert decide({"epoch": 4.0, "acc": 0.9, "ppl": 0.1, "drift": 0.0}) == STOP
    last = tune_trial(1)
    scheduler.on_trial_add(None, last)
    assert scheduler.on_trial_result(None, last, {"epoch": 8.0, "acc": 0.5, "ppl": 1.0, "drift": float("nan")}) == STOP
    assert scheduler.stopped_early == {0}, "a stop at the full budget is not early"


def test_a_completed_trial_is_recorded_at_its_last_rung_with_carried_values() -> None:
    scheduler = pareto([("acc", "max"), ("ppl", "min")], max_t=4, reduction_factor=2)  # rungs at 1, 2, 4
    trial = tune_trial(0)
    scheduler.on_trial_add(None, trial)
    assert scheduler.on_trial_result(None, trial, {"epoch": 2.0, "acc": 0.5, "ppl": 0.7}) == CONTINUE
    assert scheduler.on_trial_result(None, trial, {"epoch": 4.0, "acc": 0.6}) == STOP, "the full budget"
    assert scheduler.stopped_early == set() and _rung(scheduler, 4) == {}
    scheduler.on_trial_complete(None, trial, {"epoch": 4.0, "acc": 0.6})
    assert [e.gains for e in _rung(scheduler, 4).values()] == [(0.6, -0.7)]
    assert ray_private.bracket_of(scheduler, trial.trial_id) is None


# --- replay on resume ------------------------------------------------------------------------------------------------


def _rung(scheduler: ParetoASHA, milestone: float) -> Dict[str, Entry]:
    bracket = ray_private.brackets(scheduler)[0]
    for (found, _), entries in zip(ray_private.rungs(bracket), bracket.seconds, strict=True):
        if found == milestone:
            return dict(entries)
    raise KeyError(milestone)


def rungs_by_number(scheduler: ParetoASHA) -> List[List[Tuple[int, str, float]]]:
    """Each rung's entries, in arrival order, known by trial number (Tune ids differ between live and replay);
    gains as text, where NaN equals NaN."""
    bracket = ray_private.brackets(scheduler)[0]
    return [[(int(re.findall(r"\d+", key)[0]), repr(e.gains), e.violation)
             for key, e in sorted(entries.items(), key=lambda item: item[1].arrival)]
            for entries in bracket.seconds]


@pytest.mark.parametrize("seed", range(6))
def test_replayed_results_decide_as_the_live_ones_did(seed: int) -> None:
    objectives = OBJECTIVE_SETS["max-min-max"]

    def make() -> ParetoASHA:
        return pareto(objectives, constraints={"mem": (None, 0.9)}, stop_infeasible=bool(seed % 2),
                      reduction_factor=2 + seed % 3)

    sequence = arrivals(seed, ["acc", "ppl", "f1", "mem"], missing=0.3)
    live = make()
    decisions = run(live, sequence)
    delivered = [(n, r) for (n, r), d in zip(sequence, decisions, strict=True) if d != "-"]
    replayed = make()
    assert [replayed.replay(n, [r]) for n, r in delivered] == [d for d in decisions if d != "-"]
    assert rungs_by_number(replayed) == rungs_by_number(live)
    assert replayed.stopped_early == live.stopped_early and live.stopped_early


def test_a_pickled_scheduler_decides_as_the_original() -> None:
    """Ray's ``save``/``restore`` pickle the scheduler's state."""
    objectives = OBJECTIVE_SETS["max-min"]
    sequence = arrivals(7, ["acc", "ppl", "mem"], missing=0.2)
    original = pareto(objectives, constraints={"mem": (None, 0.8)}, stop_infeasible=True)
    run(original, sequence[:40])
    copy = pickle.loads(pickle.dumps(original))
    assert run(copy, sequence[40:]) == run(original, sequence[40:])
    assert copy.stopped_early == original.stopped_early


def test_a_resumed_trial_takes_over_its_replayed_entries() -> None:
    objectives: Objectives = [("acc", "max"), ("ppl", "min")]
    scheduler = pareto(objectives, reduction_factor=2)
    scheduler.replay(0, [{"epoch": 1.0, "acc": 0.5, "ppl": 1.0}])
    scheduler.replay(1, [{"epoch": 1.0, "acc": 0.6, "ppl": 0.5}])
    resumed = tune_trial(0, attempt=1)
    scheduler.on_trial_add(None, resumed)
    assert list(_rung(scheduler, 1)) == ["replayed-1", resumed.trial_id]
    # Epoch 1 again (a restart from scratch): rung 1 already has it, no second ranking; ppl is carried.
    assert scheduler.on_trial_result(None, resumed, {"epoch": 1.0, "acc": 0.5}) == CONTINUE
    assert len(_rung(scheduler, 1)) == 2
    assert scheduler.on_trial_result(None, resumed, {"epoch": 2.0, "acc": 0.7}) == CONTINUE
    assert _rung(scheduler, 2)[resumed.trial_id].gains == (0.7, -1.0)


def test_infeasible_stopper_stops_at_the_first_broken_constraint_and_replays() -> None:
    constraints: Mapping[str, Tuple[Optional[float], Optional[float]]] = {"mem": (None, 10.0), "ppl": (-0.1, None)}
    sequence: List[Arrival] = [(0, {"epoch": 1.0, "mem": 8.0}), (1, {"epoch": 1.0, "mem": 9.0, "ppl": 0.0}),
                               (0, {"epoch": 2.0, "ppl": -0.5}), (1, {"epoch": 2.0, "mem": 9.5}),
                               (0, {"epoch": 3.0, "mem": 1.0, "ppl": 0.0}), (2, {"epoch": 4.0, "mem": 11.0}),
                               (1, {"epoch": 3.0, "mem": math.nan})]
    live = InfeasibleStopper(constraints, time_attr="epoch", max_t=4)
    decisions = run(live, sequence)
    assert decisions == [CONTINUE, CONTINUE, STOP, CONTINUE, "-", STOP, STOP]
    assert live.stopped_early == {0, 1}, "trial 2 broke its constraint at the full budget"
    replayed = InfeasibleStopper(constraints, time_attr="epoch", max_t=4)
    delivered = [(n, r) for (n, r), d in zip(sequence, decisions, strict=True) if d != "-"]
    assert [replayed.replay(n, [r]) for n, r in delivered] == [d for d in decisions if d != "-"]
    assert replayed.stopped_early == live.stopped_early
    assert replayed.replay(0, [{"epoch": 5.0, "mem": 1.0}]) == STOP, "a stopped trial stays stopped"
    assert InfeasibleStopper(constraints).replay(7, [{"epoch": 9.0, "mem": 20.0}]) == STOP


# --- what a user can get wrong ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("objectives", "constraints", "message"), [
    ([], {}, "needs at least one"),
    ([("acc", "up")], {}, r"objectives.acc: mode must be 'max' or 'min', but got 'up'"),
    ([("acc", "max"), ("acc", "min")], {}, "each metric may appear once"),
    ([("acc", "max")], {"mem": (10.0, 1.0)},
     r"constraints.mem: `low <= high` must hold, but got \(low=10.0, high=1.0\)"),
], ids=["none", "bad-mode", "repeated", "swapped-bounds"])
def test_bad_settings_say_what_to_fix(objectives: Objectives, constraints: Dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ParetoASHA(objectives, constraints=constraints, time_attr="epoch", max_t=9)


def test_the_scheduler_metric_must_be_the_primary_objective() -> None:
    scheduler = ParetoASHA([("acc", "max"), ("ppl", "min")], time_attr="epoch", max_t=9)
    with pytest.raises(ConfigError, match=r"primary objective \(acc, max\), but got \(ppl, min\)"):
        scheduler.set_search_properties("ppl", "min")
    assert scheduler.set_search_properties("acc", "max")
