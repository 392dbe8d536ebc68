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

from finesweep.config import Mode, progress_of
from finesweep.journal.front import feasible, front_numbers, point
from finesweep.journal.records import TrialRecord, TrialStatus, format_params, ranked
from finesweep.report.facts import SweepFacts, TrialFacts, finished, slots, utilisation
from finesweep.report.prior_marks import mark_priors
from finesweep.search.pareto import dominates, hypervolume
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
    if facts.config.objective.multi:
        makers[1:1] = [lambda: pareto_front(facts), lambda: hypervolume_over_time(facts)]
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


FRONT_COLOR, INFEASIBLE_COLOR = "#e76f51", "#ced4da"


def _scored(facts: SweepFacts) -> List[TrialRecord]:
    """The search trials that can win (``ranked``) and reported every objective at their best epoch."""
    objective = facts.config.objective
    return [r for r in ranked([t.record for t in facts.search()], objective.mode)
            if not any(math.isnan(v) for v in r.values(objective.metrics))]


def _baseline_run(facts: SweepFacts) -> Optional[TrialRecord]:
    """The baseline (final.baseline): its own run, else the recipe's search trial when that stood in for it."""
    own = [t.record for t in facts.trials if t.record.phase == "baseline" and t.record.best_value is not None
           and t.record.status is not TrialStatus.failed]
    if own or not facts.baseline or facts.selection is None:
        return own[-1] if own else None
    recipe = facts.selection.recipe
    return next((t.record for t in facts.search() if t.record.params == recipe
                 and t.record.status is TrialStatus.completed), None)


def _xy(records: List[TrialRecord], x: str, y: str) -> Tuple[List[float], List[float]]:
    return [r.values([x])[0] for r in records], [r.values([y])[0] for r in records]


def _bounds(figure: go.Figure, facts: SweepFacts, x: str, y: str) -> str:
    """Dashed lines at the constraints that bound a plotted axis; every constraint, as text."""
    limits = []
    for metric, (low, high) in facts.config.objective.bounds.items():
        for sign, bound in ((">=", low), ("<=", high)):
            if bound is None:
                continue
            limits.append(f"{metric} {sign} {bound:g}")
            line = dict(line_dash="dash", line_color="#6c757d", annotation_text=limits[-1])
            if metric == x:
                figure.add_vline(x=bound, **line)
            elif metric == y:
                figure.add_hline(y=bound, **line)
    return "; ".join(limits)


def _baseline_note(facts: SweepFacts, figure: go.Figure, front: List[TrialRecord], x: str, y: str) -> str:
    """Mark the baseline with a star; say which front trials dominate it."""
    base = _baseline_run(facts)
    if base is None or any(math.isnan(v) for v in base.values([x, y])):
        return "There is no baseline run to compare with (final.baseline)."
    xs, ys = _xy([base], x, y)
    figure.add_scatter(x=xs, y=ys, mode="markers", name="baseline", text=[f"baseline (trial {base.number}): the "
                       "config without searched values"], marker=dict(symbol="star", size=16, color="#e9c46a",
                                                                      line=dict(width=1, color="#264653")))
    objective = facts.config.objective
    beaten = sum(dominates(point(r, objective), point(base, objective)) for r in front)
    where = (f"{beaten} of the {len(front)} front trials dominate it (as good on every objective, better on one)"
             if beaten else "no front trial dominates it: the search found trade-offs, not a better recipe")
    return f"The star is the baseline, the config without searched values: {where}."


