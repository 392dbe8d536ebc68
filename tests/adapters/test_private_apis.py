"""The private parts of Ray and Optuna finesweep uses are all there in the pinned versions, and do what finesweep
relies on them for: a new release that changes any of them fails here, with the name, before anything else does."""

from __future__ import annotations

from typing import Any, Dict

import optuna
import pytest
import ray
from ray.tune.schedulers import ASHAScheduler

from finesweep.adapters import optuna_private, ray_private


def test_rays_private_api_is_all_there() -> None:
    assert ray_private.missing() == [], f"Ray {ray.__version__} changed what finesweep uses"
    assert ray.__version__.startswith(ray_private.TESTED_WITH + "."), "the pinned Ray is the one it was written for"


def test_optunas_private_api_is_all_there() -> None:
    assert optuna_private.missing() == [], f"Optuna {optuna.__version__} changed what finesweep uses"
    assert optuna.__version__.startswith(optuna_private.TESTED_WITH + ".")


def test_a_missing_name_is_one_line_that_says_which_and_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ray_private, "missing", lambda: ["_Bracket._rungs"])
    with pytest.raises(ImportError, match=r"^finesweep uses private parts of Ray that Ray \S+ no longer has: "
                                          r"_Bracket\._rungs \(written for Ray 2\.60\)\. Install ray==2\.60\.\*"):
        ray_private.require()
    monkeypatch.setattr(optuna_private, "missing", lambda: ["TPESampler._gamma"])
    with pytest.raises(ImportError, match=r"Optuna \S+ no longer has: TPESampler\._gamma"):
        optuna_private.require()


def test_asha_bookkeeping_means_what_finesweep_reads_it_as() -> None:
    """Rungs highest first, as (milestone, {trial id: value}); the budget in the time attribute; one bracket."""
    scheduler = ASHAScheduler(time_attr="epoch", metric="val/accuracy", mode="max", max_t=8, grace_period=1,
                              reduction_factor=2)
    (bracket,) = ray_private.brackets(scheduler)
    assert [milestone for milestone, _ in ray_private.rungs(bracket)] == [8, 4, 2, 1]
    assert ray_private.budget(scheduler) == ("epoch", 8.0) and ray_private.metric(scheduler) == "val/accuracy"
    assert ray_private.bracket_settings(scheduler) == {"max_t": 8, "reduction_factor": 2, "stop_last_trials": True}

    class Trial:
        trial_id, config = "t1", {}

    scheduler.on_trial_add(None, Trial())  # type: ignore[arg-type]
    assert ray_private.bracket_of(scheduler, "t1") is bracket and ray_private.bracket_of(scheduler, "t2") is None
    bracket.on_result(Trial(), 1, 0.5)
    assert ray_private.rungs(bracket)[-1][1] == {"t1": 0.5}, "the lowest rung recorded the trial's value"


def test_tpe_reads_its_split_and_trials_where_finesweep_puts_them() -> None:
    sampler = optuna.samplers.TPESampler(seed=0, n_startup_trials=2)
    calls: Dict[str, Any] = {}
    optuna_private.set_good_share(sampler, lambda n: calls.setdefault("n", n) and 1)
    assert isinstance(optuna_private.startup_sampler(sampler), optuna.samplers.RandomSampler)
    study = optuna.create_study(sampler=sampler)
    for x in (0.1, 0.5, 0.9):
        study.add_trial(optuna.trial.create_trial(params={"x": x}, value=x,
                                                  distributions={"x": optuna.distributions.FloatDistribution(0, 1)}))
    view = optuna_private.StudyView(study, optuna_private.every_trial(study)[:2])
    study.ask()
    current = optuna_private.every_trial(study)[-1]
    sampler.sample_independent(view, current, "x", optuna.distributions.FloatDistribution(0, 1))  # type: ignore
    assert calls["n"] == 2, "TPE split the two trials the view showed, with the share finesweep set"
    frozen = study.trials[0]
    assert optuna_private.continued_trial(study, frozen).number == frozen.number
