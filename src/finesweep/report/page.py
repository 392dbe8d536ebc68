"""The sweep report: one self-contained HTML file (plotly.js inlined: it opens offline) and a PNG per figure."""

from __future__ import annotations

import dataclasses
import html
import io
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from finesweep.errors import UserError, one_line
from finesweep.journal.events import REPORT_HTML, ReportWritten
from finesweep.journal.file import EventFile
from finesweep.journal.records import format_params
from finesweep.report.facts import SweepFacts, finished, read_facts, registered_version
from finesweep.report.figures import Figure, every_figure
from finesweep.report.study import persist, storage_url
from finesweep.tracking.projector import sync_log

logger = logging.getLogger(__name__)

HTML_NAME = REPORT_HTML

STYLE = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;color:#222}
h1{margin-bottom:.2em}h2{margin-top:2em;border-bottom:1px solid #ddd}p.caption{color:#444;margin:.3em 0 .8em}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ddd;padding:4px 8px;text-align:right}
th{background:#f4f4f4}.facts td:first-child{text-align:left;font-weight:600}.muted{color:#777}"""


@dataclass
class Report:
    """What ``build`` wrote."""

    folder: Path
    html: Path
    pngs: List[Path] = field(default_factory=list)
    png_problem: str = ""
    """Why PNG copies are missing ("" when they were written)."""
    study: str = ""
    """The stored Optuna study: ``<name> in <storage URL>`` ("" when it could not be stored)."""
    seconds: float = 0.0


def build(sweep_folder: Path, out: Optional[Path] = None, registered: str = "",
          before_page: Optional[Callable[[], object]] = None) -> Report:
    """Build the report of the sweep whose log is in ``sweep_folder``; written to ``out`` (default: its report/).

    ``before_page`` runs once the figures and their PNGs are made, before the page is written: the end of a
    run waits there for MLflow to register the winner (the page shows its version), so the figures are
    drawn while the model is being registered.
    """
    from optuna.trial import TrialState

    from finesweep.journal.continuation import rebuilt_study

    started = time.monotonic()
    facts = read_facts(sweep_folder, registered)
    records = [t.record for t in facts.search()]
    study = rebuilt_study(facts.config, facts.params, records)  # as the searcher knew it: stopped trials PRUNED
    # The figures show every trial at its best epoch, as the leaderboard ranks them: with ASHA most trials
    # are stopped, and Optuna's plots would leave all of them out.
    ranked = rebuilt_study(facts.config, facts.params, records, stopped=TrialState.COMPLETE)
    folder = out or sweep_folder / "report"
    folder.mkdir(parents=True, exist_ok=True)
    report = Report(folder, folder / HTML_NAME)
    try:
        report.study = f"{persist(study, facts)} in {storage_url(facts)}"
    except Exception as exc:  # noqa: BLE001 - the figures do not need the stored copy
        logger.warning("report: the Optuna study could not be stored: %s", exc, exc_info=True)
    figures = every_figure(facts, ranked)
    report.pngs, report.png_problem = _pngs(figures, folder)
    if before_page is not None:
        before_page()
        facts = dataclasses.replace(facts, registered=registered or registered_version(sweep_folder))
    report.html.write_text(_page(facts, figures, report.study), encoding="utf-8")
    report.seconds = time.monotonic() - started
    return report


def publish(sweep_folder: Path) -> Tuple[Report, str]:
    """Build the report of a sweep that is not running and log it to its parent run (``report/``).

    Returns:
        the report, and what sending it to MLflow said ("" when all went through).
    """
    built = build(sweep_folder)
    try:
        events = EventFile(sweep_folder)
    except UserError:
        return built, "the sweep is running: its report goes to MLflow when it ends"
    try:
        events.append(ReportWritten(folder=str(built.folder)))
    finally:
        events.close()
    message, _ = sync_log(sweep_folder, None, deadline=time.monotonic() + 60)
    return built, message


def _pngs(figures: List[Figure], folder: Path) -> Tuple[List[Path], str]:
    """A PNG copy of each figure, all through one exporter session (kaleido drives a headless Chromium)."""
    import plotly.io as pio

    drawn = [(f.name, f.figure) for f in figures if f.figure is not None]
    paths = [folder / f"{name}.png" for name, _ in drawn]
    try:
        pio.write_images([figure for _, figure in drawn], paths, format="png", width=1100,
                         height=[int(figure.layout.height or 420) for _, figure in drawn])
    except Exception as exc:  # noqa: BLE001 - no exporter or no browser: the HTML still has every figure
        problem = f"PNG copies need kaleido and Chrome or Chromium ({one_line(exc)})"
        logger.warning("report: %s", problem)
        return [], problem
    return paths, ""


def _page(facts: SweepFacts, figures: List[Figure], study: str) -> str:
    from plotly.offline import get_plotlyjs

    state = facts.state
    parts = [f"<h1>Sweep {html.escape(state.name)}</h1>",
             f"<p class='muted'>{html.escape(state.sweep_id)} · {state.status} · objective: "
             f"{html.escape(', '.join(f'{m.value} {n}' for n, m in facts.config.objective.terms))} · "
             f"{len(facts.search())} search trials · built "
             f"{time.strftime('%Y-%m-%d %H:%M')}</p>", _summary(facts, study), _winner(facts)]
    for index, figure in enumerate(figures):
        parts.append(f"<h2>{html.escape(figure.title)}</h2><p class='caption'>{html.escape(figure.caption)}</p>")
        if figure.figure is not None:
            parts.append(figure.figure.to_html(full_html=False, include_plotlyjs=False, div_id=f"figure-{index}",
                                               config={"displaylogo": False}))
    parts.append(_front(facts))
    parts.append(_leaderboard(facts))
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>finesweep report: {html.escape(state.name)}</title><style>{STYLE}</style>"
            f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body>{''.join(parts)}</body></html>")


def _table(rows: List[List[str]], head: Optional[List[str]] = None, css: str = "") -> str:
    header = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>" if head else ""
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table class='{css}'>{header}{body}</table>"


def _summary(facts: SweepFacts, study: str) -> str:
    search = facts.search()
    counts: Dict[str, int] = {}
    for trial in search:
        counts[trial.record.status.value] = counts.get(trial.record.status.value, 0) + 1
    epochs = sum(t.record.epochs_run for t in search)
    full = len(search) * facts.config.scheduler.budget
    saved = f" ({1 - epochs / full:.0%} fewer than running every trial to the end)" if full and epochs < full else ""
    rows = [["trials", ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in sorted(counts.items())) or "none"],
            [f"{facts.config.scheduler.unit.value} trained", f"{epochs} of {full}{saved}"],
            ["sampler / scheduler", f"{facts.config.search.sampler.value} / {facts.config.scheduler.kind.value}"]]
    if study:
        name, _, url = study.partition(" in ")
        rows.append(["Optuna study", f"{name}: optuna-dashboard {url}"])
    return _table(rows, css="facts")


def _winner(facts: SweepFacts) -> str:
    selection = facts.selection
    metric = facts.metric
    if selection is None or not selection.metrics:
        done = finished(facts.search())
        if not done:
            return "<h2>Winner</h2><p>No trial finished.</p>"
        return "<h2>Winner</h2><p>Model selection has not run for this sweep yet.</p>"
    metrics, tags = selection.metrics, selection.tags
    searched = {k: v for k, v in (facts.best.params if facts.best else {}).items() if k in facts.config.space}
    rows = [["parameters", format_params(searched) or "(defaults)"],
            [f"validation {metric}", f"{metrics.get(f'final/val/{metric}/mean', float('nan')):.4f} ± "
                                     f"{metrics.get(f'final/val/{metric}/std', float('nan')):.4f} over "
                                     f"{tags.get('finesweep.final_runs', '?')} run(s)"]]
    if tags.get("finesweep.verdict"):
        rows.append(["against the recipe", str(tags["finesweep.verdict"]).removeprefix("winner vs recipe: ")])
    if tags.get("finesweep.registered_config") == "recipe":
        rows.append(["registered", "the recipe (final.prefer=recipe_unless_better: the winner is not better "
                                   "beyond noise)"])
    rows += [[f"test {k.split('/', 1)[1]} (one evaluation)", f"{v:.4f}"] for k, v in sorted(metrics.items())
             if k.startswith("test/")]
    rows.append(["latency", f"{metrics.get('inference/latency_ms_per_example', float('nan')):.2f} ms/example on "
                            f"{tags.get('finesweep.inference_device', '?')}"])
    rows.append(["registered model", facts.registered or "(not registered)"])
    return "<h2>Winner</h2>" + _table(rows, css="facts") + _bought(facts)


def _bought(facts: SweepFacts) -> str:
    """Winner against the baseline (final.baseline): was the search worth its compute?"""
    if not facts.baseline:
        return ""
    metric, values = facts.metric, facts.baseline
    rows = [[f"val {metric}", f"{values[f'baseline/{metric}']:.4f}", f"{values[f'gain/{metric}']:+.4f} "
             f"(winner's spread over seeds: {values[f'gain/{metric}/winner_std']:.4f})"]]
    rows += [[k.removeprefix("baseline/"), f"{v:.4f}", f"{values.get('gain/' + k.removeprefix('baseline/'), 0):+.4f}"]
             for k, v in sorted(values.items()) if k.startswith("baseline/test/")]
    better = "higher" if facts.mode.value == "max" else "lower"
    return ("<h2>What the sweep bought</h2><p class='caption'>The config without any searched value (your default "
            f"recipe), trained once after the search, against the winner ({better} {metric} is better; for a loss, "
            "a negative gain is better). A gain inside the winner's spread over seeds is noise.</p>"
            + _table(rows, ["", "baseline", "winner - baseline"]))


def _leaderboard(facts: SweepFacts) -> str:
    import pandas as pd

    board = facts.selection.leaderboard_csv if facts.selection else ""
    if not board:
        return ""
    frame = pd.read_csv(io.StringIO(board))
    rows = [[_cell(v) for v in row] for row in frame.itertuples(index=False)]
    return ("<h2>Leaderboard</h2><p class='caption'>The configurations model selection re-trained, best first: "
            "validation mean ± std over their runs (folds or seeds), and the registered configuration's test "
            "evaluation; recipe marks the config's own values.</p>"
            + _table(rows, [str(c) for c in frame.columns]))


def _front(facts: SweepFacts) -> str:
    """A multi-objective sweep's feasible Pareto front as model selection saw it: each point's values and config."""
    front = facts.selection.front if facts.selection else []
    if not front:
        return ""
    metrics = facts.config.objective.metrics
    keys = sorted({k for row in front for k in row["params"]})
    rows = [[str(row["trial"]), *(_cell(row["values"].get(m)) for m in metrics),
             *(_cell(row["params"].get(k, "")) for k in keys)] for row in front]
    return ("<h2>Pareto front</h2><p class='caption'>The feasible trials no other feasible trial beats on every "
            "objective, each at its best epoch: the finalists of model selection. Any of them can be registered "
            "instead of the winner with finesweep select RUN --trial N (its weights were kept).</p>"
            + _table(rows, ["trial", *metrics, *keys]))


def _cell(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)
