"""The Ray Tune glue on its own: the event bridge, the study searcher, ASHA's memory and its replay.

Tune's Trial objects are stood in for by plain objects with the attributes the bridge reads; the
scheduler is Ray's real ASHAScheduler, the study a real Optuna study.
"""

from __future__ import annotations

import pickle
from types import SimpleNamespace
from typing import Any, Dict, List, Optional

import pytest
from optuna.trial import TrialState
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import Searcher

from finesweep.config import ExperimentConfig
from finesweep.config.compose import compose
from finesweep.config.space import parse_space
from finesweep.execution.tuner import RecordingASHA, _EventBridge, make_scheduler, points_plan, search_plan
from finesweep.journal.records import TrialRecord, TrialStatus
from finesweep.search.searcher import MARKER, Numbering, Rerun, params_of


class Recorder:
    """A SweepListener that writes down every event."""

    def __init__(self) -> None:
        self.events: List[tuple] = []

    def trial_started(self, record: TrialRecord) -> None:
        self.events.append(("started", record.number, dict(record.params), record.attempts))

    def trial_result(self, record: TrialRecord, metrics: Dict[str, float]) -> None:
        self.events.append(("result", record.number, dict(metrics), record.checkpoint))

    def trial_ended(self, record: TrialRecord) -> None:
        self.events.append(("ended", record.number, record.status, record.failure, record.error))

    def trial_retrying(self, record: TrialRecord) -> None:
        self.events.append(("retrying", record.number, record.attempts, dict(record.params)))


def trial(trial_id: str, config: Dict[str, Any], error: str = "") -> Any:
    return SimpleNamespace(trial_id=trial_id, config=config, get_error=lambda: error or None)


def marked(number: int, optuna: Optional[int] = None, **values: Any) -> Dict[str, Any]:
    return {**values, MARKER: {"number": number, "optuna": optuna, "checkpoint": None, "attempt": 1}}


@pytest.fixture(scope="module")
def config() -> ExperimentConfig:
    return compose("demo", ["objective.metric=val/loss", "objective.mode=min", "scheduler.max_epochs=4",
                            "scheduler.grace_period=1", "scheduler.reduction_factor=2", "search.max_retries=1",
                            "search.num_trials=4"]).config


def bridge_for(config: ExperimentConfig, listener: Recorder) -> _EventBridge:
    params = parse_space({"optim.lr": {"distribution": "loguniform", "low": 1e-5, "high": 1e-2}}, config)
    plan = search_plan(config, params, Numbering())
    return _EventBridge(config, plan, plan.scheduler, [listener])


def test_results_reach_listeners_with_their_checkpoint(config: ExperimentConfig) -> None:
    listener = Recorder()
    bridge = bridge_for(config, listener)
    first = trial("a", marked(0, 0, **{"optim.lr": 0.1}))
    bridge.on_trial_start(0, [], first)
    bridge.on_trial_result(0, [], first, {"val/loss": 0.7, "val/accuracy": 0.5, "epoch": 1, "time_total_s": 3.0,
                                          "should_checkpoint": True})
    assert listener.events == [("started", 0, {"optim.lr": 0.1}, 1)], "a result waits for its checkpoint"
    bridge.on_checkpoint(0, [], first, SimpleNamespace(path="/ckpt/a/1"))
    bridge.on_trial_result(0, [], first, {"val/loss": 0.4, "epoch": 2})  # no checkpoint: passed on at once
    assert listener.events[1:] == [("result", 0, {"val/loss": 0.7, "val/accuracy": 0.5, "epoch": 1.0}, "/ckpt/a/1"),
                                   ("result", 0, {"val/loss": 0.4, "epoch": 2.0}, "/ckpt/a/1")]
    record = bridge.records[0]
    assert (record.best_value, record.best_epoch, record.epochs_run) == (0.4, 2, 2), "min mode: lower is better"


def test_bridge_tells_completed_stopped_and_failed_apart(config: ExperimentConfig) -> None:
    listener = Recorder()
    bridge = bridge_for(config, listener)
    done, stopped = trial("a", marked(0, 0)), trial("b", marked(1, 1))
    diverged = trial("c", marked(2, 2), error="Traceback (most recent call last):\n  File x\n"
                     "finesweep.errors.DivergedError: training loss became nan at epoch 1, batch 3\n")
    for t in (done, stopped, diverged):
        bridge.on_trial_start(0, [], t)
    bridge.scheduler.stopped_early.add(1)  # type: ignore[union-attr]
    bridge.on_trial_complete(0, [], done)
    bridge.on_trial_complete(0, [], stopped)
    bridge.on_trial_error(0, [], diverged)
    bridge.on_trial_complete(0, [], done)  # Tune may report an end twice: the first one counts
    ends = [e for e in listener.events if e[0] == "ended"]
    assert ends == [("ended", 0, TrialStatus.completed, "", None), ("ended", 1, TrialStatus.early_stopped, "", None),
                    ("ended", 2, TrialStatus.failed, "nan",
                     "finesweep.errors.DivergedError: training loss became nan at epoch 1, batch 3")]
    assert not bridge.plan.searcher.queue.items, "a diverged trial is never retried"


