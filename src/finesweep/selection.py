"""Model selection after the search, done the way a careful practitioner would.

1. The search only ever saw train and validation data (trials never receive the test split); its first trial
   was the recipe (``search.start_from_config``), so its best is never worse than the recipe on its own split.
2. With ``final.seeds > 0`` or ``final.cv_folds`` the ``final.top_k`` best configurations and the recipe (the
   finalists) are re-trained: with fresh seeds, or on K stratified folds of train + validation (each with the
   search's seed, or with the fresh seeds), and ranked by their mean, so a lucky seed or a lucky split does not
   win. Every finalist sees the same seeds and folds: their scores are paired.
3. The verdict (``verdict.py``) says whether the winner beats the recipe beyond noise; ``final.prefer:
   recipe_unless_better`` registers the recipe unless it does.
4. Only then is the registered configuration evaluated on the test split: once per model of it (once in total
   without re-training). No other configuration ever touches it.
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from finesweep.config import ExperimentConfig, Mode, ObjectiveConfig, ObjectiveTerm, Prefer
from finesweep.config.overrides import with_overrides
from finesweep.execution.trial import report_val_rows
from finesweep.finetune.layout import best_weights
from finesweep.journal.front import feasible, gains, pareto_front
from finesweep.journal.records import TrialRecord, ranked
from finesweep.search import pareto
from finesweep.tasks import DataCache, PreparedData
from finesweep.verdict import Verdict

SEED_KEY = "trainer.seed"
FOLD_KEY = "data.fold"


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

    def unit_scores(self, by: str) -> Dict[Any, float]:
        """Mean best value per unit: per fold (``by=FOLD_KEY``) or per seed (``by=SEED_KEY``), what pairs
        this candidate's runs with another's; runs without the key count as one unit."""
        units: Dict[Any, List[float]] = {}
        for run in self.runs:
            if run.best_value is not None:
                units.setdefault(run.params.get(by), []).append(run.best_value)
        return {unit: statistics.fmean(values) for unit, values in units.items()}


@dataclass
class Selection:
    """The outcome of model selection."""

    candidates: List[Candidate]
    """Ranked, best first; candidates[0] is the winning configuration."""
    registered: Candidate
    """The configuration whose model is registered: the winner, or the recipe (``final.prefer``)."""
    chosen: TrialRecord
    """The run whose weights are the registered model (best validation among the registered configuration's runs)."""
    test_metrics: Dict[str, float]
    """Test metrics of the chosen model."""
    final_records: List[TrialRecord]
    latency_ms: float
    device: str
    verdict: Optional[Verdict] = None
    """The winner against the recipe (None when the recipe has no score: it never ran)."""
    recipe: Dict[str, Any] = field(default_factory=dict)
    """The recipe's values of the searched keys."""
    folds: int = 0
    """Cross-validation folds the finalists were ranked on (0: none)."""
    fallback: str = ""
    """Why the search's own best trial won instead of a re-trained one (every re-training run failed); else empty."""
    metric: str = ""
    """The metric candidates were ranked by: ``final.select``'s, or the primary objective's."""
    recipe_infeasible: bool = False
    """The recipe ran but breaks ``objective.constraints``: it is never selected, and no verdict compares with it."""

    @property
    def winner(self) -> Candidate:
        """The winning configuration (the best-ranked)."""
        return self.candidates[0]


def candidates(records: Sequence[TrialRecord], config: ExperimentConfig) -> List[Candidate]:
    """The finalists of the search, best first (``ranked``: failed trials never compete): the top-k distinct
    configurations, or with several objectives every configuration on the feasible Pareto front; a trial that breaks
    a constraint is never one."""
    objective = config.objective
    if objective.multi:
        pool, limit = pareto_front(records, objective), None
    else:
        pool, limit = [r for r in records if feasible(r, objective)], config.final.top_k
    chosen: List[Candidate] = []
    for record in ranked(pool, config.objective.mode):
        if all(c.params != record.params for c in chosen):
            chosen.append(Candidate(dict(record.params), [record]))
        if len(chosen) == limit:
            break
    return chosen


def ranking_metric(objective: ObjectiveConfig, select: Optional[str]) -> Tuple[str, Mode]:
    """The metric and mode the finalists are ranked by: ``final.select``'s objective, else the primary one."""
    modes = dict(objective.terms)
    metric = select if select in modes else objective.metric
    return metric, modes[metric]


def ranked_by(objective: ObjectiveConfig, metric: str) -> ObjectiveConfig:
    """The objective with ``metric`` (one of its objectives) as the primary one, the others after it."""
    modes = dict(objective.terms)
    also = [ObjectiveTerm(metric=m, mode=mode) for m, mode in objective.terms if m != metric]
    return dataclasses.replace(objective, metric=metric, mode=modes[metric], also=also)


def scored_by(records: Sequence[TrialRecord], metric: str) -> List[TrialRecord]:
    """The records with ``best_value`` read as ``metric`` at each one's best epoch (the epoch the primary objective
    chose: the weights the trial stands for). For ranking by another objective than the primary one (``final.select``):
    the primary one's values may have been scored again on the whole split (``on_whole_validation``)."""
    found = []
    for record in records:
        value = record.at_best.get(metric) if record.best_value is not None else None
        found.append(dataclasses.replace(record, best_value=value))
    return found


def feasible_candidate(candidate: Candidate, objective: ObjectiveConfig) -> bool:
    """Whether a finalist meets the constraints by the mean of its runs (a noisy latency is judged on its mean)."""
    if not objective.constraints:
        return True
    means = {m: statistics.fmean([r.at_best.get(m, float("nan")) for r in candidate.runs]) for m in objective.bounds}
    return pareto.violation(means, objective.bounds) <= 0


def knee_first(ranked_candidates: Sequence[Candidate], objective: ObjectiveConfig) -> List[Candidate]:
    """The candidates with the knee of their front first (``pareto.knee`` on the mean of each one's runs)."""
    modes = [mode for _, mode in objective.terms]
    points = [gains([statistics.fmean(v) for v in zip(*(r.values(objective.metrics) for r in c.runs), strict=True)],
                    modes) for c in ranked_candidates]
    knee = pareto.knee(points)
    return [ranked_candidates[knee], *(c for i, c in enumerate(ranked_candidates) if i != knee)]


def final_points(config: ExperimentConfig, finalists: Sequence[Candidate], folds: int) -> List[Dict[str, Any]]:
    """The re-training runs of model selection: each finalist once per fold (with the search's seed, or each
    fresh seed) with ``folds``, else once per fresh seed (seeds the search never used). Fold by fold, so an
    interrupted selection has paired units for every finalist."""
    fresh = [config.trainer.seed + 1 + i for i in range(config.final.seeds)]
    if not folds:
        return [{**c.params, SEED_KEY: seed} for c in finalists for seed in fresh]
    seeds: List[Dict[str, Any]] = [{SEED_KEY: seed} for seed in fresh] or [{}]
    return [{**c.params, **seed, FOLD_KEY: fold} for fold in range(folds) for c in finalists for seed in seeds]


def with_recipe(ranked_candidates: Sequence[Candidate], recipe: Dict[str, Any],
                records: Sequence[TrialRecord], mode: Mode) -> List[Candidate]:
    """The finalists: the search's top-k, and the recipe after them when it is not one of them."""
    if any(c.params == recipe for c in ranked_candidates):
        return list(ranked_candidates)
    return [*ranked_candidates, recipe_candidate(recipe, records, mode)]


def recipe_candidate(recipe: Dict[str, Any], records: Sequence[TrialRecord], mode: Mode) -> Candidate:
    """The recipe, with its best search run when it has one (``search.start_from_config``)."""
    own = [r for r in ranked(records, mode) if r.params == recipe]
    return Candidate(dict(recipe), own[:1])


def regroup(ranked_candidates: Sequence[Candidate], final_records: Sequence[TrialRecord],
            mode: Mode) -> List[Candidate]:
    """New candidates holding only their successful re-training runs, ranked by the mean; none left = empty."""
    healthy = ranked(final_records, mode)
    regrouped = [Candidate(c.params, [r for r in healthy if _configuration(r.params) == c.params])
                 for c in ranked_candidates]
    return sorted([c for c in regrouped if c.runs], key=lambda c: mode.rank_key(c.mean))


def judge(config: ExperimentConfig, winner: Candidate, recipe: Optional[Candidate], folds: int, points: bool,
          val_rows: int) -> Optional[Verdict]:
    """The winner against the recipe, paired unit by unit (folds, seeds, or the one split); None when the recipe
    has no score."""
    if recipe is None or not recipe.scores:
        return None
    unit = "folds" if folds else "seeds" if config.final.seeds > 0 else "split"
    key = FOLD_KEY if folds else SEED_KEY
    ours, theirs = winner.unit_scores(key), recipe.unit_scores(key)
    if unit == "split":
        differences = [winner.mean - recipe.mean]
    else:
        differences = [ours[u] - theirs[u] for u in sorted(ours, key=str) if u in theirs]
    return Verdict(config.objective.metric, config.objective.mode, tuple(differences), unit, points, val_rows,
                   winner_is_recipe=winner.params == recipe.params)


def select(config: ExperimentConfig, records: Sequence[TrialRecord], cache: DataCache,
           retrain: Callable[[List[Dict[str, Any]]], List[TrialRecord]],
           evaluate: Callable[[ExperimentConfig, PreparedData, Path, str], Dict[str, float]],
           recipe: Optional[Dict[str, Any]] = None, folds: int = 0) -> Optional[Selection]:
    """Run model selection; None when no trial produced a checkpoint.

    Args:
        config: the sweep's config.
        records: the search's trials.
        cache: the full data, test split included (the driver's copy).
        retrain: runs fixed configurations (values incl. ``trainer.seed``, ``data.fold``) to their full budget
            and returns their records (a resumed sweep reuses the runs it already has).
        evaluate: computes ``<split>/<metric>`` of saved weights on a split.
        recipe: the recipe's values of the searched keys (``config.recipe.recipe``); None = no recipe.
        folds: cross-validation folds (``final.cv_folds``, resolved); 0 = none.
    """
    objective = config.objective
    metric, mode = ranking_metric(objective, config.final.select_metric)
    records = on_whole_validation(config, records, cache, evaluate)
    ranked_candidates = candidates(records, config)
    if metric != objective.metric:  # ranked by another objective, at the epochs the primary one chose
        records = scored_by(records, metric)
        ranked_candidates = [Candidate(c.params, scored_by(c.runs, metric)) for c in ranked_candidates]
        config = dataclasses.replace(config, objective=ranked_by(objective, metric))
    if recipe is not None and ranked_candidates:
        ranked_candidates = with_recipe(ranked_candidates, recipe, records, mode)
    final_records: List[TrialRecord] = []
    fallback = ""
    if (config.final.seeds > 0 or folds) and ranked_candidates:
        final_records = on_whole_validation(config, retrain(final_points(config, ranked_candidates, folds)), cache,
                                            evaluate)
        if metric != objective.metric:
            final_records = scored_by(final_records, metric)
        regrouped = regroup(ranked_candidates, final_records, mode)
        if regrouped:
            ranked_candidates = regrouped
        else:  # the search's checkpoints still exist: its best trial is a sound, if less certain, winner
            fallback = (f"all {len(final_records)} re-training runs failed, so the search's best trial is the "
                        "winner (validation score of one seed)")
            folds = 0
    if not final_records or fallback:  # ranked by the search's own runs (a recipe that never ran has none)
        ranked_candidates = sorted([c for c in ranked_candidates if c.scores], key=lambda c: mode.rank_key(c.mean))
    recipe_infeasible = any(c.params == recipe and c.scores and not feasible_candidate(c, objective)
                            for c in ranked_candidates)
    ranked_candidates = [c for c in ranked_candidates if any(r.checkpoint for r in c.runs)
                         and feasible_candidate(c, objective)]
    if not ranked_candidates:
        return None
    # A tie is no evidence of a gain: a searched configuration displaces the recipe only by ranking above it.
    ranked_candidates.sort(key=lambda c: (mode.rank_key(c.mean), c.params != recipe))
    if config.final.knee:
        ranked_candidates = knee_first(ranked_candidates, objective)
    winner = ranked_candidates[0]
    own_recipe = next((c for c in ranked_candidates if c.params == recipe), None)
    data = cache.for_config(with_overrides(config, winner.params))
    verdict = judge(config, winner, own_recipe, folds, config.objective.metric in data.task.points_metrics,
                    len(data.val))
    registered = winner
    if config.final.prefer is Prefer.recipe_unless_better and verdict is not None and verdict.outcome != "better":
        registered = own_recipe or winner
    registered_config = with_overrides(config, registered.params)
    data = cache.for_config(registered_config)
    for run in registered.runs:  # the only place the test split is read
        if run.checkpoint:
            registered.test.append(evaluate(registered_config, data, best_weights(run.checkpoint), "test"))
    chosen = _best_run(registered.runs, mode)
    test_metrics = registered.test[[r for r in registered.runs if r.checkpoint].index(chosen)]
    latency, device = measure_latency(best_weights(str(chosen.checkpoint)), data, registered_config.data.batch_size)
    return Selection(ranked_candidates, registered, chosen, test_metrics, final_records, latency, device, verdict,
                     dict(recipe or {}), folds, fallback, metric, recipe_infeasible)


def on_whole_validation(config: ExperimentConfig, records: Sequence[TrialRecord], cache: DataCache,
                        evaluate: Callable[[ExperimentConfig, PreparedData, Path, str], Dict[str, float]]
                        ) -> List[TrialRecord]:
    """The records as model selection ranks them: a trial whose reports scored only the validation split's first
    rows (``trainer.val_fraction_per_report``, ``data.val_max_rows``) has its best weights scored again on the whole
    split, and that is its value; the others, and objectives ``evaluate`` does not compute (generated-text scores,
    ``train/loss``), stay as reported."""
    metric = config.objective.metric
    found: List[TrialRecord] = []
    for record in records:
        run_config = with_overrides(config, record.params)
        shared = run_config.trainer.val_fraction_per_report < 1 or run_config.data.val_max_rows is not None
        if not (shared and record.checkpoint and record.best_value is not None
                and best_weights(record.checkpoint).is_dir()):
            found.append(record)
            continue
        try:
            data = cache.for_config(run_config)
        except ValueError:  # a cross-validation run, and this cache has no folds: its fold's value stands
            found.append(record)
            continue
        if report_val_rows(run_config, len(data.val)) is not None:
            value = evaluate(run_config, data, best_weights(record.checkpoint), "val").get(metric)
            if value is not None:
                record = dataclasses.replace(record, best_value=value)
        found.append(record)
    return found


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
               f"gain/{metric}": chosen.registered.mean - baseline.best_value,
               f"gain/{metric}/winner_std": chosen.registered.std}
    metrics.update({f"gain/{k}": v - test[k] for k, v in chosen.test_metrics.items() if k in test})
    return metrics


