"""Syne Tune's asynchronous multi-fidelity schedulers (ASHA, BOHB, MOBSTER, Hyper-Tune, DyHPO) on LCBench.

Syne Tune 0.14.2, the last release with MOBSTER, Hyper-Tune and DyHPO: 0.15 and 0.16 removed them (0.16's
``syne_tune.optimizer.baselines`` has ASHA and BOHB only). All five come from ``syne_tune.optimizer.legacy_baselines``,
Syne Tune's ``HyperbandScheduler`` family, with the settings of the authors' own benchmarks
(benchmarking/nursery/benchmark_dyhpo and benchmark_hypertune): ``type="promotion"`` (pause and resume) for ASHA,
BOHB, MOBSTER and Hyper-Tune, DyHPO's own ``type="legacy_dyhpo"``. Fidelity range as finesweep's: grace period 4,
reduction factor 3, max 52 epochs (rungs 4, 12, 36), given as ``max_resource_attr`` as the authors recommend. DyHPO
keeps its own linearly spaced rungs, with the grace period as the step as it asks for (``rung_increment`` 4: rungs
4, 8, ..., 48). 0.14.2's newer ``syne_tune.optimizer.baselines`` module cannot be used here anyway: it imports
BoTorch and xgboost at module level, even for plain ASHA.

The loop below does what Syne Tune's ``Tuner`` does with one worker, in-process: ``suggest`` a trial (a new one, or a
paused one to resume), report its results one rung at a time to ``on_trial_result``, and act on the decision:
CONTINUE trains on to the next rung, PAUSE and STOP end the job (``on_trial_remove``, as the Tuner does); a job that
reaches its ``config["epochs"]`` (52, or the next rung a promotion scheduler set on resume) with CONTINUE ends with
``on_trial_complete``. A resumed trial continues from the epoch it paused at (the surrogate's curve is its
checkpoint), under the same trial id. A trial reports at the scheduler's rung levels and at 52: the epochs where the
scheduler decides, as finesweep's trials report at its rungs and the end.
"""

from __future__ import annotations

import datetime
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lcbench  # noqa: E402

from peers import BudgetSpent, Ledger, Result  # noqa: E402

GRACE, FACTOR, MAX_T = 4, 3, lcbench.EPOCHS
METRIC, RESOURCE, MAX_RESOURCE = "accuracy", "epoch", "epochs"


def config_space() -> Dict[str, Any]:
    """LCBench's 7 hyperparameters as a Syne Tune config space: log scale where log, integers as integers."""
    from syne_tune.config_space import lograndint, loguniform, randint, uniform

    space: Dict[str, Any] = {}
    for key, spec in lcbench.space().items():
        low, high = spec["low"], spec["high"]
        if spec["distribution"] == "int":
            space[key] = (lograndint if spec.get("log") else randint)(int(low), int(high))
        else:
            space[key] = (loguniform if spec["distribution"] == "loguniform" else uniform)(float(low), float(high))
    space[MAX_RESOURCE] = MAX_T  # max_resource_attr: a promotion scheduler lowers it to the next rung on resume
    return space


def surrogate_config(config: Dict[str, Any]) -> Dict[str, float]:
    """The 7 hyperparameters of a peer's config as the surrogate takes them: integers rounded."""
    space = lcbench.space()
    return {key: float(round(float(config[key]))) if spec["distribution"] == "int" else float(config[key])
            for key, spec in space.items()}