def test_out_of_memory_is_retried_once_with_half_the_batch(config: ExperimentConfig) -> None:
    listener = Recorder()
    bridge = bridge_for(config, listener)
    first = trial("a", marked(0, 0, **{"optim.lr": 0.1}))
    bridge.on_trial_start(0, [], first)
    bridge.on_trial_result(0, [], first, {"val/loss": 0.7, "epoch": 1, "should_checkpoint": True})
    bridge.on_checkpoint(0, [], first, SimpleNamespace(path="/ckpt/a/1"))
    bridge.on_trial_error(0, [], trial("a", {}, error="RuntimeError: CUDA out of memory. Tried to allocate 2 GiB"))
    (rerun,) = bridge.plan.searcher.queue.items
    assert (rerun.number, rerun.checkpoint, rerun.attempt) == (0, "/ckpt/a/1", 2), "continues from its checkpoint"
    assert rerun.params == {"optim.lr": 0.1, "data.batch_size": config.data.batch_size // 2,
                            "trainer.accumulate_grad_batches": config.trainer.accumulate_grad_batches * 2}
    assert listener.events[-1] == ("retrying", 0, 2, rerun.params)
    second = trial("b", bridge.plan.searcher.suggest("b"))  # the retry: a new Tune trial, the same finesweep trial
    assert second.config == rerun.config()
    bridge.on_trial_start(0, [], second)
    bridge.on_trial_error(0, [], trial("b", {}, error="MemoryError"))
    assert not bridge.plan.searcher.queue.items, "search.max_retries=1: no third attempt"
    assert listener.events[-1][:4] == ("ended", 0, TrialStatus.failed, "oom")
    assert len(bridge.records) == 1 and bridge.records[0].attempts == 2, "one trial, two attempts"


def test_bridge_pickles_without_its_listeners(config: ExperimentConfig) -> None:
    class Unpicklable(Recorder):
        def __reduce__(self) -> Any:
            raise TypeError("a live MLflow client or terminal")

    bridge = bridge_for(config, Unpicklable())
    restored = pickle.loads(pickle.dumps(bridge))  # Ray pickles the run config for experiment restore
    assert restored.listeners == [] and restored.plan is None


def test_study_searcher_numbers_trials_and_tells_optuna_the_best_epoch(config: ExperimentConfig) -> None:
    listener = Recorder()
    bridge = bridge_for(config, listener)
    searcher = bridge.plan.searcher
    first = searcher.suggest("t0")
    assert first[MARKER] == {"number": 0, "optuna": 0, "checkpoint": None, "attempt": 1, "sampler_attrs": {}}
    assert 1e-5 <= first["optim.lr"] <= 1e-2 and set(params_of(first)) == {"optim.lr"}
    tune_trial = trial("t0", first)
    bridge.on_trial_start(0, [], tune_trial)
    for epoch, loss in ((1, 0.7), (2, 0.3), (3, 0.5)):
        bridge.on_trial_result(0, [], tune_trial, {"val/loss": loss, "epoch": epoch})
    bridge.on_trial_complete(0, [], tune_trial)
    (done,) = searcher.study.trials
    assert done.state is TrialState.COMPLETE and done.value == 0.3, "the best epoch, as trials are ranked"
    assert done.intermediate_values == {1: 0.7, 2: 0.3, 3: 0.5}


def test_study_searcher_runs_reruns_first_and_finishes_at_its_budget(config: ExperimentConfig) -> None:
    params = parse_space({"optim.lr": {"distribution": "loguniform", "low": 1e-5, "high": 1e-2}}, config)
    plan = search_plan(config, params, Numbering(5), reruns=[Rerun(2, {"optim.lr": 0.001}, None, "/ckpt", 1)])
    searcher = plan.searcher
    assert searcher.suggest("x") == {"optim.lr": 0.001, MARKER: {"number": 2, "optuna": None, "checkpoint": "/ckpt",
                                                                  "attempt": 1}}
    fresh = [searcher.suggest(f"n{i}") for i in range(4)]
    assert [f[MARKER]["number"] for f in fresh] == [5, 6, 7, 8]
    assert searcher.suggest("more") is None, "budget reached, but trials still run (one may need a retry)"
    for number, optuna in ((2, None), (5, 0), (6, 1), (7, 2), (8, 3)):
        searcher.tell(number, optuna, TrialState.FAIL)
    assert searcher.suggest("done") == Searcher.FINISHED


