"""Multi-objective sweep files: the forms an objective may take, and each wrong one as one line."""

from __future__ import annotations

from pathlib import Path
from typing import List

import pytest

from finesweep.config import Mode
from finesweep.config.compose import compose
from finesweep.errors import UserError
from finesweep.tasks import get
from finesweep.tasks.preparation import check_objectives

SPACE = "space:\n  optim.lr: {distribution: loguniform, low: 1.0e-5, high: 1.0e-3}\n"
SEARCH = "search: {sampler: tpe, num_trials: 4}\n"
TWO = ("objective:\n  - {metric: val/accuracy, mode: max}\n  - {metric: inference/latency_ms, mode: min}\n")


def sweep(tmp_path: Path, body: str) -> str:
    path = tmp_path / "mo.yaml"
    path.write_text(body)
    return str(path)


def test_a_list_of_objectives_is_the_primary_and_the_rest(tmp_path: Path) -> None:
    objective = compose(sweep(tmp_path, TWO + SEARCH + SPACE), []).config.objective
    assert objective.terms == [("val/accuracy", Mode.max), ("inference/latency_ms", Mode.min)]
    assert objective.multi and not objective.constraints


def test_metrics_with_constraints_and_one_objective_with_a_constraint(tmp_path: Path) -> None:
    body = ("objective:\n  metrics: [{metric: val/accuracy, mode: max}, {metric: model/size_mb, mode: min}]\n"
            "  constraints: {inference/latency_ms: {max: 5.0}, model/size_mb: {min: 1, max: 100}}\n")
    objective = compose(sweep(tmp_path, body + SEARCH + SPACE), []).config.objective
    assert objective.metrics == ["val/accuracy", "model/size_mb"]
    assert objective.bounds == {"inference/latency_ms": (None, 5.0), "model/size_mb": (1.0, 100.0)}
    single = ("objective: {metric: val/accuracy, mode: max, constraints: {model/trainable_params: {max: 1000}}}\n")
    config = compose(sweep(tmp_path, single + SEARCH + SPACE), ["scheduler.stop_infeasible=true"]).config
    assert not config.objective.multi and config.objective.watched == ["val/accuracy", "model/trainable_params"]


def test_a_single_objective_sweep_reads_as_before(tmp_path: Path) -> None:
    config = compose("demo", []).config
    assert config.objective.terms == [("val/accuracy", Mode.max)] and not config.objective.multi


BAD = [
    ("unknown-cost", "objective:\n  - {metric: val/accuracy, mode: max}\n  - {metric: inference/energy_j, mode: min}\n",
     [], "objective[1].metric must be a metric every trial reports"),
    ("mode-missing", "objective:\n  - {metric: val/accuracy, mode: max}\n  - {metric: inference/latency_ms}\n", [],
     "objective[1].mode is required"),
    ("mo-with-grid", TWO, ["search.sampler=grid"], "search.sampler cannot search 2 objectives"),
    ("grid-with-a-constraint", "objective: {metric: val/accuracy, mode: max, constraints: {model/size_mb: {max: 1}}}\n",
     ["search.sampler=grid"], "search.sampler cannot honour objective.constraints"),
    ("constraint-on-unknown", "objective: {metric: val/accuracy, mode: max, constraints: {val/speed: {max: 1}}}\n",
     [], "objective.constraints.val/speed must be a metric every trial reports"),
    ("empty-bound", "objective: {metric: val/accuracy, mode: max, constraints: {model/size_mb: {}}}\n", [],
     "objective.constraints.model/size_mb must set max, min or both"),
    ("stop-without-constraints", TWO, ["scheduler.stop_infeasible=true"],
     "scheduler.stop_infeasible needs objective.constraints"),
    ("select-not-an-objective", TWO, ["+final.select.metric=val/f1_macro"],
     "final.select must name one of the objectives"),
    ("knee-of-one", "objective: {metric: val/accuracy, mode: max}\n", ["final.select=knee"],
     "final.select needs several objectives"),
]


@pytest.mark.parametrize("body,overrides,message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_a_wrong_objective_is_one_line(tmp_path: Path, body: str, overrides: List[str], message: str) -> None:
    with pytest.raises(UserError) as caught:
        compose(sweep(tmp_path, body + SEARCH + SPACE), overrides)
    assert message in str(caught.value) and "\n" not in str(caught.value), str(caught.value)
    assert str(caught.value).startswith(str(tmp_path / "mo.yaml")) or "mo.yaml" in str(caught.value)


def test_a_constraint_on_a_metric_the_task_does_not_report_is_refused_before_trials(tmp_path: Path) -> None:
    body = "objective: {metric: val/accuracy, mode: max, constraints: {val/entity_f1: {min: 0.5}}}\n"
    config = compose(sweep(tmp_path, body + SEARCH + SPACE), []).config
    with pytest.raises(UserError, match=r"objective\.constraints\.val/entity_f1: val/entity_f1 is not reported for a "
                                        r"classification task"):
        check_objectives(get("classification"), config)
    probe = TWO.replace("inference/latency_ms", "probe/perplexity_increase")
    config = compose(sweep(tmp_path, probe + SEARCH + SPACE), []).config
    with pytest.raises(UserError, match="measured only by the forgetting probe"):
        check_objectives(get("classification"), config)
