"""The terminal: a live view of the sweep while it runs and a table of the top trials after.

When stdout is not a terminal (a job's log, CI, ``nohup``, ``> demo.log``) the live view becomes
plain progress lines, one per event, and the top trials are printed one block each whenever a table
would not fit the width, so every value stays whole.
"""

from __future__ import annotations

import io
import time
from typing import Any, Dict, List, Optional, Sequence

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from finesweep.config import ExperimentConfig
from finesweep.config.space import Distribution, Param
from finesweep.journal.front import feasible
from finesweep.journal.records import TrialRecord, TrialStatus, best_trial, format_params, ranked, short

STATUS_STYLE = {TrialStatus.running: "cyan", TrialStatus.completed: "green",
                TrialStatus.early_stopped: "yellow", TrialStatus.failed: "red"}


class SweepView:
    """Live view of a sweep (progress lines off a terminal); a ``SweepListener``. Use as a context manager."""

    def __init__(self, config: ExperimentConfig, total: int, console: Console,
                 past: Sequence[TrialRecord] = ()) -> None:
        self.config = config
        self.total = total
        self.console = console
        self.records: List[TrialRecord] = list(past)
        """Every trial seen, past ones (a resumed sweep's) included, each once."""
        self._position = {r.number: i for i, r in enumerate(self.records)}
        self._done = {r.number for r in self.records if r.phase == "search" and r.status is not TrialStatus.running}
        self.started = time.monotonic()
        self._live: Optional[Live] = None

    def __enter__(self) -> "SweepView":
        if self.console.is_terminal:
            # The live view is drawn twice a second from the records, not on every event: an event
            # costs the driver the same with 10 trials or 10,000.
            self._live = Live(console=self.console, refresh_per_second=2, transient=False,
                              get_renderable=self._render)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.refresh()
            self._live.__exit__(*exc)
            self.console.print()
        else:
            head, best_line, _ = self._render().renderables
            self.console.print(head, best_line, sep="\n", soft_wrap=True)

    def trial_started(self, record: TrialRecord) -> None:
        position = self._position.get(record.number)
        if position is None:
            self._position[record.number] = len(self.records)
            self.records.append(record)
        else:  # the same trial goes on (resumed, retried): show the live record
            self.records[position] = record
        self._done.discard(record.number)
        again = f" (attempt {record.attempts})" if record.attempts > 1 else ""
        self._line(f"trial {record.number} started{again}: {format_params(record.params)}")

    def trial_retrying(self, record: TrialRecord) -> None:
        self._line(f"trial {record.number} failed ({record.failure}: {record.error}); retrying from its checkpoint")

    def trial_result(self, record: TrialRecord, metrics: Dict[str, float]) -> None:
        metric = self.config.objective.metric
        value = metrics.get(metric)
        shown = "-" if value is None else f"{value:.4f}"
        sched = self.config.scheduler
        self._line(f"trial {record.number} {sched.unit.key} {record.epochs_run}/{sched.budget}: {metric} {shown}")

    def trial_ended(self, record: TrialRecord) -> None:
        if record.phase == "search":
            self._done.add(record.number)
        best = ("" if record.best_value is None
                else f", best {record.best_value:.4f} at {self.config.scheduler.unit.key} {record.best_epoch}")
        why = f": {record.failure}: {record.error}" if record.status is TrialStatus.failed else ""
        where = self._counts() if record.phase == "search" else f"{record.phase} run"
        self._line(f"trial {record.number} {record.status.value.replace('_', ' ')}{best}{why}  ({where})")

    def _line(self, text: str) -> None:
        """One progress line off a terminal; on a terminal, the live view shows the records instead."""
        if self._live is None:
            self.console.print(f"[{time.monotonic() - self.started:6.0f}s] {text}", markup=False, highlight=False,
                               soft_wrap=True)

    def _counts(self) -> str:
        return f"{len(self._done)}/{self.total} done"

    def _render(self) -> Group:
        records = list(self.records)  # drawn on the live view's thread while the driver appends
        search = [r for r in records if r.phase == "search"]
        final = [r for r in records if r.phase != "search"]
        counts = {s: sum(r.status is s for r in search) for s in TrialStatus}
        head = Text.assemble(
            (f"{self.config.name}  ", "bold"),
            f"{len(search)}/{self.total} started  ",
            *[(f"{s.value.replace('_', '-')} {counts[s]}  ", STATUS_STYLE[s]) for s in TrialStatus],
            f"re-training {sum(r.status is not TrialStatus.running for r in final)}/{len(final)} done  "
            if final else "",
            f"{time.monotonic() - self.started:.0f}s")
        objective = self.config.objective
        # a trial that breaks objective.constraints is never selected, so it is never shown as the best
        best = best_trial([r for r in search if feasible(r, objective)], objective.mode)
        metric = objective.metric
        label = "best feasible" if objective.constraints else "best"
        best_line = Text(f"{label} {metric}: " + (f"{best.best_value:.4f} (trial {best.number}: "
                                                  f"{format_params(best.params)})" if best else "-"))
        running = [r for r in records if r.status is TrialStatus.running]
        table = Table(box=None, pad_edge=False, show_header=bool(running))
        for column in ("trial", self.config.scheduler.unit.key, metric, "params"):
            table.add_column(column)
        for record in running[-8:]:
            last = record.history[-1].get(metric) if record.history else None
            table.add_row(str(record.number), f"{record.epochs_run}/{self.config.scheduler.budget}",
                          "-" if last is None else f"{last:.4f}", format_params(record.params))
        return Group(head, best_line, table)


