"""The report's figures, each a plotly figure with a title and a one-line caption that says what to read.

Optuna's visualization module draws what it knows (importance, slices, parallel coordinates) from the
study behind the search; plotly draws the rest from the sweep's log.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import plotly.graph_objects as go

from finesweep.config import progress_of
from finesweep.journal.records import TrialStatus, format_params
from finesweep.report.facts import SweepFacts, TrialFacts, finished, slots, utilisation
from finesweep.selection import FOLD_KEY, SEED_KEY
from finesweep.verdict import mean_interval

log = logging.getLogger(__name__)

COLORS = {TrialStatus.completed: "#2a9d8f", TrialStatus.early_stopped: "#e9c46a", TrialStatus.failed: "#e76f51",
          TrialStatus.running: "#8d99ae"}


@dataclass
class Figure:
    """One figure of the report."""

    name: str
    """File stem of its PNG copy."""
    title: str
    caption: str
    figure: Optional[go.Figure]
    """None when the sweep has too little for it (the caption says why)."""


def every_figure(facts: SweepFacts, study: Any) -> List[Figure]:
    """All figures, in reading order; one that cannot be drawn says why instead of failing the report."""
    makers: List[Callable[[], Figure]] = [
        lambda: history(facts), lambda: curves(facts), lambda: importance(facts, study),
        lambda: slices(facts, study), lambda: parallel(facts, study), lambda: by_strategy(facts),
        lambda: per_parameter(facts), lambda: finalists(facts), lambda: schedule(facts)]
    if any(PROBE_METRIC in m for t in facts.search() for m in t.record.history):
        makers.insert(6, lambda: forgetting(facts))
    figures = []
    for make in makers:
        try:
            figures.append(make())
        except Exception as exc:  # noqa: BLE001 - a figure the data cannot support is a note, not a failure
            log.warning("report: a figure could not be drawn: %s", exc, exc_info=True)
            figures.append(Figure("unavailable", "(figure unavailable)", f"Not drawn: {exc}", None))
    return figures


def _layout(figure: go.Figure, x: str, y: str) -> go.Figure:
    figure.update_layout(template="plotly_white", height=420, margin=dict(l=60, r=20, t=30, b=50),
                         xaxis_title=x, yaxis_title=y, legend=dict(orientation="h", y=-0.2))
    return figure


def history(facts: SweepFacts) -> Figure:
    """Each trial's objective in the order trials ended, and the best so far."""
    done = finished(facts.search())
    figure = go.Figure()
    for status, symbol in ((TrialStatus.completed, "circle"), (TrialStatus.early_stopped, "x")):
        points = [(i, t) for i, t in enumerate(done, start=1) if t.record.status is status]
        figure.add_scatter(x=[i for i, _ in points], y=[t.record.best_value for _, t in points], mode="markers",
                           name=status.value.replace("_", " "), marker=dict(symbol=symbol, size=9,
                                                                             color=COLORS[status]),
                           text=[f"trial {t.number}" for _, t in points])
    best: List[float] = []
    for trial in done:
        value = float(trial.record.best_value or 0.0)
        best.append(value if not best else facts.mode.best((best[-1], value)))
    figure.add_scatter(x=list(range(1, len(done) + 1)), y=best, mode="lines", name="best so far",
                       line=dict(shape="hv", color="#264653"))
    caption = (f"Each finished trial's best {facts.metric} in the order trials ended (x: stopped early by the "
               "scheduler); the line is the best so far. A line that flattens early means later trials added little.")
    return Figure("history", "Optimisation history", caption, _layout(figure, "trials ended", facts.metric))


