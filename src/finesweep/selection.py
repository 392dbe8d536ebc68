"""Model selection after the search, done the way a careful practitioner would.

1. The search only ever saw train and validation data (trials never receive the test split).
2. With ``final.seeds > 0`` the ``final.top_k`` best configurations are re-trained with fresh seeds
   and ranked by their mean validation score, so a lucky seed does not win.
3. Only then is the winning configuration evaluated on the test split: once per model of the
   winner (once in total without re-training). No other configuration ever touches it.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from finesweep.config import ExperimentConfig, Mode
from finesweep.config.overrides import with_overrides
from finesweep.finetune.layout import best_weights
from finesweep.journal.records import TrialRecord, ranked
from finesweep.tasks import DataCache, PreparedData

SEED_KEY = "trainer.seed"


@dataclass
class Candidate:
    """One configuration in the final ranking, with every run that scored it."""

    params: Dict[str, Any]
    runs: List[TrialRecord]
    test: List[Dict[str, float]] = field(default_factory=list)

    @property
    def scores(self) -> List[float]:
        """Best objective value of each run."""
        return [r.best_value for r in self.runs if r.best_value is not None]

    @property
    def mean(self) -> float:
        """Mean of the runs' best objective values."""
        return statistics.fmean(self.scores) if self.scores else float("nan")

    @property
    def std(self) -> float:
        """Sample standard deviation of the runs' best values (0 for a single run)."""
        return statistics.stdev(self.scores) if len(self.scores) > 1 else 0.0


@dataclass
class Selection:
    """The outcome of model selection."""

    candidates: List[Candidate]
    """Ranked, best first; candidates[0] is the winning configuration."""
    chosen: TrialRecord
    """The run whose weights are the winner's model (best validation among the winner's runs)."""
    test_metrics: Dict[str, float]
    """Test metrics of the chosen model."""
    final_records: List[TrialRecord]
    latency_ms: float
    device: str
    fallback: str = ""
    """Why the search's own best trial won instead of a re-trained one (every re-training run failed); else empty."""

    @property
    def winner(self) -> Candidate:
        """The winning configuration."""
        return self.candidates[0]


def candidates(records: Sequence[TrialRecord], config: ExperimentConfig) -> List[Candidate]:
    """The top-k distinct configurations of the search, best first (``ranked``: failed trials never compete)."""
    chosen: List[Candidate] = []
    for record in ranked(records, config.objective.mode):
        if all(c.params != record.params for c in chosen):
            chosen.append(Candidate(dict(record.params), [record]))
        if len(chosen) == config.final.top_k:
            break
    return chosen


def seed_points(config: ExperimentConfig, ranked_candidates: Sequence[Candidate]) -> List[Dict[str, Any]]:
    """Each candidate's values once per fresh seed (seeds the search never used)."""
    seeds = [config.trainer.seed + 1 + i for i in range(config.final.seeds)]
    return [{**c.params, SEED_KEY: seed} for c in ranked_candidates for seed in seeds]


def regroup(ranked_candidates: Sequence[Candidate], final_records: Sequence[TrialRecord],
            mode: Mode) -> List[Candidate]:
    """New candidates holding only their successful re-training runs, ranked by the mean; none left = empty."""
    healthy = ranked(final_records, mode)
    regrouped = [Candidate(c.params, [r for r in healthy if _without_seed(r.params) == c.params])
                 for c in ranked_candidates]
    return sorted([c for c in regrouped if c.runs], key=lambda c: mode.rank_key(c.mean))


def select(config: ExperimentConfig, records: Sequence[TrialRecord], cache: DataCache,
           retrain: Callable[[List[Dict[str, Any]]], List[TrialRecord]],
           evaluate: Callable[[ExperimentConfig, PreparedData, Path, str], Dict[str, float]]) -> Optional[Selection]:
    """Run model selection; None when no trial produced a checkpoint.

    Args:
        config: the sweep's config.
        records: the search's trials.
        cache: the full data, test split included (the driver's copy).
        retrain: runs fixed configurations (values incl. ``trainer.seed``) to their full budget and returns
            their records (a resumed sweep reuses the runs it already has).
        evaluate: computes ``<split>/<metric>`` of saved weights on a split.
    """
    ranked_candidates = candidates(records, config)
    final_records: List[TrialRecord] = []
    fallback = ""
    if config.final.seeds > 0 and ranked_candidates:
        final_records = retrain(seed_points(config, ranked_candidates))
        regrouped = regroup(ranked_candidates, final_records, config.objective.mode)
        if regrouped:
            ranked_candidates = regrouped
        else:  # the search's checkpoints still exist: its best trial is a sound, if less certain, winner
            fallback = (f"all {len(final_records)} re-training runs failed, so the search's best trial is the "
                        "winner (validation score of one seed)")
    ranked_candidates = [c for c in ranked_candidates if any(r.checkpoint for r in c.runs)]
    if not ranked_candidates:
        return None
    winner = ranked_candidates[0]
    winner_config = with_overrides(config, winner.params)
    data = cache.for_config(winner_config)
    for run in winner.runs:  # the only place the test split is read
        if run.checkpoint:
            winner.test.append(evaluate(winner_config, data, best_weights(run.checkpoint), "test"))
    chosen = _best_run(winner.runs, config.objective.mode)
    test_metrics = winner.test[[r for r in winner.runs if r.checkpoint].index(chosen)]
    latency, device = measure_latency(best_weights(str(chosen.checkpoint)), data, winner_config.data.batch_size)
    return Selection(ranked_candidates, chosen, test_metrics, final_records, latency, device, fallback)