def test_points_searcher_hands_out_each_point_once(config: ExperimentConfig) -> None:
    plan = points_plan(config, [Rerun(7, {"trainer.seed": 1}), Rerun(8, {"trainer.seed": 2})],
                       reruns=[Rerun(3, {"trainer.seed": 9}, None, "/ckpt")])
    handed = [plan.searcher.suggest(str(i)) for i in range(3)]
    assert [h[MARKER]["number"] for h in handed] == [3, 7, 8]
    assert plan.searcher.suggest("x") is None
    for number in (3, 7, 8):
        plan.searcher.tell(number, None, TrialState.COMPLETE)
    assert plan.searcher.suggest("y") == Searcher.FINISHED


def test_recording_asha_remembers_only_trials_stopped_before_their_budget(config: ExperimentConfig) -> None:
    asha = make_scheduler(config)
    assert isinstance(asha, RecordingASHA)
    good, bad = trial("good", marked(0)), trial("bad", marked(1))
    for t in (good, bad):
        asha.on_trial_add(None, t)
    assert asha.on_trial_result(None, good, {"epoch": 1, "val/loss": 0.2}) == TrialScheduler.CONTINUE
    decisions = {"bad": asha.on_trial_result(None, bad, {"epoch": 1, "val/loss": 0.9})}  # worse half at rung 1
    for epoch in (2, 3, 4):
        decisions[f"good@{epoch}"] = asha.on_trial_result(None, good, {"epoch": epoch, "val/loss": 0.1})
    assert decisions["bad"] == TrialScheduler.STOP and decisions["good@4"] == TrialScheduler.STOP
    assert decisions["good@2"] == decisions["good@3"] == TrialScheduler.CONTINUE
    assert asha.stopped_early == {1}, "reaching max_epochs is completing, not an early stop"


def test_replayed_rungs_decide_as_the_live_ones_did(config: ExperimentConfig) -> None:
    """ASHA's rungs rebuilt from the log (ray#30838: Tune's restore drops them) take the same decisions."""
    results = [(0, 1, 0.5), (1, 1, 0.4), (2, 1, 0.9), (0, 2, 0.45), (1, 2, 0.3), (3, 1, 0.6), (1, 3, 0.2)]
    live, replayed = make_scheduler(config), make_scheduler(config)
    live_trials = {n: trial(f"live{n}", marked(n)) for n in range(4)}
    for t in live_trials.values():
        live.on_trial_add(None, t)
    live_decisions = [live.on_trial_result(None, live_trials[n], {"epoch": e, "val/loss": v}) for n, e, v in results]
    replay_decisions = [replayed.replay(n, [{"epoch": e, "val/loss": v}]) for n, e, v in results]  # type: ignore[union-attr]
    assert replay_decisions == live_decisions
    assert replayed.stopped_early == live.stopped_early  # type: ignore[union-attr]
    resumed = trial("new-id", marked(1))  # trial 1 comes back as a new Tune trial: it takes over its entries
    replayed.on_trial_add(None, resumed)
    assert replayed.on_trial_result(None, resumed, {"epoch": 4, "val/loss": 0.1}) == TrialScheduler.STOP
    rung_ids = {key for bracket in replayed._brackets for _, recorded in bracket._rungs for key in recorded}
    assert "new-id" in rung_ids and "replayed-1" not in rung_ids


def test_a_trial_asha_stopped_is_told_to_optuna_as_pruned_and_rebuilt_the_same(config: ExperimentConfig) -> None:
    """TPE must not rank a one-epoch score beside full-budget ones (Ray's OptunaSearch tells it COMPLETE)."""
    from finesweep.journal.continuation import rebuilt_study

    bridge = bridge_for(config, Recorder())
    searcher, scheduler = bridge.plan.searcher, bridge.scheduler
    good, bad = (trial(f"t{i}", searcher.suggest(f"t{i}")) for i in range(2))
    for tune_trial, losses in ((good, (0.5, 0.3, 0.2, 0.25)), (bad, (0.9, 0.8))):
        scheduler.on_trial_add(None, tune_trial)
        bridge.on_trial_start(0, [], tune_trial)
        for epoch, loss in enumerate(losses, start=1):
            result = {"val/loss": loss, "epoch": epoch}
            decision = scheduler.on_trial_result(None, tune_trial, result)  # Tune asks the scheduler first
            bridge.on_trial_result(0, [], tune_trial, result)
            if decision == TrialScheduler.STOP:
                break
        bridge.on_trial_complete(0, [], tune_trial)
    done, pruned = searcher.study.trials
    assert [r.status for r in bridge.records] == [TrialStatus.completed, TrialStatus.early_stopped]
    assert done.state is TrialState.COMPLETE and done.value == 0.2
    assert pruned.state is TrialState.PRUNED and pruned.intermediate_values == {1: 0.9}
    assert pruned.value == 0.9, "Optuna keeps a pruned trial's last epoch"
    rebuilt = rebuilt_study(config, searcher.params, bridge.records)  # resume and the report see the same study
    assert [(t.state, t.value, t.intermediate_values) for t in rebuilt.trials] == \
        [(t.state, t.value, t.intermediate_values) for t in searcher.study.trials]


