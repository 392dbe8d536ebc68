"""The report's arithmetic: worker slots from trial spans, how busy they were, ASHA's rungs."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, List, Tuple

import pytest

from finesweep.journal.records import TrialRecord, TrialStatus
from finesweep.report.facts import SweepFacts, TrialFacts, finished, slots, utilisation


def trial(number: int, *spans: Tuple[float, float], value: float = 0.5,
          status: TrialStatus = TrialStatus.completed) -> TrialFacts:
    record = TrialRecord(f"t{number}", number, {}, status, best_value=value)
    return TrialFacts(record, list(spans))


def test_spans_go_to_the_fewest_slots_and_a_resumed_trial_holds_one_per_attempt() -> None:
    trials = [trial(0, (0, 10)), trial(1, (0, 4)), trial(2, (4, 8)), trial(3, (8, 12), (20, 25))]
    placed = {(t.number, start): slot for slot, t, start, _ in slots(trials)}
    assert placed == {(1, 0): 0, (0, 0): 1, (2, 4): 0, (3, 8): 0, (3, 20): 0}, "a freed slot is reused"
    assert max(placed.values()) + 1 == 2


def test_utilisation_is_busy_time_over_capacity_time() -> None:
    placed = slots([trial(0, (0, 10)), trial(1, (0, 5))])
    assert utilisation(placed, capacity=2) == pytest.approx(15 / 20)
    assert utilisation(placed, capacity=4) == pytest.approx(15 / 40), "idle capacity counts"
    assert utilisation([], capacity=2) is None


def test_finished_trials_come_in_the_order_they_ended_and_failed_ones_are_left_out() -> None:
    trials = [trial(0, (0, 9)), trial(1, (0, 3)), trial(2, (0, 5), status=TrialStatus.failed),
              trial(3, (1, 6), status=TrialStatus.early_stopped)]
    assert [t.number for t in finished(trials)] == [1, 3, 0]


@pytest.mark.parametrize("kind,grace,factor,epochs,rungs", [
    ("asha", 1, 2, 8, [1, 2, 4]), ("asha", 1, 3, 10, [1, 3, 9]), ("asha", 2, 2, 3, [2]), ("fifo", 1, 2, 8, [])])
def test_rungs_are_where_asha_compares_trials(kind: str, grace: int, factor: float, epochs: int,
                                              rungs: List[int]) -> None:
    from finesweep.config import SchedulerConfig, SchedulerKind

    scheduler = SchedulerConfig(kind=SchedulerKind(kind), grace_period=grace, reduction_factor=factor,
                                max_epochs=epochs)
    facts: Any = SweepFacts.__new__(SweepFacts)
    facts.config = SimpleNamespace(scheduler=scheduler)
    assert facts.rungs() == rungs