def results_table(config: ExperimentConfig, records: Sequence[TrialRecord], width: Optional[int] = None,
                  top: int = 10) -> RenderableType:
    """The top trials by their best objective value: a table when it fits ``width``, else one block per trial."""
    metric = config.objective.metric
    title = f"Top trials by {config.objective.mode.value} {metric}"
    best = ranked(records, config.objective.mode)[:top]
    keys = list(dict.fromkeys(k for r in records for k in r.params))
    table = Table(title=title)
    unit = config.scheduler.unit
    for column in ("rank", "trial", metric, f"best {unit.key}", unit.value, "status", *keys):
        table.add_column(column, no_wrap=True)
    for rank, record in enumerate(best, start=1):
        table.add_row(str(rank), str(record.number), f"{record.best_value:.4f}", str(record.best_epoch),
                      str(record.epochs_run), Text(record.status.value, STATUS_STYLE[record.status]),
                      *[Text(short(record.params[k])) if k in record.params else "-" for k in keys])
    if width is None or _natural_width(table) <= width:
        return table
    blocks: List[RenderableType] = [Text(title, style="bold")]
    for rank, record in enumerate(best, start=1):
        blocks.append(Text(f"{rank}. trial {record.number}: {metric} {record.best_value:.4f} at {unit.key} "
                           f"{record.best_epoch} of {record.epochs_run}, {record.status.value}"))
        blocks.extend(Text(f"     {k} = {short(record.params[k])}") for k in keys if k in record.params)
    return Group(*blocks)


def _natural_width(table: Table) -> int:
    """How wide a table is when nothing is cut."""
    wide = Console(width=10_000, file=io.StringIO())
    return Measurement.get(wide, wide.options, table).maximum


def space_table(params: Sequence[Param]) -> Table:
    """The search space, one row per searched key (``finesweep show``)."""
    table = Table(title="search space")
    priors = any(param.prior is not None for param in params)
    for column in ("key", "distribution", "values", "only when") + (("prior (confidence)",) if priors else ()):
        table.add_column(column)
    for param in params:
        values = (f"{list(param.choices)}" if param.distribution is Distribution.categorical
                  else f"[{param.low}, {param.high}]" + (f" step {param.step}" if param.step else "")
                  + (" log" if param.log or param.distribution is Distribution.loguniform else ""))
        when = ", ".join(f"{k} in {list(v)}" for k, v in param.when)
        table.add_row(Text(param.key), param.distribution.value, Text(values), Text(when),
                      *((Text(prior_text(param)),) if priors else ()))
    return table


def prior_text(param: Param) -> str:
    """A key's prior for ``finesweep show``: ``5e-05 (medium)``, or ``none``."""
    if param.prior is None:
        return "none"
    value = f"{param.prior:g}" if isinstance(param.prior, float) else str(param.prior)
    return f"{value} ({param.prior_confidence.value})"
