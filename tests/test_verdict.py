"""The verdict against the recipe and what a validation split can resolve, checked against hand computations with
t-table quantiles (t(0.975, 4) = 2.776445, t(0.975, 2) = 4.302653)."""

from __future__ import annotations

import dataclasses
import math
import statistics

import pytest

from finesweep.config import ExperimentConfig, Mode
from finesweep.config.compose import compose
from finesweep.verdict import Verdict, mean_interval, resolution

DIFFS = [0.02, 0.05, -0.01, 0.04, 0.03]
T_4, T_2 = 2.776445, 4.302653


def test_the_paired_t_interval_matches_a_hand_computation() -> None:
    mean, spread = statistics.fmean(DIFFS), statistics.stdev(DIFFS)
    assert (mean, round(spread, 6)) == (pytest.approx(0.026), 0.023022)
    low, high = mean_interval(DIFFS)  # type: ignore[misc]
    assert low == pytest.approx(mean - T_4 * spread / math.sqrt(5), abs=1e-6)
    assert high == pytest.approx(mean + T_4 * spread / math.sqrt(5), abs=1e-6)
    assert (round(low, 4), round(high, 4)) == (-0.0026, 0.0546)


def test_over_folds_the_interval_is_nadeau_bengio_corrected() -> None:
    """K-fold training sets overlap: the variance of the mean is (1/K + 1/(K-1)) s^2, not s^2/K."""
    mean, spread = statistics.fmean(DIFFS), statistics.stdev(DIFFS)
    low, high = mean_interval(DIFFS, corrected=True)  # type: ignore[misc]
    half = T_4 * spread * math.sqrt(1 / 5 + 1 / 4)
    assert (low, high) == (pytest.approx(mean - half, abs=1e-6), pytest.approx(mean + half, abs=1e-6))
    three = [0.1, 0.0, 0.05]
    low, high = mean_interval(three, corrected=True)  # type: ignore[misc]
    assert high - low == pytest.approx(2 * T_2 * statistics.stdev(three) * math.sqrt(1 / 3 + 1 / 2), abs=1e-6)
    assert mean_interval([0.3]) is None and mean_interval([]) is None


@pytest.mark.parametrize("mode", [Mode.max, Mode.min])
def test_the_verdict_flips_exactly_when_the_interval_excludes_zero(mode: Mode) -> None:
    noise = [-0.02, 0.01, 0.0, 0.02, -0.01]  # mean 0: the interval is shift +- half
    half = T_4 * statistics.stdev(noise) * math.sqrt(1 / 5 + 1 / 4)
    gain = 1 if mode is Mode.max else -1  # for a loss, lower is better

    def outcome(shift: float) -> str:
        return Verdict("val/x", mode, tuple(shift + e for e in noise), "folds", False).outcome

    assert outcome(gain * half * 0.999) == "same"
    assert outcome(gain * half * 1.001) == "better"
    assert outcome(-gain * half * 0.999) == "same"
    assert outcome(-gain * half * 1.001) == "worse"
    assert outcome(0.0) == "same"


def test_the_verdict_line_says_the_difference_interval_units_and_judgement() -> None:
    verdict = Verdict("val/accuracy", Mode.max, (0.02, 0.05, -0.01, 0.04, 0.03), "folds", True, 40)
    low, high = verdict.interval  # type: ignore[misc]
    assert verdict.line() == (f"winner vs recipe: +2.6 points val/accuracy [{100 * low:+.1f} points, "
                              f"{100 * high:+.1f} points] on 5 folds (95% Nadeau-Bengio corrected t-interval): "
                              "not distinguishable from the recipe")
    assert verdict.metrics() == {"vs_recipe/val/accuracy/diff": pytest.approx(0.026), "vs_recipe/units": 5.0,
                                 "vs_recipe/val/accuracy/low": low, "vs_recipe/val/accuracy/high": high}
    seeds = Verdict("val/loss", Mode.min, (-0.2, -0.21, -0.19), "seeds", False)
    assert seeds.line().startswith("winner vs recipe: -0.2 val/loss [-0.2248, -0.1752] on 3 seeds (95% paired "
                                   "t-interval, training noise only: every seed validates on the same rows): better "
                                   "than the recipe beyond noise")
    one = Verdict("val/accuracy", Mode.max, (0.05,), "split", True, 40)
    assert one.line() == ("winner vs recipe: +5.0 points val/accuracy on one validation split (40 rows; one row = "
                          "2.5 points); no interval from one score each: set final.cv_folds (or final.seeds) to judge "
                          "it")
    assert one.outcome == "same" and "vs_recipe/val/accuracy/low" not in one.metrics()
    same = Verdict("val/accuracy", Mode.max, (0.0, 0.0, 0.0), "folds", True, winner_is_recipe=True)
    assert same.line() == ("winner vs recipe: the winner is the recipe (no searched configuration ranked above it "
                           "over 3 folds)")


@pytest.fixture(scope="module")
def config() -> ExperimentConfig:
    return compose("demo", []).config


def test_resolution_says_how_coarse_the_validation_split_is_and_what_to_do(config: ExperimentConfig) -> None:
    assert resolution(config, (320, 40, 40), points=True) == (
        "validation split: 40 rows (train 320, test 40); one row moves val/accuracy by ~2.5 points: coarse for "
        "ranking configurations (under 200 rows). final.cv_folds=auto ranks the finalists on 5 folds of the 360 "
        "train + validation rows")
    auto = dataclasses.replace(config, final=dataclasses.replace(config.final, cv_folds="auto"))
    assert resolution(auto, (320, 40, 40), points=True).endswith(
        "; the finalists and the recipe are cross-validated on 5 folds of the 360 train + validation rows "
        "(final.cv_folds=auto)")
    assert resolution(auto, (8000, 1000, 1000), points=True) == (
        "validation split: 1000 rows (train 8000, test 1000); one row moves val/accuracy by ~0.1 points")
    loss = dataclasses.replace(config, objective=dataclasses.replace(config.objective, metric="val/loss"))
    assert resolution(loss, (8000, 1000, 1000), points=False) == "validation split: 1000 rows (train 8000, test 1000)"
    assert auto.final.folds(199) == 5 and auto.final.folds(200) == 0


def test_one_row_worth_one_point_is_said_in_the_singular() -> None:
    from finesweep.config import Mode
    from finesweep.verdict import Verdict

    line = Verdict("val/accuracy", Mode.max, (0.05,), "split", True, 100, False).line()
    assert "(100 rows; one row = 1 point)" in line
