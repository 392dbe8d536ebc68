"""Long sweeps survive, through the real CLI with a real local Ray and MLflow store on a tiny BERT.

The driver is SIGKILLed (with its local Ray: a preempted node) or interrupted with Ctrl-C, then
`finesweep resume` continues: every trial once, every MLflow run once, every metric step once, and
ASHA's decisions as if nothing had happened.
"""

from __future__ import annotations

import random
import re
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import optuna
import pytest

from e2e import Driver, events, metric_steps, run_cli, runs
from finesweep.config import progress_of
from finesweep.config.compose import compose
from finesweep.config.recipe import recipe
from finesweep.config.space import suggest
from finesweep.execution.tuner import make_scheduler
from finesweep.search.samplers import sampler_factory
from finesweep.search.searcher import PastTrial, proposal_seed, rebuild_study

pytestmark = pytest.mark.slow

ASHA = """
objective: {metric: val/loss, mode: min}
search: {sampler: tpe, num_trials: 8, max_concurrent: 2, seed: 3}
scheduler: {kind: asha, max_epochs: 3, grace_period: 1, reduction_factor: 2}
space:
  optim.lr: {distribution: loguniform, low: 1.0e-5, high: 3.0e-2}
  optim.warmup_ratio: {distribution: float, low: 0.0, high: 0.2, step: 0.1}
"""


def data_overrides(tiny_model: Path, tiny_csv: Path) -> List[str]:
    return [f"model.name_or_path={tiny_model}", f"data.path={tiny_csv}", "data.label_column=label",
            "data.max_length=32", "data.max_samples=null"]


def uri(cwd: Path) -> str:
    return f"sqlite:///{cwd / 'mlruns' / 'mlflow.db'}"


def search_trials(log: List[Dict[str, Any]]) -> Dict[int, Dict[str, Any]]:
    """Each search trial's values, results (epoch, value) in order, and how it ended, from the log."""
    trials: Dict[int, Dict[str, Any]] = {}
    for event in log:
        if event["kind"] == "trial_started" and event["phase"] == "search":
            trials.setdefault(event["number"], {"params": event["params"], "results": [], "status": None,
                                                "starts": 0})["starts"] += 1
        elif event["kind"] == "trial_result" and event["number"] in trials:
            trials[event["number"]]["results"].append(((event["seen_at"], event["seq"]), event["metrics"]))
        elif event["kind"] == "trial_ended" and event["number"] in trials:
            trials[event["number"]]["status"] = event["status"]
    return trials


def assert_exactly_once(cwd: Path, experiment: str, planned: int) -> Dict[int, Dict[str, Any]]:
    """One parent, one child per trial, none RUNNING, no (key, step) twice; each trial's epochs run once."""
    found = runs(uri(cwd), experiment)
    assert len(found["parents"]) == 1 and found["parents"][0].info.status == "FINISHED"
    search = [c for c in found["children"] if c.data.tags["finesweep.phase"] == "search"]
    assert len(search) == planned and len({c.info.run_name for c in search}) == planned
    assert all(c.info.status in ("FINISHED", "FAILED") for c in found["children"]), "no run left RUNNING"
    for child in found["children"]:
        for key, steps in metric_steps(found["client"], child.info.run_id).items():
            assert len(steps) == len(set(steps)), f"{child.info.run_name}: {key} logged twice at a step: {steps}"
    trials = search_trials(events(cwd))
    assert sorted(trials) == list(range(planned))
    for number, trial in trials.items():
        done = [progress_of(m) for _, m in trial["results"]]  # epochs 1, 2, ... or steps k, 2k, ...
        assert done == [done[0] * (i + 1) for i in range(len(done))], f"trial {number} ran a report twice: {done}"
        assert trial["status"] in ("completed", "early_stopped")
    return trials


def assert_asha_consistent(trials: Dict[int, Dict[str, Any]], sweep: Any) -> None:
    """A fresh ASHA fed every logged result, in the order ASHA saw them, takes the decisions the sweep shows:
    each early-stopped trial stops at its last epoch and not before, each completed one is never stopped."""
    asha = make_scheduler(sweep.config)
    ordered = sorted((order, number, metrics) for number, t in trials.items() for order, metrics in t["results"])
    decisions: Dict[int, List[str]] = {number: [] for number in trials}
    for _, number, metrics in ordered:
        decisions[number].append(asha.replay(number, [metrics]))  # type: ignore[attr-defined]
    for number, trial in trials.items():
        said = decisions[number]
        assert "STOP" not in said[:-1], f"trial {number} went on after ASHA stopped it: {said}"
        if trial["status"] == "early_stopped":
            assert said[-1] == "STOP" and len(said) < 3, f"trial {number} stopped without ASHA's say-so: {said}"
        else:
            assert len(said) == 3, f"trial {number} completed without its full budget: {said}"


