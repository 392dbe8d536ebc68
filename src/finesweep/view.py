"""The terminal: a live view of the sweep while it runs and a table of the top trials after."""

from __future__ import annotations

import time
from typing import Any, Dict, List, Optional, Sequence

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from finesweep.config import ExperimentConfig
from finesweep.records import TrialRecord, TrialStatus, best_trial, format_params, ranked, short
from finesweep.search_space import Distribution, Param

STATUS_STYLE = {TrialStatus.running: "cyan", TrialStatus.completed: "green",
                TrialStatus.early_stopped: "yellow", TrialStatus.failed: "red"}


class SweepView:
    """Live terminal view of a sweep; a ``SweepListener``. Use as a context manager."""

    def __init__(self, config: ExperimentConfig, total: int, console: Console,
                 past: Sequence[TrialRecord] = ()) -> None:
        self.config = config
        self.total = total
        self.console = console
        self.records: List[TrialRecord] = list(past)
        """Every trial seen, past ones (a resumed sweep's) included, each once."""
        self.started = time.monotonic()
        self._live: Optional[Live] = None

    def __enter__(self) -> "SweepView":
        self._live = Live(self._render(), console=self.console, refresh_per_second=2, transient=False)
        self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.update(self._render(), refresh=True)
            self._live.__exit__(*exc)
            self.console.print()

    def trial_started(self, record: TrialRecord) -> None:
        if all(r is not record and r.number != record.number for r in self.records):
            self.records.append(record)
        else:  # the same trial goes on (resumed, retried): show the live record
            self.records = [record if r.number == record.number else r for r in self.records]
        self._refresh()

    def trial_retrying(self, record: TrialRecord) -> None:
        self._refresh()

    def trial_result(self, record: TrialRecord, metrics: Dict[str, float]) -> None:
        self._refresh()

    def trial_ended(self, record: TrialRecord) -> None:
        self._refresh()

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._render())

    def _render(self) -> Group:
        search = [r for r in self.records if r.phase == "search"]
        final = [r for r in self.records if r.phase != "search"]
        counts = {s: sum(r.status is s for r in search) for s in TrialStatus}
        head = Text.assemble(
            (f"{self.config.name}  ", "bold"),
            f"{len(search)}/{self.total} started  ",
            *[(f"{s.value.replace('_', '-')} {counts[s]}  ", STATUS_STYLE[s]) for s in TrialStatus],
            f"re-training {sum(r.status is TrialStatus.running for r in final)} of {len(final)}  " if final else "",
            f"{time.monotonic() - self.started:.0f}s")
        best = best_trial(search, self.config.objective.mode)
        metric = self.config.objective.metric
        best_line = Text(f"best {metric}: " + (f"{best.best_value:.4f} (trial {best.number}: "
                                               f"{format_params(best.params)})" if best else "-"))
        running = [r for r in self.records if r.status is TrialStatus.running]
        table = Table(box=None, pad_edge=False, show_header=bool(running))
        for column in ("trial", "epoch", metric, "params"):
            table.add_column(column)
        for record in running[-8:]:
            last = record.history[-1].get(metric) if record.history else None
            table.add_row(str(record.number), f"{record.epochs_run}/{self.config.scheduler.max_epochs}",
                          "-" if last is None else f"{last:.4f}", format_params(record.params))
        return Group(head, best_line, table)


def results_table(config: ExperimentConfig, records: Sequence[TrialRecord], top: int = 10) -> Table:
    """The top trials by their best objective value."""
    metric = config.objective.metric
    table = Table(title=f"Top trials by {config.objective.mode.value} {metric}")
    keys = list(dict.fromkeys(k for r in records for k in r.params))
    for column in ("rank", "trial", metric, "best epoch", "epochs", "status", *keys):
        table.add_column(column)
    for rank, record in enumerate(ranked(records, config.objective.mode)[:top], start=1):
        table.add_row(str(rank), str(record.number), f"{record.best_value:.4f}", str(record.best_epoch),
                      str(record.epochs_run), Text(record.status.value, STATUS_STYLE[record.status]),
                      *[short(record.params[k]) if k in record.params else "-" for k in keys])
    return table


def space_table(params: Sequence[Param]) -> Table:
    """The search space, one row per searched key (``finesweep show``)."""
    table = Table(title="search space")
    for column in ("key", "distribution", "values", "only when"):
        table.add_column(column)
    for param in params:
        values = (f"{list(param.choices)}" if param.distribution is Distribution.categorical
                  else f"[{param.low}, {param.high}]" + (f" step {param.step}" if param.step else "")
                  + (" log" if param.log or param.distribution is Distribution.loguniform else ""))
        when = ", ".join(f"{k} in {list(v)}" for k, v in param.when)
        table.add_row(Text(param.key), param.distribution.value, Text(values), Text(when))
    return table