def drive(scheduler: Any, task: str, budget: int) -> List[Result]:
    """Run a legacy Syne Tune scheduler with one worker until the budget (epochs) is spent."""
    from syne_tune.backend.trial_status import Trial
    from syne_tune.optimizer.scheduler import SchedulerDecision

    ledger = Ledger(budget)
    trials: Dict[int, Any] = {}
    curves: Dict[int, Any] = {}
    done: Dict[int, int] = {}
    reports = sorted(set(int(r) for r in scheduler.rung_levels) | {MAX_T})
    try:
        while not ledger.done:
            suggestion = scheduler.suggest(len(trials))
            if suggestion is None:
                break
            if suggestion.spawn_new_trial_id:
                trial_id = len(trials)
                trial = Trial(trial_id=trial_id, config=dict(suggestion.config),
                              creation_time=datetime.datetime.now())
                trials[trial_id], done[trial_id] = trial, 0
                curves[trial_id] = lcbench.curve(task, surrogate_config(trial.config)).accuracy
                scheduler.on_trial_add(trial=trial)
            else:
                trial_id = suggestion.checkpoint_trial_id
                trial = trials[trial_id]
                if suggestion.config is not None:
                    trial.config = dict(suggestion.config)
            limit = min(MAX_T, int(trial.config.get(MAX_RESOURCE, MAX_T)))
            for epoch in (e for e in reports if done[trial_id] < e <= limit):
                accuracy = float(curves[trial_id][epoch - 1])
                ledger.book(trial_id, epoch, accuracy)
                done[trial_id] = epoch
                result = {METRIC: accuracy, RESOURCE: epoch}
                decision = scheduler.on_trial_result(trial=trial, result=result)
                if decision in (SchedulerDecision.STOP, SchedulerDecision.PAUSE):
                    scheduler.on_trial_remove(trial=trial)
                    break
                if epoch == limit:  # the job ran to its end (config[MAX_RESOURCE]): the Tuner reports it complete
                    scheduler.on_trial_complete(trial=trial, result=result)
    except BudgetSpent:
        pass
    return ledger.results


def _common(seed: int) -> Dict[str, Any]:
    return dict(config_space=config_space(), metric=METRIC, mode="max", resource_attr=RESOURCE,
                max_resource_attr=MAX_RESOURCE, grace_period=GRACE, random_seed=seed)


def scheduler(name: str, seed: int) -> Any:
    """The Syne Tune scheduler behind peer ``name``, seeded with ``seed``."""
    from syne_tune.optimizer import legacy_baselines as st

    if name == "Syne Tune ASHA":
        return st.ASHA(**_common(seed), reduction_factor=FACTOR, type="promotion")
    if name == "Syne Tune BOHB":
        return st.BOHB(**_common(seed), reduction_factor=FACTOR, type="promotion")
    if name == "Syne Tune MOBSTER":
        return st.MOBSTER(**_common(seed), reduction_factor=FACTOR, type="promotion")
    if name == "Syne Tune HyperTune":
        # Hyper-Tune samples a bracket for every new trial: all of Hyperband's brackets (Syne Tune caps the number
        # at len(rung levels) + 1 = 4: grace periods 4, 12, 36 and 52).
        return st.HyperTune(**_common(seed), reduction_factor=FACTOR, type="promotion", brackets=4)
    if name == "Syne Tune DyHPO":
        # DyHPO wants linearly spaced rungs with grace_period == rung_increment (it warns otherwise): the same
        # minimum of 4 epochs, then a step of 4 (rungs 4, 8, ..., 48).
        return st.DyHPO(**_common(seed), rung_increment=GRACE)
    raise KeyError(name)


def runner(name: str) -> Callable[[str, int, int, Optional[Dict[str, float]]], List[Result]]:
    def run(task: str, seed: int, budget: int, prior: Optional[Dict[str, float]] = None) -> List[Result]:
        logging.getLogger("syne_tune").setLevel(logging.WARNING)
        return drive(scheduler(name, seed), task, budget)

    return run


NAMES = ("Syne Tune ASHA", "Syne Tune BOHB", "Syne Tune MOBSTER", "Syne Tune HyperTune", "Syne Tune DyHPO")
RUNS: Dict[str, Callable[[str, int, int, Optional[Dict[str, float]]], List[Result]]] = {n: runner(n) for n in NAMES}
