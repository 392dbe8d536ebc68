"""Model selection: top-k with fresh seeds ranked by the mean, test split read only for the winner."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any, Dict, List

import pytest

from finesweep.config import ExperimentConfig, Mode
from finesweep.config.compose import compose
from finesweep.journal.records import TrialRecord, TrialStatus
from finesweep.selection import candidates, final_points, leaderboard, regroup, select
from finesweep.tasks import PreparedData
from finesweep.tasks.preparation import prepare_all


@pytest.fixture()
def config(tiny_model: Path, tiny_csv: Path) -> ExperimentConfig:
    return compose("demo", [f"model.name_or_path={tiny_model}", f"data.path={tiny_csv}", "data.label_column=label",
                            "data.max_samples=null", "data.max_length=16", "final.top_k=2", "final.seeds=3"]).config


def checkpoint_of(config: ExperimentConfig) -> str:
    """A checkpoint folder whose best weights are the tiny model (execution/checkpoints.py's layout)."""
    folder = Path(tempfile.mkdtemp(prefix="ckpt-"))
    (folder / "best").symlink_to(config.model.name_or_path)
    return str(folder)


def record(number: int, lr: float, values: List[float], checkpoint: str = "", phase: str = "search",
           seed: int = -1, status: TrialStatus = TrialStatus.completed) -> TrialRecord:
    params: Dict[str, Any] = {"optim.lr": lr} if seed < 0 else {"optim.lr": lr, "trainer.seed": seed}
    rec = TrialRecord(f"t{number}", number, params, phase=phase)
    for epoch, value in enumerate(values, start=1):
        rec.add_result({"val/accuracy": value, "epoch": float(epoch)}, "val/accuracy", Mode.max)
    rec.status, rec.checkpoint = status, checkpoint or None
    return rec


def test_candidates_are_distinct_top_k(config: ExperimentConfig) -> None:
    records = [record(0, 0.1, [0.9]), record(1, 0.1, [0.8]), record(2, 0.2, [0.85]),
               record(3, 0.3, [0.99], status=TrialStatus.failed)]
    top = candidates(records, config)
    assert [c.params for c in top] == [{"optim.lr": 0.1}, {"optim.lr": 0.2}]
    assert final_points(config, top, folds=0) == [{"optim.lr": 0.1, "trainer.seed": s} for s in (1, 2, 3)] + \
        [{"optim.lr": 0.2, "trainer.seed": s} for s in (1, 2, 3)]


def test_lucky_seed_does_not_win_and_only_the_winner_reads_test(config: ExperimentConfig, tmp_path: Path) -> None:
    cache = prepare_all(config, ())
    search = [record(0, 0.1, [0.95], "s0"), record(1, 0.2, [0.90], "s1")]
    # lr 0.1 was lucky in the search: re-trained with fresh seeds it averages 0.70; lr 0.2 averages 0.88.
    final = {0.1: [0.60, 0.70, 0.80], 0.2: [0.86, 0.88, 0.90]}
    retrained: List[List[Dict[str, Any]]] = []

    def retrain(points: List[Dict[str, Any]]) -> List[TrialRecord]:
        retrained.append(points)
        return [record(2 + i, p["optim.lr"], [final[p["optim.lr"]][p["trainer.seed"] - 1]],
                       str(tmp_path / f"w{i}"), "final", p["trainer.seed"]) for i, p in enumerate(points)]

    evaluated: List[tuple] = []

    def evaluate(cfg: ExperimentConfig, encoded: PreparedData, weights: Path, split: str) -> Dict[str, float]:
        evaluated.append((cfg.optim.lr, weights.name, split))
        assert encoded.test is not None
        return {"test/accuracy": 0.5 + 0.1 * len(evaluated)}

    import finesweep.selection as selection

    selection_latency = selection.measure_latency
    selection.measure_latency = lambda *a, **k: (1.5, "cpu")  # type: ignore[assignment]
    try:
        outcome = select(config, search, cache, retrain, evaluate)
    finally:
        selection.measure_latency = selection_latency  # type: ignore[assignment]
    assert outcome is not None and len(retrained[0]) == 6
    assert outcome.winner.params == {"optim.lr": 0.2}
    assert outcome.winner.mean == pytest.approx(0.88) and outcome.winner.std == pytest.approx(0.02)
    assert {lr for lr, _, _ in evaluated} == {0.2} and {s for _, _, s in evaluated} == {"test"}
    assert len(evaluated) == 3, "each of the winner's models is evaluated on test once; no other configuration"
    assert outcome.chosen.best_value == 0.90 and outcome.chosen.params["trainer.seed"] == 3
    board = leaderboard(outcome, "val/accuracy")
    assert [row["optim.lr"] for row in board] == [0.2, 0.1]
    assert board[0]["test/accuracy mean"] == pytest.approx(0.7) and "test/accuracy mean" not in board[1]


def test_without_reseeding_the_search_winner_is_evaluated_once(config: ExperimentConfig) -> None:
    config = dataclasses.replace(config, final=dataclasses.replace(config.final, seeds=0))
    cache = prepare_all(config, ())
    calls: List[str] = []
    search = [record(0, 0.1, [0.7, 0.9, 0.8], checkpoint_of(config)), record(1, 0.2, [0.85], "x")]
    outcome = select(config, search, cache, lambda p: pytest.fail("no re-training"),
                     lambda c, d, w, s: calls.append(s) or {"test/accuracy": 0.8})
    assert outcome is not None and calls == ["test"]
    assert outcome.chosen is search[0] and outcome.latency_ms > 0 and outcome.device == "cpu"


def test_reports_on_a_share_of_validation_are_scored_again_on_all_of_it_before_ranking(config: ExperimentConfig
                                                                                      ) -> None:
    # the search saw the first 5 validation rows only: lr 0.1 looked best there, lr 0.2 is best on the whole split
    config = dataclasses.replace(config, final=dataclasses.replace(config.final, seeds=0),
                                 data=dataclasses.replace(config.data, val_max_rows=5))
    cache = prepare_all(config, ())
    search = [record(0, 0.1, [0.9], checkpoint_of(config)), record(1, 0.2, [0.8], checkpoint_of(config)),
              record(2, 0.3, [0.95])]  # no checkpoint left: nothing to score again, and it cannot win
    whole = {0.1: 0.6, 0.2: 0.7}
    calls: List[tuple] = []

    def evaluate(cfg: ExperimentConfig, data: PreparedData, weights: Path, split: str) -> Dict[str, float]:
        calls.append((cfg.optim.lr, split))
        return {f"{split}/accuracy": whole[cfg.optim.lr] if split == "val" else 0.5}

    outcome = select(config, search, cache, lambda p: pytest.fail("no re-training"), evaluate)
    assert outcome is not None and outcome.winner.params == {"optim.lr": 0.2}
    assert outcome.winner.mean == pytest.approx(0.7), "the whole split's score ranks"
    assert sorted(calls) == [(0.1, "val"), (0.2, "test"), (0.2, "val")]
    assert search[0].best_value == 0.9, "the journal's records are left as reported"

    everything = dataclasses.replace(config, data=dataclasses.replace(config.data, val_max_rows=None))
    calls.clear()
    again = select(everything, search, cache, lambda p: pytest.fail("no re-training"), evaluate)
    assert again is not None and again.winner.params == {"optim.lr": 0.3} or again.winner.params == {"optim.lr": 0.1}
    assert [split for _, split in calls] == ["test"], "whole-split reports are not scored again"


def test_test_split_is_served_once_through_the_data_module(config: ExperimentConfig,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Real evaluation of real weights: count what the data module serves, not what is logged."""
    from finesweep.execution.trial import evaluate
    from finesweep.finetune.datamodule import PreparedDataModule

    config = dataclasses.replace(config, final=dataclasses.replace(config.final, seeds=0))
    cache = prepare_all(config, ())
    served: List[str] = []
    real_test, real_val = PreparedDataModule.test_dataloader, PreparedDataModule.val_dataloader
    monkeypatch.setattr(PreparedDataModule, "test_dataloader", lambda self: served.append("test") or real_test(self))
    monkeypatch.setattr(PreparedDataModule, "val_dataloader", lambda self: served.append("val") or real_val(self))
    weights = checkpoint_of(config)  # the saved 3-class tiny model stands in for a trial's best weights
    search = [record(0, 0.1, [0.6, 0.9], weights), record(1, 0.2, [0.85], weights), record(2, 0.3, [0.8], weights)]
    outcome = select(config, search, cache, lambda p: pytest.fail("no re-training"), evaluate)
    assert outcome is not None and outcome.chosen is search[0]
    assert served == ["test"], "the winner alone is evaluated, on the test split, exactly once"
    assert set(outcome.test_metrics) == {"test/loss", "test/accuracy", "test/f1_macro"}


def test_when_every_retraining_fails_the_search_best_wins_and_says_why(config: ExperimentConfig,
                                                                       tmp_path: Path) -> None:
    cache = prepare_all(config, ())
    search = [record(0, 0.1, [0.95], "s0"), record(1, 0.2, [0.90], "s1")]

    def retrain(points: List[Dict[str, Any]]) -> List[TrialRecord]:
        return [record(2 + i, p["optim.lr"], [], "", "final", p["trainer.seed"], status=TrialStatus.failed)
                for i, p in enumerate(points)]

    evaluated: List[str] = []
    import finesweep.selection as selection

    real_latency = selection.measure_latency
    selection.measure_latency = lambda *a, **k: (1.0, "cpu")  # type: ignore[assignment]
    try:
        outcome = select(config, search, cache, retrain,
                         lambda c, d, w, s: evaluated.append(w.parent.name) or {"test/accuracy": 0.7})
    finally:
        selection.measure_latency = real_latency  # type: ignore[assignment]
    assert outcome is not None, "a winner is registered although no re-training run finished"
    assert outcome.chosen is search[0] and evaluated == ["s0"]
    assert outcome.fallback == ("all 6 re-training runs failed, so the search's best trial is the winner "
                                "(validation score of one seed)")
    assert len(outcome.final_records) == 6


def test_regroup_ranks_only_healthy_reruns_and_leaves_the_search_candidates_alone(config: ExperimentConfig) -> None:
    search = [record(0, 0.1, [0.95], "s0"), record(1, 0.2, [0.90], "s1")]
    top = candidates(search, config)
    final = [record(2, 0.1, [0.99], "f2", "final", 1, status=TrialStatus.failed),  # a failure never counts
             record(3, 0.1, [0.50], "f3", "final", 2),
             record(4, 0.2, [0.80], "f4", "final", 1), record(5, 0.2, [0.70], "f5", "final", 2)]
    ranked_again = regroup(top, final, Mode.max)
    assert [c.params["optim.lr"] for c in ranked_again] == [0.2, 0.1]
    assert ranked_again[0].mean == pytest.approx(0.75) and [r.number for r in ranked_again[1].runs] == [3]
    assert [r.number for c in top for r in c.runs] == [0, 1], "the search's candidates keep their own runs"
    assert regroup(top, final[:1], Mode.max) == [], "no healthy re-run: nothing to rank"


RECIPE = {"optim.lr": 5e-5}
FOLD_SCORES = {0.1: [0.70, 0.72, 0.68], 0.2: [0.80, 0.82, 0.84], 5e-5: [0.78, 0.80, 0.80]}
"""lr 0.1 was lucky on the search's split; over 3 folds lr 0.2 is best, the recipe close behind."""


def cv_select(config: ExperimentConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scores: Dict[float, List],
              search: List[TrialRecord], prefer: str = "winner") -> tuple:
    import finesweep.selection as selection
    from finesweep.config import Prefer

    monkeypatch.setattr(selection, "measure_latency", lambda *a, **k: (1.0, "cpu"))
    config = dataclasses.replace(config, final=dataclasses.replace(config.final, seeds=0, prefer=Prefer(prefer)))
    cache = prepare_all(config, ())
    asked: List[List[Dict[str, Any]]] = []

    def retrain(points: List[Dict[str, Any]]) -> List[TrialRecord]:
        asked.append(points)
        runs = []
        for i, point in enumerate(points):
            run = record(10 + i, point["optim.lr"], [scores[point["optim.lr"]][point["data.fold"]]],
                         str(tmp_path / f"fold{i}"), "final")
            run.params["data.fold"] = point["data.fold"]
            runs.append(run)
        return runs

    evaluated: List[tuple] = []

    def evaluate(cfg: ExperimentConfig, data: PreparedData, weights: Path, split: str) -> Dict[str, float]:
        assert cfg.data.fold is None and data.test is not None, "the test split of the configured split"
        evaluated.append((cfg.optim.lr, weights.parent.name, split))
        return {"test/accuracy": 0.5}

    outcome = select(config, search, cache, retrain, evaluate, dict(RECIPE), folds=3)
    assert outcome is not None
    return outcome, asked, evaluated


def test_finalists_and_the_recipe_are_cross_validated_on_the_same_folds_and_ranked_by_their_mean(
        config: ExperimentConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    search = [record(0, 5e-5, [0.80], "s0"), record(1, 0.1, [0.95], "s1"), record(2, 0.2, [0.90], "s2")]
    outcome, asked, evaluated = cv_select(config, tmp_path, monkeypatch, FOLD_SCORES, search)
    (points,) = asked
    assert points == [{"optim.lr": lr, "data.fold": fold} for fold in range(3) for lr in (0.1, 0.2, 5e-5)], \
        "the top 2 and the recipe, fold by fold, each fold for every finalist (paired)"
    assert [c.params for c in outcome.candidates] == [{"optim.lr": 0.2}, RECIPE, {"optim.lr": 0.1}]
    assert outcome.winner.mean == pytest.approx(0.82) and outcome.registered is outcome.winner
    assert outcome.folds == 3 and outcome.recipe == RECIPE
    verdict = outcome.verdict
    assert verdict is not None and verdict.unit == "folds"
    assert verdict.differences == pytest.approx((0.02, 0.02, 0.04))
    assert verdict.outcome == "same", "+2.7 points over 3 folds is within the noise of 3 folds"
    assert sorted(evaluated) == [(0.2, f"fold{i}", "test") for i in (1, 4, 7)], "the winner's 3 models, test once"
    board = leaderboard(outcome, "val/accuracy")
    assert [(row["recipe"], row["registered"]) for row in board] == [(False, True), (True, False), (False, False)]


def test_a_cautious_user_gets_the_recipe_unless_the_winner_is_better_beyond_noise(
        config: ExperimentConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    search = [record(0, 5e-5, [0.80], "s0"), record(1, 0.1, [0.95], "s1"), record(2, 0.2, [0.90], "s2")]
    outcome, _, evaluated = cv_select(config, tmp_path, monkeypatch, FOLD_SCORES, search,
                                      prefer="recipe_unless_better")
    assert outcome.winner.params == {"optim.lr": 0.2} and outcome.registered.params == RECIPE
    assert {lr for lr, _, _ in evaluated} == {5e-5}, "only the registered configuration reads the test split"
    assert outcome.chosen.params["optim.lr"] == 5e-5
    clear = {**FOLD_SCORES, 5e-5: [0.50, 0.52, 0.55]}  # now the winner is better beyond noise
    outcome, _, _ = cv_select(config, tmp_path, monkeypatch, clear, search, prefer="recipe_unless_better")
    assert outcome.verdict is not None and outcome.verdict.outcome == "better"
    assert outcome.registered is outcome.winner and outcome.registered.params == {"optim.lr": 0.2}


def test_a_tie_with_the_recipe_goes_to_the_recipe(config: ExperimentConfig, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    search = [record(0, 0.2, [0.95], "s0"), record(1, 5e-5, [0.80], "s1"), record(2, 0.1, [0.90], "s2")]
    tied = {**FOLD_SCORES, 5e-5: [0.82, 0.80, 0.84]}  # the same mean as lr 0.2, which the search ranked first
    outcome, _, _ = cv_select(config, tmp_path, monkeypatch, tied, search)
    assert outcome.winner.params == RECIPE and outcome.winner.mean == pytest.approx(0.82)
    assert outcome.verdict is not None and "the winner is the recipe" in outcome.verdict.line()


def test_without_re_training_the_verdict_compares_one_score_each(config: ExperimentConfig, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import finesweep.selection as selection

    monkeypatch.setattr(selection, "measure_latency", lambda *a, **k: (1.0, "cpu"))
    config = dataclasses.replace(config, final=dataclasses.replace(config.final, seeds=0, top_k=1))
    cache = prepare_all(config, ())
    search = [record(0, 5e-5, [0.80], "s0"), record(1, 0.1, [0.85], "s1")]
    evaluate = lambda c, d, w, s: {"test/accuracy": 0.5}  # noqa: E731
    outcome = select(config, search, cache, lambda p: pytest.fail("no re-training"), evaluate, dict(RECIPE))
    assert outcome is not None and outcome.winner.params == {"optim.lr": 0.1}
    assert outcome.verdict is not None and outcome.verdict.unit == "split"
    assert outcome.verdict.differences == pytest.approx((0.05,)) and outcome.verdict.interval is None
    assert [c.params for c in outcome.candidates] == [{"optim.lr": 0.1}, RECIPE], "the recipe beside the top 1"
    never_ran = select(config, search[1:], cache, lambda p: pytest.fail("no re-training"), evaluate, dict(RECIPE))
    assert never_ran is not None and never_ran.verdict is None, "search.start_from_config=false: no recipe score"
    best_is_recipe = select(config, [record(0, 5e-5, [0.9], "s0"), search[1]], cache, lambda p: [], evaluate,
                            dict(RECIPE))
    assert best_is_recipe is not None and best_is_recipe.verdict is not None
    assert best_is_recipe.verdict.winner_is_recipe and "the winner is the recipe" in best_is_recipe.verdict.line()
