"""The benchmarks: their measures checked by hand, the LCBench loader against the surrogate, and each one's
quick mode run from the command line as `make bench` runs it (tables printed, search efficiency's claim held)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import lcbench  # noqa: E402
import search_efficiency as se  # noqa: E402
import selection_noise  # noqa: E402

# Trial 0 reports at epochs 4 and 12, trial 1 at 4, trial 0 again at 36.
RESULTS = [(0, 4, 0.5), (0, 12, 0.6), (1, 4, 0.7), (0, 36, 0.65)]


def test_compute_is_counted_in_epochs_each_trial_from_where_it_was() -> None:
    assert se.spent_epochs(RESULTS) == [4, 12, 16, 40]  # 4, +8, +4, +24
    assert se.cut(RESULTS, 16) == RESULTS[:3]


def test_best_so_far_and_the_compute_to_reach_a_target() -> None:
    assert math.isnan(se.best_by(RESULTS, 3))
    assert se.best_by(RESULTS, 12) == 0.6 and se.best_by(RESULTS, 40) == 0.7
    assert se.epochs_to_reach(RESULTS, 0.6) == 12 and se.epochs_to_reach(RESULTS, 0.7) == 16
    assert se.epochs_to_reach(RESULTS, 0.71) is None


def test_the_simulated_true_score_is_the_expected_accuracy_and_cross_validation_picks_worse_less_often() -> None:
    import numpy as np

    setting = selection_noise.Setting()
    task = selection_noise.Task(setting, np.random.default_rng(0))
    rng = np.random.default_rng(1)  # Monte Carlo of the same expectation the quadrature computes
    difficulty = rng.normal(0.0, 1.5, 400_000) - rng.normal(0.0, setting.seed_noise, 400_000)
    for ability, true in zip(task.abilities[:3], task.true[:3], strict=True):
        assert true == pytest.approx(float(selection_noise.sigmoid(ability - difficulty).mean()), abs=2e-3)
    table = selection_noise.simulate(setting, tasks=300, seed=0)
    assert table["one split"]["worse"] < table["one split, no recipe trial"]["worse"], "the recipe as trial 0"
    assert table["K folds"]["worse"] < table["one split"]["worse"] / 2
    assert table["K folds, recipe unless better"]["worse"] <= 0.01
    # the top 3 and the recipe (3 finalists when the recipe is one of the top 3), 5 folds each, after 10 trials
    assert setting.trials + 3 * setting.folds < table["K folds"]["runs"] <= setting.trials + 4 * setting.folds


def test_regret_is_zero_at_the_optimum_and_one_at_a_typical_configuration() -> None:
    assert se.regret(0.9, optimum=0.9, typical=0.5) == 0.0
    assert se.regret(0.5, optimum=0.9, typical=0.5) == 1.0
    assert se.regret(0.8, optimum=0.9, typical=0.5) == pytest.approx(0.25)
    assert se.regret(0.95, optimum=0.9, typical=0.5) == 0.0, "never below zero"


def test_the_lcbench_surrogate_gives_curves_that_rise_for_a_sound_config() -> None:
    assert len(lcbench.tasks()) == 34 and "3945" in lcbench.tasks()
    assert set(lcbench.space()) == set(lcbench.HYPERPARAMETERS)
    assert lcbench.space()["learning_rate"]["distribution"] == "loguniform"
    sound = {"batch_size": 64, "learning_rate": 3e-3, "momentum": 0.9, "weight_decay": 1e-3, "num_layers": 2,
             "max_units": 512, "max_dropout": 0.1}
    poor = {"batch_size": 512, "learning_rate": 1e-4, "momentum": 0.1, "weight_decay": 0.1, "num_layers": 5,
            "max_units": 64, "max_dropout": 0.9}
    good, bad = lcbench.curve("3945", sound), lcbench.curve("3945", poor)
    assert good.accuracy.shape == good.loss.shape == (lcbench.EPOCHS,)
    assert ((0 <= good.accuracy) & (good.accuracy <= 1)).all()
    assert good.accuracy[-1] > good.accuracy[0] + 0.3 and good.loss[-1] < good.loss[0]
    assert good.accuracy[-1] > bad.accuracy[-1] + 0.3
    assert (lcbench.curve("3945", sound).accuracy == good.accuracy).all(), "deterministic"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_search_efficiency_quick_mode_finds_the_default_better_than_random(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "search_efficiency.py"), "--quick"],
                            capture_output=True, text=True, timeout=580, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for method in se.METHODS:
        assert f"| {method.name} |" in result.stdout
    assert f"{se.OURS} beats random on the median" in result.stdout


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_trial_throughput_quick_mode_prints_its_table(tmp_path: Path, tiny_model: Path, tiny_csv: Path) -> None:
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "trial_throughput.py"), "--quick",
                             "--model", str(tiny_model), "--data", str(tiny_csv)],
                            capture_output=True, text=True, timeout=280, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| 32-true") or line.startswith("| bf16")]
    assert rows and all(float(line.split("|")[4].strip().rstrip("x")) > 0 for line in rows)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_image_throughput_quick_mode_prints_its_table(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "image_throughput.py"), "--quick"],
                            capture_output=True, text=True, timeout=280, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| tiny ViT")]
    # images/s bare and finesweep, their ratio, then the same three for the whole trial
    assert len(rows) == 1 and all(float(cell.strip().rstrip("x")) > 0 for cell in rows[0].split("|")[5:11])


def test_the_real_trial_overhead_case_runs_the_same_sweep_on_both_sides(tmp_path: Path) -> None:
    """finesweep's side of overhead.py --real composes and validates, with the hand-written script's sizes."""
    import handwritten_finetune as hand
    import overhead

    from finesweep.config.compose import compose

    sweep = tmp_path / "real.yaml"
    sweep.write_text(overhead.REAL_SWEEP.format(samples=hand.MAX_SAMPLES, length=hand.MAX_LENGTH, batch=hand.BATCH,
                                                trials=hand.TRIALS, concurrent=hand.CONCURRENT, epochs=hand.EPOCHS))
    composed = compose(str(sweep), ["cluster.cpus_per_trial=1"])
    config = composed.config
    assert (config.search.num_trials, config.search.max_concurrent, config.scheduler.max_epochs) == \
        (hand.TRIALS, hand.CONCURRENT, hand.EPOCHS)
    assert (config.data.max_samples, config.data.max_length, config.data.batch_size) == \
        (hand.MAX_SAMPLES, hand.MAX_LENGTH, hand.BATCH)
    assert config.scheduler.kind.value == "fifo" and {p.key for p in composed.params} == {"optim.lr",
                                                                                          "optim.weight_decay"}
    assert (config.data.text_column, config.data.label_column) == (hand.TEXT, hand.LABEL)


def test_the_priors_come_from_the_best_5_and_the_worst_25_percent_of_the_tasks_own_table() -> None:
    rows = lcbench.table("3945")
    assert len(rows) == 1000 and rows[0][0] >= rows[-1][0]
    good, misleading = lcbench.prior("3945", "good"), lcbench.prior("3945", "misleading")
    best = lambda config: float(lcbench.curve("3945", config).accuracy.max())  # noqa: E731
    assert best(good) >= rows[49][0] and best(misleading) <= rows[750][0]
    assert lcbench.prior("3945", "good") == good, "the same prior for every method and seed"
    assert lcbench.prior("7593", "good") != good


def test_a_prior_search_composes_with_every_key_at_its_prior_and_runs_the_mode_first(tmp_path: Path) -> None:
    from unittest import mock

    import finesweep.config.preflight
    import finesweep.config.space
    from finesweep.config.compose import compose
    from finesweep.config.recipe import start_points

    method = next(m for m in se.PRIORS if m.peer is None and m.prior == "good")
    path = tmp_path / "prior.yaml"
    path.write_text(se.sweep_yaml("3945", method, 0, 400))
    with mock.patch.object(finesweep.config.space, "_check_key"), \
            mock.patch.object(finesweep.config.space, "_check_types"), \
            mock.patch.object(finesweep.config.preflight, "check_values"):
        sweep = compose(str(path), [])
    prior = lcbench.prior("3945", "good")
    assert {p.key: p.prior for p in sweep.params} == pytest.approx(prior, rel=1e-8)
    assert all(p.prior_confidence.value == "medium" for p in sweep.params)
    (first,) = start_points(sweep.config, sweep.params)
    assert first == pytest.approx(prior, rel=1e-8)
