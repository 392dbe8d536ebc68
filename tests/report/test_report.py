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


def test_the_forgetting_figure_plots_each_trial_at_its_best_weights_by_lr_and_strategy() -> None:
    from finesweep.config import ExperimentConfig, Mode
    from finesweep.report.figures import PROBE_METRIC, forgetting

    def probed(number: int, lr: float, strategy: str, increase: float, value: float) -> TrialFacts:
        facts = trial(number, (0, number + 1), value=value)
        facts.record.params = {"optim.lr": lr, "finetune.strategy": strategy}
        facts.record.history = [{"val/loss": 1.0, PROBE_METRIC: 99.0}, {"val/loss": value, PROBE_METRIC: increase}]
        return facts

    facts: Any = SweepFacts.__new__(SweepFacts)
    facts.config = ExperimentConfig()
    facts.config.objective.metric, facts.config.objective.mode = "val/loss", Mode.min
    facts.trials = [probed(0, 1e-5, "lora", 0.5, 0.9), probed(1, 1e-3, "full", 40.0, 0.7),
                    trial(2, (0, 3), value=0.8)]  # one without the probe (an old trial): left out
    drawn = forgetting(facts)
    assert drawn.figure is not None
    (scatter,) = drawn.figure.data
    assert list(scatter.x) == [0.5, 40.0] and list(scatter.y) == [0.9, 0.7], "the last report's probe, best value"
    assert list(scatter.marker.color) == pytest.approx([-5.0, -3.0])
    assert list(scatter.marker.symbol) == ["diamond", "circle"], "full: circle, lora: diamond (sorted names)"
    assert "full: circle, lora: diamond" in drawn.caption