def leaderboard(selection: Selection, metric: str) -> List[Dict[str, Any]]:
    """Rows of the final ranking: values, runs, mean +- std of validation (and test for the winner)."""
    rows = []
    for rank, candidate in enumerate(selection.candidates, start=1):
        row: Dict[str, Any] = {"rank": rank, **candidate.params, "recipe": candidate.params == selection.recipe,
                               "registered": candidate is selection.registered, "runs": len(candidate.runs),
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


def measure_latency(weights: Path, data: PreparedData, batch_size: int) -> Tuple[float, str]:
    """Milliseconds per example of the saved (served) model's forward pass, and the device: measured as every trial
    measures ``inference/latency_ms`` (``finetune.costs.latency_ms``: a validation batch as the task collates it,
    warm, the fastest of 5 passes), so the winner's number and its trial's agree."""
    import torch

    from finesweep.finetune.costs import latency_ms

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = data.task.load_trained(weights, data).to(device)
    return latency_ms(data.task, model, data, batch_size, device), device.type


def _configuration(params: Dict[str, Any]) -> Dict[str, Any]:
    """A re-training run's values without its seed and fold: the configuration it scores."""
    return {key: value for key, value in params.items() if key not in (SEED_KEY, FOLD_KEY)}


def _best_run(runs: Sequence[TrialRecord], mode: Mode) -> TrialRecord:
    with_weights = [r for r in runs if r.checkpoint and r.best_value is not None]
    return min(with_weights, key=lambda r: (mode.rank_key(float(r.best_value or 0.0)), r.number))

