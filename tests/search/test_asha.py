"""ASHA's tie-breaking: a tie at a rung's cutoff goes to the lower validation loss; without ties, Ray's rule.

Decisions are compared with Ray's own ``ASHAScheduler`` on the same results, and with orderings worked
out by hand.
"""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any, Dict, List, Tuple

import pytest
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from finesweep.search.asha import RecordingASHA
from finesweep.search.searcher import MARKER

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP


def tune_trial(number: int) -> Any:
    return SimpleNamespace(trial_id=f"t{number}", config={MARKER: {"number": number}})


def asha(tie_break: Any = "val/loss", mode: str = "max", **kwargs: Any) -> RecordingASHA:
    scheduler = RecordingASHA(tie_break=tie_break, time_attr="epoch",
                              **{"max_t": 3, "grace_period": 1, "reduction_factor": 2, **kwargs})
    scheduler.set_search_properties("val/accuracy", mode)
    return scheduler


def ray_asha(mode: str = "max", **kwargs: Any) -> ASHAScheduler:
    scheduler = ASHAScheduler(time_attr="epoch", **{"max_t": 3, "grace_period": 1, "reduction_factor": 2, **kwargs})
    scheduler.set_search_properties("val/accuracy", mode)
    return scheduler


def run(scheduler: Any, results: List[Tuple[int, int, float, float]]) -> List[str]:
    """Feed (trial, epoch, accuracy, loss) results in order; a stopped trial's later results are skipped."""
    trials: Dict[int, Any] = {}
    decisions, stopped = [], set()
    for number, epoch, accuracy, loss in results:
        if number in stopped:
            decisions.append("-")
            continue
        if number not in trials:
            trials[number] = tune_trial(number)
            scheduler.on_trial_add(None, trials[number])
        decision = scheduler.on_trial_result(None, trials[number], {"epoch": epoch, "val/accuracy": accuracy,
                                                                    "val/loss": loss})
        decisions.append(decision)
        if decision == STOP:
            stopped.add(number)
    return decisions


# The sweep: six trials, two at a time, four of them stuck at chance accuracy (0.200 on a
# 5-class split) from epoch 1, each with its own validation loss.
CHANCE = [(0, 1, 0.2, 1.61), (1, 1, 0.2, 1.60), (0, 2, 0.2, 1.62), (1, 2, 0.2, 1.59),
          (2, 1, 0.2, 1.63), (3, 1, 0.5, 1.20), (3, 2, 0.6, 1.10), (4, 1, 0.2, 1.58),
          (5, 1, 0.55, 1.15), (4, 2, 0.2, 1.57)]


def test_trials_tied_at_the_cutoff_stop_unless_their_loss_is_lower() -> None:
    ours = run(asha(), CHANCE)
    # Trial 1 ties trial 0 at 0.2 with a lower loss: above the cutoff position (0 of [0.2]), it goes on.
    # Trial 0 at epoch 2 is alone in rung 2; trial 1 at epoch 2 ties it: (0.2, -1.59) beats (0.2, -1.62).
    # Trial 2 ties 0 and 1 at rung 1 with the highest loss: position 0, below the median position 0.5.
    # Trial 4 ties three chance trials at rung 1 ([0.2, 0.2, 0.2, 0.5]: cutoff 0.2 at position 1.5) with the
    # lowest loss of them: position 3 > 1.5, it goes on.
    assert ours == [CONTINUE, CONTINUE, CONTINUE, CONTINUE, STOP, CONTINUE, CONTINUE, CONTINUE, CONTINUE, CONTINUE]
    ray = run(ray_asha(), CHANCE)
    assert ray[4] == CONTINUE, "Ray keeps a trial equal to the cutoff: the waste this fixes"


def test_a_chance_trial_with_a_worse_loss_stops_at_its_first_rung() -> None:
    results = [(0, 1, 0.2, 1.60), (1, 1, 0.2, 1.62), (2, 1, 0.2, 1.65), (3, 1, 0.2, 1.64)]
    assert run(asha(), results) == [CONTINUE, STOP, STOP, STOP]
    assert run(ray_asha(), results) == [CONTINUE] * 4


def test_without_a_secondary_value_a_tie_goes_on_as_in_ray() -> None:
    results = [(0, 1, 0.2, 1.60), (1, 1, 0.2, 1.62), (2, 1, 0.2, 1.65)]
    assert run(asha(tie_break=None), results) == run(ray_asha(), results) == [CONTINUE] * 3
    nan_loss = [(0, 1, 0.2, float("nan")), (1, 1, 0.2, float("nan"))]
    assert run(asha(), nan_loss) == [CONTINUE, CONTINUE]


def test_fully_tied_trials_all_go_on() -> None:
    """Equal in both keys, trials cannot be told apart: none is stopped for it."""
    assert run(asha(), [(n, 1, 0.2, 1.6) for n in range(4)]) == [CONTINUE] * 4


@pytest.mark.parametrize("mode", ["max", "min"])
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("factor", [2, 3, 4])
def test_without_ties_every_decision_is_rays(mode: str, seed: int, factor: int) -> None:
    rng = random.Random(seed)
    results, epochs = [], {n: 0 for n in range(30)}
    for _ in range(120):  # asynchronous arrivals: any trial may report its next epoch
        number = rng.randrange(30)
        if epochs[number] < 9:
            epochs[number] += 1
            results.append((number, epochs[number], rng.random(), rng.random()))
    kwargs = {"max_t": 9, "reduction_factor": factor}
    assert run(asha(mode=mode, **kwargs), results) == run(ray_asha(mode=mode, **kwargs), results)


def test_a_minimised_objective_breaks_ties_the_same_way() -> None:
    # Minimising an error rate: 0.8 at chance. Trial 1 ties with a higher loss and stops.
    assert run(asha(mode="min"), [(0, 1, 0.8, 1.60), (1, 1, 0.8, 1.62)]) == [CONTINUE, STOP]


def test_replayed_ties_decide_as_the_live_ones_did() -> None:
    live = run(asha(), CHANCE)
    replayed = asha()
    decisions = []
    for number, epoch, accuracy, loss in CHANCE:
        decisions.append(replayed.replay(number, [{"epoch": epoch, "val/accuracy": accuracy, "val/loss": loss}]))
    assert "-" not in live and decisions == live