def kill_while_a_trial_is_mid_way(driver: Driver, sweep: Any, after: int) -> None:
    """SIGKILL right after a result, at least ``after`` of them in, that ASHA let go on: that trial is mid-way."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        log = events(driver.cwd)
        results = [e for e in log if e["kind"] == "trial_result"]
        if len(results) >= after:
            asha = make_scheduler(sweep.config)
            decision = "STOP"
            for event in sorted(results, key=lambda e: (e["seen_at"], e["seq"])):
                decision = asha.replay(event["number"], [event["metrics"]])  # type: ignore[attr-defined]
            latest = max(results, key=lambda e: (e["seen_at"], e["seq"]))
            if decision != "STOP" and latest["metrics"]["epoch"] < sweep.config.scheduler.max_epochs:
                driver.kill()
                return
        assert driver.process.poll() is None, f"the sweep ended first:\n{driver.output()}"
        time.sleep(0.05)
    raise AssertionError("no trial was mid-way in 180 s")


def continued_mid_way(log: List[Dict[str, Any]]) -> int:
    """How many times a trial went on after a restart from a later epoch than 1 (from its checkpoint)."""
    last_epoch: Dict[int, int] = {}
    restarted: set = set()
    count = 0
    for event in log:
        if event["kind"] == "session":
            restarted = set(last_epoch)
        elif event["kind"] == "trial_result":
            number, epoch = event["number"], int(event["metrics"]["epoch"])
            if number in restarted:
                count += epoch > 1
                restarted.discard(number)
            last_epoch[number] = epoch
    return count


@pytest.mark.timeout(600)
def test_killed_twice_and_resumed_runs_every_trial_exactly_once(tmp_path: Path, tiny_model: Path,
                                                                tiny_csv: Path) -> None:
    sweep_file = tmp_path / "chaos.yaml"
    sweep_file.write_text(ASHA)
    overrides = data_overrides(tiny_model, tiny_csv)
    sweep = compose(str(sweep_file), overrides)
    kills = sorted(random.Random(7).sample(range(1, 10), 2))  # at least this many results in, a trial mid-way
    driver = Driver(["run", str(sweep_file), *overrides], tmp_path)
    for after in kills:
        kill_while_a_trial_is_mid_way(driver, sweep, after)
        driver = Driver(["resume"], tmp_path)
    assert driver.wait() == 0, driver.output()
    assert re.search(r"registered as models:/chaos/1", driver.output())
    trials = assert_exactly_once(tmp_path, "chaos", planned=8)
    own = recipe(sweep.config, sweep.params)  # the recipe is trial 0, and no resume enqueues it again
    assert trials[0]["params"] == own and [t["params"] for t in trials.values()].count(own) == 1
    assert continued_mid_way(events(tmp_path)) >= 1, "a trial running at a kill went on from its checkpoint"
    assert_asha_consistent(trials, sweep)


SERIAL = ASHA.replace("num_trials: 8, max_concurrent: 2", "num_trials: 5, max_concurrent: 1")


def outcome(cwd: Path) -> List[Tuple[Any, ...]]:
    trials = search_trials(events(cwd))
    return [(n, t["params"], t["status"], [round(m["val/loss"], 6) for _, m in t["results"]])
            for n, t in sorted(trials.items())]


@pytest.mark.timeout(600)
def test_one_at_a_time_an_interrupted_sweep_ends_as_the_uninterrupted_one(tmp_path: Path, tiny_model: Path,
                                                                          tiny_csv: Path) -> None:
    overrides = data_overrides(tiny_model, tiny_csv)
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    for folder in (straight, broken):
        folder.mkdir()
        (folder / "serial.yaml").write_text(SERIAL)
    assert run_cli(["run", str(straight / "serial.yaml"), *overrides], straight).returncode == 0
    driver = Driver(["run", str(broken / "serial.yaml"), *overrides], broken)
    # during trial 0 (the next proposal is a random start-up one), then during a TPE-proposed trial
    for kill_at in (1, 7):
        driver.wait_for_results(kill_at)
        driver.kill()
        driver = Driver(["resume"], broken)
    assert driver.wait() == 0, driver.output()
    assert outcome(broken) == outcome(straight), "same sampled values, same statuses, same curves"


@pytest.mark.timeout(600)
def test_ctrl_c_stops_gracefully_twice_exits_at_once_and_resume_finishes(tmp_path: Path, tiny_model: Path,
                                                                         tiny_csv: Path) -> None:
    sweep_file = tmp_path / "calm.yaml"
    sweep_file.write_text(ASHA)
    driver = Driver(["run", str(sweep_file), *data_overrides(tiny_model, tiny_csv)], tmp_path)
    driver.wait_for_results(3)
    started = time.monotonic()
    driver.interrupt()
    assert driver.wait(timeout=120) == 130
    graceful = time.monotonic() - started
    assert graceful < 60, f"the first Ctrl-C took {graceful:.0f} s"
    command = re.search(r"Continue with: (finesweep resume \S+)", driver.output())
    assert command, driver.output()
    found = runs(uri(tmp_path), "calm")
    assert found["parents"][0].info.status == "KILLED"
    interrupted = [c for c in found["children"] if c.data.tags["finesweep.trial_status"] == "interrupted"]
    assert interrupted and all(c.info.status == "KILLED" for c in interrupted)
    assert not [c for c in found["children"] if c.info.status == "RUNNING"], "no run left RUNNING"
    listing = run_cli(["ls"], tmp_path, timeout=120)
    parent_id = found["parents"][0].info.run_id
    assert f"resume calm (killed): finesweep resume {parent_id[:8]}" in listing.stdout, listing.stdout

    driver = Driver(command.group(1).split()[1:], tmp_path)  # the exact command it printed
    driver.wait_for_results(results_now(tmp_path) + 2)
    started = time.monotonic()
    driver.interrupt()
    time.sleep(0.3)
    driver.interrupt()
    assert driver.wait(timeout=60) == 130
    assert time.monotonic() - started < 15, "the second Ctrl-C exits at once"

    assert run_cli(["resume", "calm"], tmp_path).returncode == 0
    assert_exactly_once(tmp_path, "calm", planned=8)


def results_now(cwd: Path) -> int:
    return sum(1 for e in events(cwd) if e["kind"] == "trial_result")


EXTEND = ASHA.replace("num_trials: 8", "num_trials: 4")


@pytest.mark.timeout(600)
def test_a_finished_sweep_resumes_to_nothing_and_extends_with_its_history(tmp_path: Path, tiny_model: Path,
                                                                          tiny_csv: Path) -> None:
    sweep_file = tmp_path / "grow.yaml"
    sweep_file.write_text(EXTEND)
    overrides = data_overrides(tiny_model, tiny_csv)
    assert run_cli(["run", str(sweep_file), *overrides], tmp_path).returncode == 0
    nothing = run_cli(["resume", "grow"], tmp_path)
    assert nothing.returncode == 0 and "is finished: 4 trials, nothing to resume" in nothing.stdout
    assert len(runs(uri(tmp_path), "grow")["children"]) == 4

    refused = run_cli(["resume", "grow", "search.num_trials=8", "optim.lr=0.1"], tmp_path)
    assert refused.returncode == 2 and "optim.lr: a resume continues the sweep as it was" in refused.stderr
    # The command that started it, with run changed to resume: the values it repeats are no change.
    extended = run_cli(["resume", "grow", *overrides, "search.num_trials=8"], tmp_path)
    assert extended.returncode == 0, extended.stderr + extended.stdout
    found = runs(uri(tmp_path), "grow")
    assert len(found["parents"]) == 1 and found["parents"][0].info.status == "FINISHED"
    search = sorted((c for c in found["children"] if c.data.tags["finesweep.phase"] == "search"),
                    key=lambda c: int(c.data.tags["finesweep.optuna_trial"]))
    assert [c.data.tags["finesweep.optuna_trial"] for c in search] == [str(n) for n in range(8)]
    assert found["parents"][0].data.tags["finesweep.registered_model"] == "grow/2", "selection ran again"

    # The searcher saw the first 4: a study holding exactly those 4 trials proposes trial 4 as it was.
    sweep = compose(str(sweep_file), [*overrides, "search.num_trials=8"])
    trials = search_trials(events(tmp_path))
    state = {"completed": optuna.trial.TrialState.COMPLETE, "early_stopped": optuna.trial.TrialState.PRUNED}
    past = [PastTrial(n, trials[n]["params"], state[trials[n]["status"]],
                      min(m["val/loss"] for _, m in trials[n]["results"]),
                      {int(m["epoch"]): m["val/loss"] for _, m in trials[n]["results"]}) for n in range(4)]
    study = rebuild_study(sweep.config.objective.mode, sweep.params, past)
    study.sampler = sampler_factory(sweep.config, sweep.params)(proposal_seed(sweep.config.search.seed, 4))
    assert suggest(study.ask(), sweep.params) == trials[4]["params"]
