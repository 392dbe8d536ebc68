"""The Ray Tune glue on its own: the event bridge turns Tune's callbacks into records; ASHA remembers its stops.

Tune's Trial objects are stood in for by plain objects with the attributes the bridge reads; the
scheduler is Ray's real ASHAScheduler.
"""

from __future__ import annotations

import pickle
from types import SimpleNamespace
from typing import Any, Dict, List, Optional

import pytest
from ray.tune.schedulers import TrialScheduler

from finesweep.cli import compose
from finesweep.config import ExperimentConfig
from finesweep.records import TrialRecord, TrialStatus
from finesweep.tuner import POINT_KEY, _EventBridge, _RecordingASHA, _scheduler


class Recorder:
    """A SweepListener that writes down every event."""

    def __init__(self) -> None:
        self.events: List[tuple] = []

    def trial_started(self, record: TrialRecord) -> None:
        self.events.append(("started", record.number, dict(record.params)))

    def trial_result(self, record: TrialRecord, metrics: Dict[str, float]) -> None:
        self.events.append(("result", record.number, dict(metrics)))

    def trial_ended(self, record: TrialRecord) -> None:
        self.events.append(("ended", record.number, record.status, record.error, record.checkpoint))


def trial(trial_id: str, config: Dict[str, Any], checkpoint: Optional[str] = None, error: str = "") -> Any:
    return SimpleNamespace(trial_id=trial_id, config=config,
                           checkpoint=SimpleNamespace(path=checkpoint) if checkpoint else None,
                           get_error=lambda: error or None)


@pytest.fixture(scope="module")
def config() -> ExperimentConfig:
    return compose("demo", ["objective.metric=val/loss", "objective.mode=min", "scheduler.max_epochs=4",
                            "scheduler.grace_period=1", "scheduler.reduction_factor=2"]).config


def test_bridge_numbers_trials_and_forwards_reported_metrics_only(config: ExperimentConfig) -> None:
    listener = Recorder()
    bridge = _EventBridge(config, _scheduler(config), [listener], phase="search", first_number=0)
    first, second = trial("a", {"optim.lr": 0.1}), trial("b", {"optim.lr": 0.2})
    bridge.on_trial_start(0, [], first)
    bridge.on_trial_start(0, [], second)
    bridge.on_trial_result(0, [], first, {"val/loss": 0.7, "val/accuracy": 0.5, "epoch": 1, "time_total_s": 3.0,
                                          "training_iteration": 1})
    bridge.on_trial_result(0, [], first, {"val/loss": 0.4, "epoch": 2})
    assert listener.events[:2] == [("started", 0, {"optim.lr": 0.1}), ("started", 1, {"optim.lr": 0.2})]
    assert listener.events[2] == ("result", 0, {"val/loss": 0.7, "val/accuracy": 0.5, "epoch": 1.0}), \
        "Ray's own bookkeeping (time_total_s, training_iteration) is not a metric"
    record = bridge.records[0]
    assert (record.best_value, record.best_epoch, record.epochs_run) == (0.4, 2, 2), "min mode: lower is better"


def test_bridge_tells_completed_stopped_and_failed_apart(config: ExperimentConfig) -> None:
    listener = Recorder()
    scheduler = _scheduler(config)
    bridge = _EventBridge(config, scheduler, [listener], phase="search", first_number=0)
    done, stopped, crashed = trial("a", {}, "/ckpt/a"), trial("b", {}), trial(
        "c", {}, error="Traceback (most recent call last):\n  File x\nRuntimeError: CUDA out of memory\n\n")
    for t in (done, stopped, crashed):
        bridge.on_trial_start(0, [], t)
    scheduler.stopped_early.add("b")
    bridge.on_trial_complete(0, [], done)
    bridge.on_trial_complete(0, [], stopped)
    bridge.on_trial_error(0, [], crashed)
    bridge.on_trial_complete(0, [], done)  # Tune may report an end twice: the first one counts
    ends = [e for e in listener.events if e[0] == "ended"]
    assert ends == [("ended", 0, TrialStatus.completed, None, "/ckpt/a"),
                    ("ended", 1, TrialStatus.early_stopped, None, None),
                    ("ended", 2, TrialStatus.failed, "RuntimeError: CUDA out of memory", None)]


def test_final_phase_unwraps_fixed_points_and_continues_the_numbering(config: ExperimentConfig) -> None:
    listener = Recorder()
    bridge = _EventBridge(config, _scheduler(config), [listener], phase="final", first_number=14)
    bridge.on_trial_start(0, [], trial("x", {POINT_KEY: {"optim.lr": 0.1, "trainer.seed": 2}}))
    assert listener.events == [("started", 14, {"optim.lr": 0.1, "trainer.seed": 2})]
    assert bridge.records[0].phase == "final"


def test_bridge_pickles_without_its_listeners(config: ExperimentConfig) -> None:
    class Unpicklable(Recorder):
        def __reduce__(self) -> Any:
            raise TypeError("a live MLflow client or terminal")

    bridge = _EventBridge(config, _scheduler(config), [Unpicklable()], phase="search", first_number=0)
    restored = pickle.loads(pickle.dumps(bridge))  # Ray pickles the run config for experiment restore
    assert restored.listeners == [] and restored.phase == "search"


def test_recording_asha_remembers_only_trials_stopped_before_their_budget(config: ExperimentConfig) -> None:
    asha = _scheduler(config)
    assert isinstance(asha, _RecordingASHA)
    asha.set_search_properties("val/loss", "min")
    good, bad, late = trial("good", {}), trial("bad", {}), trial("late", {})
    for t in (good, bad, late):
        asha.on_trial_add(None, t)
    decisions = {}
    assert asha.on_trial_result(None, good, {"epoch": 1, "val/loss": 0.2}) == TrialScheduler.CONTINUE
    decisions["bad"] = asha.on_trial_result(None, bad, {"epoch": 1, "val/loss": 0.9})  # worse half at rung 1
    for epoch in (2, 3, 4):
        decisions[f"good@{epoch}"] = asha.on_trial_result(None, good, {"epoch": epoch, "val/loss": 0.1})
    assert decisions["bad"] == TrialScheduler.STOP and decisions["good@4"] == TrialScheduler.STOP
    assert decisions["good@2"] == decisions["good@3"] == TrialScheduler.CONTINUE
    assert asha.stopped_early == {"bad"}, "reaching max_epochs is completing, not an early stop"
