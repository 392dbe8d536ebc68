"""benchmarks/multiobjective.py: its hypervolume and fronts checked by hand, the surrogate's runtime against the
loader's curve, the per-epoch cost derived from it, and its core on a tiny budget with either cost: sane numbers,
the budget kept, MO-ASHA stopping trials, a per-epoch cost the same at every report."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import lcbench  # noqa: E402
import multiobjective as mo  # noqa: E402

CONFIG = {"batch_size": 64, "learning_rate": 0.01, "momentum": 0.5, "weight_decay": 0.01, "num_layers": 3,
          "max_units": 256, "max_dropout": 0.2}
DIPPING = {**CONFIG, "batch_size": 16, "num_layers": 5, "max_units": 1024}
"""The raw surrogate's time at epoch 2 is below epoch 1's for this one on the first task (60.0 s, then 54.8 s)."""


def test_the_hypervolume_is_the_area_under_the_normalised_front() -> None:
    # (0.8, 10 s) and (0.6, 5 s) against 20 s: rectangles 0.8 x (1 - 0.5) and 0.6 x (1 - 0.25), overlap 0.6 x 0.5
    assert mo.normalised_hypervolume([(0.8, 10.0), (0.6, 5.0)], 20.0) == pytest.approx(0.4 + 0.45 - 0.3)
    assert mo.normalised_hypervolume([(0.8, 10.0), (0.7, 12.0)], 20.0) == pytest.approx(0.4), "a dominated point"
    assert mo.normalised_hypervolume([(0.99, 25.0)], 20.0) == 0.0, "slower than the reference: nothing"
    assert mo.normalised_hypervolume([], 20.0) == 0.0


def test_a_front_holds_each_ended_trial_at_its_last_epoch() -> None:
    # trial 0 runs epochs 1-2, trial 1 epoch 1, trial 0 again epoch 3: epochs spent 1, 2, 3, 4
    results = [(0, 1, (0.5, 1.0)), (0, 2, (0.6, 2.0)), (1, 1, (0.7, 1.5)), (0, 3, (0.65, 3.0))]
    assert mo.front_points(results, 3) == [(0.7, 1.5)], "trial 0 is still running after 3 epochs"
    assert sorted(mo.front_points(results, 4)) == [(0.65, 3.0), (0.7, 1.5)]


def test_the_surrogates_runtime_is_cumulative_and_its_accuracy_the_loaders() -> None:
    task = lcbench.tasks()[0]
    curve = mo.timed_curves(task, [CONFIG, DIPPING])
    assert curve.shape == (2, mo.MAX_T, 2)
    np.testing.assert_allclose(curve[0, :, 0], lcbench.curve(task, CONFIG).accuracy[:mo.MAX_T], atol=1e-6)
    seconds = curve[0, :, 1]
    assert seconds[0] > 0 and np.all(np.diff(seconds) >= 0)
    assert seconds[2] < seconds[8] < seconds[26], "the seconds since training began (epoch 1 holds a start-up cost)"
    assert np.all(np.diff(curve[1, :, 1]) >= 0) and curve[1, 1, 1] == curve[1, 0, 1], "a dip is held level"
    assert mo.reference_seconds(task) > seconds[-1], "the slowest of 256 random configurations"


def test_the_per_epoch_cost_is_the_full_budgets_mean_at_every_epoch() -> None:
    task = lcbench.tasks()[0]
    timed = mo.timed_curves(task, [CONFIG, DIPPING])
    per_epoch = mo.cost_curves(task, [CONFIG, DIPPING], mo.Cost.per_epoch)
    np.testing.assert_array_equal(per_epoch[..., 0], timed[..., 0])
    for row in range(2):  # the cumulative seconds at epoch 27, over 27 epochs, already reported at epoch 1
        np.testing.assert_allclose(per_epoch[row, :, 1], np.full(mo.MAX_T, timed[row, 26, 1] / 27))
    np.testing.assert_array_equal(mo.cost_curves(task, [CONFIG], mo.Cost.cumulative), timed[:1])
    assert mo.reference_seconds(task, mo.Cost.per_epoch) == pytest.approx(mo.reference_seconds(task) / 27), \
        "the same 256 configurations, the slowest over 27 epochs is the slowest per epoch"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("cost", list(mo.Cost), ids=[c.value for c in mo.Cost])
def test_every_method_on_a_tiny_budget_gives_sane_hypervolumes_within_the_budget(cost: mo.Cost) -> None:
    budget = 4 * mo.MAX_T
    rows = mo.benchmark([lcbench.tasks()[0]], seeds=1, budget=budget, cost=cost)
    assert set(rows) == {m.name for m in mo.METHODS}
    for name, (run,) in rows.items():
        volumes = [run["hv"][f] for f in mo.FRACTIONS]
        assert all(0.0 <= v <= 1.0 for v in volumes), name
        assert volumes == sorted(volumes), f"{name}: the hypervolume fell as the budget grew"
        assert volumes[-1] > 0.5, f"{name}: a front better than half the box"
        assert run["spent"] == budget, name
    for method in mo.METHODS:
        run = rows[method.name][0]
        if method.asha:
            assert run["stopped"] >= run["trials"] // 2 and run["trials"] > 4, f"{method.name}: MO-ASHA stops trials"
        else:
            assert (run["stopped"], run["trials"]) == (0, 4), f"{method.name}: 4 full trials"
    printed = mo.table(rows, tasks=1, seeds=1, budget=budget, cost=cost).splitlines()
    assert len(printed) == 3 + len(mo.METHODS) and printed[3 + 2].startswith("| random | ")
    assert "| +0.000 [+0.000 to +0.000] |" in printed[3 + 2], "random minus itself"
    assert f"runtime cost {cost.value} (" in printed[0], "the title says which cost"


@pytest.mark.timeout(120)
def test_a_per_epoch_cost_is_the_same_at_every_report_of_a_trial() -> None:
    run = mo.search(lcbench.tasks()[0], mo.METHODS[0], seed=0, budget=4 * mo.MAX_T, cost=mo.Cost.per_epoch)
    costs: Dict[int, List[float]] = {}  # trial number -> every cost it reported
    for number, _, (_, seconds) in run.results:
        costs.setdefault(number, []).append(seconds)
    assert run.stopped > 0 and max(len(c) for c in costs.values()) >= 3, "trials stopped at different rungs"
    assert all(len(set(c)) == 1 for c in costs.values()), "a trial's per-epoch cost never changes"