def test_under_asha_a_third_of_tpe_proposals_are_random_and_the_same_on_every_run(config: ExperimentConfig) -> None:
    import optuna

    from finesweep.search.samplers import ASHA_RANDOM_SHARE

    params = parse_space({"optim.lr": {"distribution": "loguniform", "low": 1e-5, "high": 1e-2}}, config)
    kinds = []
    for scheduler in ("asha", "fifo"):
        sweep = compose("demo", [f"scheduler.kind={scheduler}", "search.num_trials=300"]).config
        searcher = search_plan(sweep, params, Numbering()).searcher
        kinds.append([type(searcher.sampler(seed)).__name__ for seed in range(300)])
    asha, fifo = kinds
    share = asha.count("RandomSampler") / len(asha)
    assert abs(share - ASHA_RANDOM_SHARE) < 0.07 and set(asha) == {"RandomSampler", "RungTPESampler"}
    assert set(fifo) == {"TPESampler"}, "without early stopping every proposal is TPE's, over whole trials"
    again = search_plan(compose("demo", ["search.num_trials=300"]).config, params, Numbering()).searcher
    assert [type(again.sampler(seed)).__name__ for seed in range(300)] == asha, "a resume proposes the same"
    random_pick = asha.index("RandomSampler")
    drawn = [optuna.create_study(sampler=again.sampler(random_pick)).ask().suggest_float("x", 0, 1) for _ in "ab"]
    assert drawn[0] == drawn[1], "a random proposal is seeded by its trial number"


GRID_SPACE = {"finetune.strategy": {"distribution": "categorical", "choices": ["freeze", "full"]},
              "finetune.freeze_layers": {"distribution": "int", "low": 1, "high": 2,
                                         "when": {"finetune.strategy": "freeze"}},
              "optim.lr": {"distribution": "categorical", "choices": [1.0e-3, 5.0e-5]},
              "data.batch_size": {"distribution": "categorical", "choices": [16, 32]}}


def told(searcher: Any, suggested: Dict[str, Any], value: float) -> Dict[str, Any]:
    """Finish a suggested trial with one epoch of ``value``; return its values."""
    marker = suggested[MARKER]
    searcher.observe(marker["number"], marker["optuna"], 1, value)
    searcher.tell(marker["number"], marker["optuna"], TrialState.COMPLETE)
    return params_of(suggested)


@pytest.mark.parametrize("sampler", ["grid", "random", "tpe"])
def test_the_first_trial_is_exactly_the_recipe_and_a_rebuilt_study_never_enqueues_it_again(
        config: ExperimentConfig, sampler: str) -> None:
    import dataclasses

    from finesweep.config import Sampler
    from finesweep.config.recipe import recipe
    from finesweep.config.space import iter_grid
    from finesweep.journal.continuation import rebuilt_study

    config = dataclasses.replace(config, search=dataclasses.replace(config.search, sampler=Sampler(sampler),
                                                                     num_trials=None if sampler == "grid" else 6))
    params = parse_space(GRID_SPACE, config)
    plan = search_plan(config, params, Numbering())
    ran = [told(plan.searcher, plan.searcher.suggest(f"t{i}"), 0.5 + i / 100) for i in range(3)]
    own = recipe(config, params)
    assert ran[0] == own == {"finetune.strategy": "full", "optim.lr": 5e-5, "data.batch_size": 32}
    assert plan.searcher.study.trials[0].system_attrs["fixed_params"] == own, "Optuna's enqueue_trial"

    # A resume rebuilds the study from the sweep's log: it has asked 3 trials, so it proposes the 4th.
    records = []
    for number, values in enumerate(ran):
        record = TrialRecord(f"r{number}", number, values, status=TrialStatus.completed, optuna_number=number)
        record.add_result({"val/loss": 0.5 + number / 100, "epoch": 1.0}, "val/loss", config.objective.mode)
        records.append(record)
    resumed = search_plan(config, params, Numbering(3), rebuilt_study(config, params, records))
    budget = resumed.searcher.budget
    later = [told(resumed.searcher, resumed.searcher.suggest(f"r{i}"), 0.4) for i in range(budget - 3)]
    assert all("fixed_params" not in t.system_attrs for t in resumed.searcher.study.trials[3:]), "not enqueued twice"
    if sampler == "grid":  # the recipe is one of the grid's points: every point still runs exactly once
        every = [dict(point) for point in iter_grid(params)]
        assert budget == len(every) == 12
        assert sorted(map(repr, ran + later)) == sorted(map(repr, every))