def pareto_front(facts: SweepFacts) -> Figure:
    """Every scored search trial at its best epoch in the first two objectives: the front (joined by its
    staircase), the dominated, the infeasible (grey), the constraints that bound an axis and the baseline."""
    objective = facts.config.objective
    (y, _), (x, x_mode) = objective.terms[:2]
    scored = _scored(facts)
    if not scored:
        return Figure("pareto_front", "Pareto front", "No search trial reported every objective "
                      f"({', '.join(objective.metrics)}) at its best epoch yet.", None)
    on_front = front_numbers(scored, objective)
    front = sorted((r for r in scored if r.number in on_front), key=lambda r: r.values([x])[0])
    infeasible = [r for r in scored if not feasible(r, objective)]
    figure = go.Figure()
    if len(objective.terms) == 2:  # with more objectives, the front seen in two of them is no staircase
        xs, ys = _xy(front, x, y)
        figure.add_scatter(x=xs, y=ys, mode="lines", name="front line", showlegend=False, hoverinfo="skip",
                           line=dict(shape="hv" if x_mode is Mode.min else "vh", color=FRONT_COLOR, width=1.5))
    for name, records, marker in (
            ("Pareto front", front, dict(size=12, color=FRONT_COLOR, line=dict(width=1, color="#264653"))),
            ("dominated", [r for r in scored if r.number not in on_front and feasible(r, objective)],
             dict(size=9, color="#2a9d8f")),
            ("infeasible", infeasible, dict(size=9, color=INFEASIBLE_COLOR))):
        if records:
            xs, ys = _xy(records, x, y)
            figure.add_scatter(x=xs, y=ys, mode="markers", name=name, marker=marker, text=[
                f"trial {r.number}: {format_params(r.params) or '(defaults)'}" for r in records])
    limits = _bounds(figure, facts, x, y)
    caption = (f"Each search trial at its best epoch (by {objective.metric}): {y} against {x}. The {len(front)} "
               "highlighted trials are the front: no feasible trial is as good on every objective and better on one. "
               "Plain points are dominated; " + (f"grey ones ({len(infeasible)}) break a constraint ({limits}; dashed "
               "lines where it bounds an axis). " if limits else "there are no constraints: every trial is feasible. "))
    if len(objective.terms) > 2:
        caption += (f"Drawn in the first two of {len(objective.terms)} objectives ({', '.join(objective.metrics)}): "
                    "the front is over all of them, so a front trial can look dominated here. ")
    else:
        caption += f"Each step of the staircase says what more {y} costs in {x}. "
    left_out = len(ranked([t.record for t in facts.search()], objective.mode)) - len(scored)
    if left_out:
        caption += f"{left_out} trial(s) that did not report every objective are left out. "
    caption += _baseline_note(facts, figure, front, x, y)
    return Figure("pareto_front", "Pareto front", caption, _layout(figure, x, y))


def _normalised(points: List[Tuple[float, ...]]) -> List[List[float]]:
    """Each coordinate min-max scaled to [0, 1] over the points (1 for all where they do not vary)."""
    columns = list(zip(*points, strict=True))
    lows, highs = [min(c) for c in columns], [max(c) for c in columns]
    return [[(v - lo) / (hi - lo) if hi > lo else 1.0 for v, lo, hi in zip(p, lows, highs, strict=True)]
            for p in points]


def hypervolume_over_time(facts: SweepFacts) -> Figure:
    """The hypervolume of the feasible front of the trials ended so far, after each ended, in normalised space."""
    title = "Hypervolume over time"
    objective = facts.config.objective
    scored, done = _scored(facts), finished(facts.search())
    if len(scored) < 2 or not done:
        return Figure("hypervolume", title, "Needs at least 2 search trials that reported every objective at their "
                      "best epoch, one of them finished.", None)
    scaled = dict(zip((r.number for r in scored), _normalised([point(r, objective) for r in scored]), strict=True))
    kept = {r.number for r in scored if feasible(r, objective)}
    reference = [0.0] * len(objective.terms)  # the worst value of each objective among the scored trials
    front: List[List[float]] = []
    volumes = []
    for trial in done:  # in the order trials ended, as the history figure
        if trial.number in kept:
            front.append(scaled[trial.number])
        volumes.append(hypervolume(front, reference))
    figure = go.Figure(go.Scatter(x=list(range(1, len(done) + 1)), y=volumes, mode="lines+markers",
                                  line=dict(shape="hv", color="#264653"), text=[f"trial {t.number}" for t in done]))
    figure.update_yaxes(range=[0, 1.02])
    caption = (f"The hypervolume of the feasible front of the trials ended so far, after each one ended (final: "
               f"{volumes[-1]:.3f}). Each objective ({', '.join(objective.metrics)}) is min-max scaled over the "
               f"{len(scored)} scored search trials, 1 the best value any reached (minimised ones flipped); the "
               "reference point is their worst value of each objective, so 1.0 would be one trial best at everything. "
               "A curve still rising at the end says more trials would still move the front.")
    return Figure("hypervolume", title, caption, _layout(figure, "trials ended", "hypervolume (normalised)"))


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
    drawn = _optuna_figure("slice", "Slice plot", optuna.visualization.plot_slice, study, 1, caption)
    if drawn.figure is not None and mark_priors(drawn.figure, facts.params):
        drawn.caption += (" The dashed line is each key's prior (search.prior, or the key's prior:): where the "
                          "search started from, and how far the good trials moved away from it.")
    return drawn


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