def curves(facts: SweepFacts) -> Figure:
    """Every trial's objective by epoch (or step: ``scheduler.unit``), with ASHA's rungs."""
    figure = go.Figure()
    unit = facts.config.scheduler.unit.key
    for trial in facts.search():
        points = [(progress_of(m, i + 1), m[facts.metric]) for i, m in enumerate(trial.record.history)
                  if facts.metric in m and not math.isnan(m[facts.metric])]
        if points:
            figure.add_scatter(x=[p[0] for p in points], y=[p[1] for p in points], mode="lines+markers",
                               name=f"trial {trial.number}", line=dict(color=COLORS[trial.record.status], width=1.5),
                               marker=dict(size=5), opacity=0.8)
    for rung in facts.rungs():
        figure.add_vline(x=rung, line_dash="dash", line_color="#6c757d", annotation_text=f"rung {rung}")
    rungs = f"dashed lines are ASHA's rungs ({', '.join(map(str, facts.rungs()))}); " if facts.rungs() else ""
    caption = (f"{facts.metric} of every search trial by {unit}; {rungs}yellow curves were stopped early, red ones "
               "failed. Curves that cross after a rung mean the scheduler judged too early.")
    figure = _layout(figure, unit, facts.metric)
    figure.update_layout(showlegend=False)
    return Figure("learning_curves", "Learning curves", caption, figure)


def _complete(study: Any) -> int:
    import optuna

    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))


def importance(facts: SweepFacts, study: Any) -> Figure:
    """Which searched parameters moved the objective (Optuna's PED-ANOVA)."""
    import optuna
    from optuna.importance import PedAnovaImportanceEvaluator

    if len(facts.params) < 1 or _complete(study) < 3:
        return Figure("importance", "Hyperparameter importance", "Needs at least 3 finished trials.", None)
    figure = optuna.visualization.plot_param_importances(study, evaluator=PedAnovaImportanceEvaluator())
    caption = ("How much each searched parameter explains where the best trials lie (Optuna's PED-ANOVA, 0-1). "
               "Spend the next sweep's budget on the top ones and fix the rest.")
    return Figure("importance", "Hyperparameter importance", caption, _layout(figure, "importance", ""))


def slices(facts: SweepFacts, study: Any) -> Figure:
    """The objective against each searched parameter."""
    import optuna

    caption = ("The objective against each searched value, one panel a parameter (darker: later trials). Look for "
               "values where good trials cluster, and for edges of a range that are still improving.")
    return _optuna_figure("slice", "Slice plot", optuna.visualization.plot_slice, study, 1, caption)


def parallel(facts: SweepFacts, study: Any) -> Figure:
    """Parallel coordinates over the searched parameters, coloured by the objective."""
    import optuna

    caption = ("One line a finished trial across every searched parameter, coloured by the objective: the paths "
               "the best-coloured lines share are the combinations that work.")
    return _optuna_figure("parallel_coordinates", "Parallel coordinates",
                          optuna.visualization.plot_parallel_coordinate, study, 2, caption)


def _optuna_figure(name: str, title: str, plot: Callable[[Any], go.Figure], study: Any, least: int,
                   caption: str) -> Figure:
    """One of Optuna's plots of the study, once it has ``least`` finished trials."""
    if _complete(study) < least:
        return Figure(name, title, f"Needs at least {least} finished trial(s).", None)
    figure = plot(study)
    figure.update_layout(template="plotly_white", height=420)
    return Figure(name, title, caption, figure)


def by_strategy(facts: SweepFacts) -> Figure:
    """The objective by fine-tuning strategy."""
    done = finished(facts.search())
    figure = go.Figure()
    groups: Dict[str, List[TrialFacts]] = {}
    for trial in done:
        strategy = str(trial.record.params.get("finetune.strategy", facts.config.finetune.strategy.value))
        groups.setdefault(strategy, []).append(trial)
    for strategy, trials in sorted(groups.items()):
        figure.add_box(y=[t.record.best_value for t in trials], name=strategy, boxpoints="all", jitter=0.4,
                       pointpos=0, text=[f"trial {t.number}" for t in trials], marker_color="#2a9d8f")
    caption = (f"Best {facts.metric} of the finished trials by finetune.strategy (each point a trial). Compare "
               "the boxes' middles and spreads: a strategy with a high median and a tight box is the safe bet.")
    return Figure("by_strategy", "Objective by fine-tuning strategy", caption,
                  _layout(figure, "finetune.strategy", facts.metric))