Evaluate = Callable[[ExperimentConfig, PreparedData, Path, str], Dict[str, float]]
"""Computes ``<split>/<metric>`` of saved weights on a split."""


def baseline_metrics(config: ExperimentConfig, chosen: Selection, baseline: Optional[TrialRecord], cache: DataCache,
                     evaluate: Evaluate) -> Dict[str, float]:
    """What the sweep bought: the baseline run's validation and test metrics, and the winner's gain over them.

    The baseline is the composed config without any searched value (the user's default recipe), trained
    once after the search and never ranked. ``gain/*`` is winner minus baseline (for a loss, negative is
    better); ``gain/<metric>/winner_std`` is the winner's spread over seeds, to judge the gain by.

    Raises:
        RuntimeError: the baseline run failed or saved no checkpoint.
    """
    metric = config.objective.metric
    if baseline is None or baseline.best_value is None or not baseline.checkpoint or baseline.error:
        raise RuntimeError(f"the baseline run (the config without searched values) did not finish"
                             f"{f': {baseline.error}' if baseline is not None and baseline.error else ''}")
    test = evaluate(config, cache.for_config(config), best_weights(baseline.checkpoint), "test")
    metrics = {f"baseline/{metric}": baseline.best_value, **{f"baseline/{k}": v for k, v in test.items()},
               f"gain/{metric}": chosen.winner.mean - baseline.best_value,
               f"gain/{metric}/winner_std": chosen.winner.std}
    metrics.update({f"gain/{k}": v - test[k] for k, v in chosen.test_metrics.items() if k in test})
    return metrics


def leaderboard(selection: Selection, metric: str) -> List[Dict[str, Any]]:
    """Rows of the final ranking: values, runs, mean +- std of validation (and test for the winner)."""
    rows = []
    for rank, candidate in enumerate(selection.candidates, start=1):
        row: Dict[str, Any] = {"rank": rank, **candidate.params, "runs": len(candidate.runs),
                               f"val {metric} mean": candidate.mean, f"val {metric} std": candidate.std}
        for name, (mean, std) in test_summary(candidate).items():
            row[f"{name} mean"], row[f"{name} std"] = mean, std
        rows.append(row)
    return rows


def test_summary(candidate: Candidate) -> Dict[str, Tuple[float, float]]:
    """Mean and std of each test metric over the candidate's evaluated runs (the winner only)."""
    if not candidate.test:
        return {}
    summary = {}
    for name in candidate.test[0]:
        values = [t[name] for t in candidate.test]
        summary[name] = (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
    return summary


def measure_latency(weights: Path, data: PreparedData, batch_size: int, examples: int = 256) -> Tuple[float, str]:
    """Milliseconds per example of the saved model's forward pass on validation batches, and the device.

    The batches are the task's own (``Task.collate``: text cut to each batch's longest row, as in training),
    so the latency is the served model's.
    """
    import torch

    task = data.task
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = task.load_trained(weights, data).to(device).eval()
    count = min(examples, len(data.val))
    batches = [_on(task.collate(data.val, range(i, min(i + batch_size, count)))["features"], device)
               for i in range(0, count, batch_size)]
    with torch.no_grad():
        task.forward(model, batches[0])  # warm-up
        start = time.perf_counter()
        for batch in batches:
            task.forward(model, batch)
        if device == "cuda":
            torch.cuda.synchronize()
    return 1000.0 * (time.perf_counter() - start) / max(1, count), device


def _on(features: Dict[str, Any], device: str) -> Dict[str, Any]:
    return {name: value.to(device) for name, value in features.items()}


def _without_seed(params: Dict[str, Any]) -> Dict[str, Any]:
    return {key: value for key, value in params.items() if key != SEED_KEY}


def _best_run(runs: Sequence[TrialRecord], mode: Mode) -> TrialRecord:
    with_weights = [r for r in runs if r.checkpoint and r.best_value is not None]
    return min(with_weights, key=lambda r: (mode.rank_key(float(r.best_value or 0.0)), r.number))

