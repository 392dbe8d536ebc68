"""Model selection of a multi-objective sweep: the feasible Pareto front is the finalists, the winner is the best by
``final.select`` or the knee, an infeasible configuration is never selected."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Dict, List

import pytest

from finesweep.config import ExperimentConfig, Mode
from finesweep.config.compose import compose
from finesweep.journal.front import pareto_front
from finesweep.journal.records import TrialRecord, TrialStatus
from finesweep.selection import candidates, select
from finesweep.tasks import PreparedData
from finesweep.tasks.preparation import prepare_all

LATENCY = "inference/latency_ms"


def sweep(tmp_path: Path, tiny_model: Path, tiny_csv: Path, *extra: str) -> ExperimentConfig:
    body = ("objective:\n  metrics: [{metric: val/accuracy, mode: max}, {metric: inference/latency_ms, mode: min}]\n"
            "  constraints: {inference/latency_ms: {max: 5.0}}\n"
            "search: {sampler: nsga2, num_trials: 8}\n"
            "space:\n  optim.lr: {distribution: loguniform, low: 1.0e-5, high: 1.0}\n")
    path = tmp_path / "front.yaml"
    path.write_text(body)
    return compose(str(path), [f"model.name_or_path={tiny_model}", f"data.path={tiny_csv}", "data.label_column=label",
                               "data.max_samples=null", "data.max_length=16", *extra]).config


def record(number: int, lr: float, accuracy: float, latency: float, checkpoint: str = "") -> TrialRecord:
    rec = TrialRecord(f"t{number}", number, {"optim.lr": lr})
    # a worse first epoch: the point is the best epoch's, by the primary objective
    rec.add_result({"val/accuracy": accuracy - 0.2, LATENCY: latency, "epoch": 1.0}, "val/accuracy", Mode.max)
    rec.add_result({"val/accuracy": accuracy, LATENCY: latency, "epoch": 2.0}, "val/accuracy", Mode.max)
    rec.status, rec.checkpoint = TrialStatus.completed, checkpoint or tempfile.mkdtemp(prefix="ckpt-")
    return rec


TRIALS = [  # (accuracy, latency): 0, 1 and 3 form the feasible front; 2 is dominated by 1; 4 is fastest but too slow
    (0.90, 4.0), (0.80, 1.0), (0.70, 2.0), (0.85, 3.0), (0.95, 9.0)]


def trials() -> List[TrialRecord]:
    return [record(n, 10.0 ** -(n + 1), a, lat) for n, (a, lat) in enumerate(TRIALS)]


def test_the_finalists_are_the_feasible_front(tmp_path: Path, tiny_model: Path, tiny_csv: Path) -> None:
    config = sweep(tmp_path, tiny_model, tiny_csv)
    records = trials()
    assert [r.number for r in pareto_front(records, config.objective)] == [0, 3, 1]  # best accuracy first
    assert [c.runs[0].number for c in candidates(records, config)] == [0, 3, 1]
    brute = {r.number for r in records if r.at_best[LATENCY] <= 5.0 and not any(
        o.at_best["val/accuracy"] >= r.at_best["val/accuracy"] and o.at_best[LATENCY] <= r.at_best[LATENCY]
        and o is not r and o.at_best[LATENCY] <= 5.0 for o in records)}
    assert brute == {0, 1, 3}


@pytest.mark.parametrize("extra,winner", [((), 0), (("+final.select.metric=inference/latency_ms",), 1),
                                          (("final.select=knee",), 3)])
def test_the_winner_is_the_best_by_final_select_or_the_knee_and_always_feasible(
        extra: tuple, winner: int, tmp_path: Path, tiny_model: Path, tiny_csv: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    config = sweep(tmp_path, tiny_model, tiny_csv, *extra)
    cache = prepare_all(config, ())

    def evaluate(cfg: ExperimentConfig, encoded: PreparedData, weights: Path, split: str) -> Dict[str, Any]:
        return {"test/accuracy": 0.5}

    import finesweep.selection as selection

    monkeypatch.setattr(selection, "measure_latency", lambda *a, **k: (1.0, "cpu"))
    outcome = select(config, trials(), cache, lambda points: [], evaluate, recipe={"optim.lr": 1e-5})
    assert outcome is not None
    assert outcome.chosen.number == winner  # trial 4, the most accurate, breaks the latency bound
    assert {c.runs[0].number for c in outcome.candidates} == {0, 1, 3}
    assert outcome.recipe_infeasible  # the recipe (lr 1e-5 = trial 4's) is too slow: it is not compared
    assert outcome.metric == ("inference/latency_ms" if "select.metric" in " ".join(extra) else "val/accuracy")