def per_parameter(facts: SweepFacts) -> Figure:
    """The objective against the fraction of weights each trial trained."""
    done = finished(facts.search())
    points = [(t.record.history[0]["model/trainable_fraction"], t) for t in done
              if t.record.history and "model/trainable_fraction" in t.record.history[0]]
    if not points:
        return Figure("trainable_fraction", "What you gain per trained parameter",
                      "No trial reported model/trainable_fraction.", None)
    figure = go.Figure(go.Scatter(
        x=[p for p, _ in points], y=[t.record.best_value for _, t in points], mode="markers",
        marker=dict(size=9, color=[COLORS[t.record.status] for _, t in points]),
        text=[f"trial {t.number}: {t.record.params.get('finetune.strategy', '')}" for _, t in points]))
    figure.update_xaxes(type="log")
    caption = (f"Best {facts.metric} against the fraction of the model's weights each trial trained (log scale): "
               "points to the left reach their value with fewer trained weights (cheaper, smaller checkpoints).")
    return Figure("trainable_fraction", "What you gain per trained parameter", caption,
                  _layout(figure, "trainable fraction of weights", facts.metric))


PROBE_METRIC = "probe/perplexity_increase"
"""What the forgetting probe (``probe.forgetting``) reports at each trial's best weights."""


def forgetting(facts: SweepFacts) -> Figure:
    """The objective against how much each trial forgot (the forgetting probe), coloured by lr, shaped by strategy."""
    title = "What each configuration forgot"
    points = [(t.record.history[-1][PROBE_METRIC], t) for t in finished(facts.search())
              if t.record.history and PROBE_METRIC in t.record.history[-1]]
    if not points:
        return Figure("forgetting", title, "No finished trial reported the forgetting probe.", None)
    lrs = [float(t.record.params.get("optim.lr", facts.config.optim.lr)) for _, t in points]
    strategies = [str(t.record.params.get("finetune.strategy", facts.config.finetune.strategy.value))
                  for _, t in points]
    shapes = {name: SYMBOLS[i % len(SYMBOLS)] for i, name in enumerate(sorted(set(strategies)))}
    figure = go.Figure(go.Scatter(
        x=[p for p, _ in points], y=[t.record.best_value for _, t in points], mode="markers",
        marker=dict(size=11, color=[math.log10(lr) for lr in lrs], colorscale="Viridis", showscale=True,
                    colorbar=dict(title="log10 lr"), symbol=[shapes[s] for s in strategies]),
        text=[f"trial {t.number}: {s}, lr {lr:.2g}" for (_, t), s, lr in zip(points, strategies, lrs, strict=True)]))
    legend = ", ".join(f"{name}: {symbol}" for name, symbol in shapes.items())
    caption = (f"Best {facts.metric} against the rise of the perplexity of the probe text (probe.forgetting) from the "
               f"pretrained model's, both at each trial's best weights; colour is the learning rate, shape the "
               f"strategy ({legend}). Points to the left kept more of what the model knew.")
    return Figure("forgetting", title, caption, _layout(figure, "probe perplexity increase", facts.metric))


SYMBOLS = ("circle", "diamond", "square", "triangle-up", "cross", "x", "star")


def finalists(facts: SweepFacts) -> Figure:
    """Each finalist's scores over the folds (or seeds) model selection re-trained it on, its mean and interval,
    the recipe beside them."""
    title = "Finalists and the recipe"
    runs = [t.record for t in facts.trials if t.record.phase == "final" and t.record.best_value is not None
            and t.record.status is not TrialStatus.failed]
    if not runs:
        return Figure("finalists", title, "Model selection re-trained nothing (final.cv_folds and final.seeds are "
                      "off): the winner and the recipe have one validation score each.", None)
    unit = FOLD_KEY if any(FOLD_KEY in r.params for r in runs) else SEED_KEY
    groups: Dict[str, Tuple[Dict[str, Any], List[Tuple[Any, float]]]] = {}
    for run in runs:
        params = {k: v for k, v in run.params.items() if k not in (SEED_KEY, FOLD_KEY)}
        entry = groups.setdefault(json.dumps(params, sort_keys=True, default=str), (params, []))
        entry[1].append((run.params.get(unit), float(run.best_value or 0.0)))
    order = sorted(groups.values(), key=lambda g: facts.mode.rank_key(statistics.fmean(v for _, v in g[1])))
    recipe = facts.selection.recipe if facts.selection is not None else None
    figure = go.Figure()
    for rank, (params, scores) in enumerate(order, start=1):
        is_recipe = params == recipe
        label = "recipe" if is_recipe else f"#{rank}"
        color = "#e76f51" if is_recipe else "#2a9d8f"
        values = [v for _, v in scores]
        figure.add_scatter(x=[label] * len(values), y=values, mode="markers", marker=dict(size=9, color=color,
                           opacity=0.6), name=f"{label}: {format_params(params) or '(defaults)'}",
                           text=[f"{'fold' if unit == FOLD_KEY else 'seed'} {u}" for u, _ in scores])
        mean, interval = statistics.fmean(values), mean_interval(values)
        low, high = interval if interval is not None else (mean, mean)
        figure.add_scatter(x=[label], y=[mean], mode="markers", showlegend=False, hoverinfo="y",
                           marker=dict(symbol="line-ew-open", size=34, color=color, line=dict(width=3, color=color)),
                           error_y=dict(type="data", symmetric=False, array=[high - mean], arrayminus=[mean - low],
                                        color=color, thickness=2, width=14))
    verdict = facts.selection.tags.get("finesweep.verdict", "") if facts.selection is not None else ""
    units = "fold" if unit == FOLD_KEY else "seed"
    caption = (f"Each dot is one {units}'s best {facts.metric}; the bar is the mean and its 95% t-interval. Every "
               f"finalist ran on the same {units}s, so compare them {units} by {units}: {verdict or 'no verdict'}.")
    return Figure("finalists", title, caption, _layout(figure, "finalist (by mean, best first)", facts.metric))


def schedule(facts: SweepFacts) -> Figure:
    """Trials on worker slots over time, and how busy the slots were."""
    placed = slots(facts.trials)
    if not placed:
        return Figure("schedule", "Schedule", "No trial ran.", None)
    origin = min(start for _, _, start, _ in placed)
    figure = go.Figure()
    for status in TrialStatus:
        mine = [p for p in placed if p[1].record.status is status]
        if mine:
            figure.add_bar(base=[s - origin for _, _, s, _ in mine], x=[e - s for _, _, s, e in mine],
                           y=[f"slot {slot + 1}" for slot, _, _, _ in mine], orientation="h",
                           name=status.value.replace("_", " "), marker_color=COLORS[status],
                           text=[f"{t.record.phase} {t.number}" for _, t, _, _ in mine], textposition="inside")
    capacity = max(facts.config.search.max_concurrent, 1 + max(slot for slot, _, _, _ in placed))
    used = utilisation(placed, capacity)
    busy = f"The slots were busy {used:.0%} of the time" if used is not None else "Utilisation unknown"
    caption = (f"Each bar is a trial holding a worker slot (search.max_concurrent={facts.config.search.max_concurrent}"
               f"), from start to end. {busy}: gaps are idle capacity, e.g. waiting on the searcher or on the "
               "slowest trial of a round.")
    figure = _layout(figure, "seconds since the first trial started", "")
    figure.update_layout(barmode="overlay")
    return Figure("schedule", "Schedule", caption, figure)
