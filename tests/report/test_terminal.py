"""The terminal view: what a person reads while a sweep runs, and the table of top trials after it."""

from __future__ import annotations

import io
from typing import List

import pytest
from rich.console import Console

from finesweep.config import ExperimentConfig
from finesweep.config.compose import compose
from finesweep.journal.records import TrialRecord, TrialStatus
from finesweep.report.terminal import SweepView, results_table


@pytest.fixture(scope="module")
def config() -> ExperimentConfig:
    return compose("demo", ["scheduler.max_epochs=3"]).config


def render(console: Console) -> str:
    return console.file.getvalue()  # type: ignore[attr-defined]


def new_console() -> Console:
    return Console(file=io.StringIO(), width=160, color_system=None, force_terminal=False)


def add(view: SweepView, number: int, lr: float, values: List[float], status: TrialStatus,
        phase: str = "search") -> TrialRecord:
    record = TrialRecord(f"t{number}", number, {"optim.lr": lr}, phase=phase)
    view.trial_started(record)
    for epoch, value in enumerate(values, start=1):
        metrics = {"val/accuracy": value, "epoch": float(epoch)}
        record.add_result(metrics, "val/accuracy", view.config.objective.mode)
        view.trial_result(record, metrics)
    record.status = status
    if status is not TrialStatus.running:
        view.trial_ended(record)
    return record


def test_live_view_counts_statuses_shows_the_best_and_the_running_trials(config: ExperimentConfig) -> None:
    console = new_console()
    view = SweepView(config, total=6, console=console)
    add(view, 0, 1e-4, [0.5, 0.7, 0.75], TrialStatus.completed)
    add(view, 1, 2e-4, [0.4], TrialStatus.early_stopped)
    add(view, 2, 3e-4, [0.99], TrialStatus.failed)  # never the best, whatever it reported
    add(view, 3, 5e-4, [0.6, 0.65], TrialStatus.running)
    add(view, 4, 5e-4, [0.8], TrialStatus.running, phase="final")
    console.print(view._render())
    text = render(console)
    assert "demo  4/6 started  running 1  completed 1  early-stopped 1  failed 1  re-training 0/1 done" in text
    assert "best val/accuracy: 0.7500 (trial 0: optim.lr=0.0001)" in text
    running = [line for line in text.splitlines() if line.lstrip().startswith(("3 ", "4 "))]
    assert [line.split()[:3] for line in running] == [["3", "2/3", "0.6500"], ["4", "1/3", "0.8000"]]


def test_live_view_before_any_result(config: ExperimentConfig) -> None:
    console = new_console()
    view = SweepView(config, total=4, console=console)
    console.print(view._render())
    assert "0/4 started" in render(console) and "best val/accuracy: -" in render(console)


def test_results_table_ranks_by_best_epoch_and_leaves_failed_trials_out(config: ExperimentConfig) -> None:
    console = new_console()
    view = SweepView(config, total=3, console=new_console())
    records = [add(view, 0, 1e-4, [0.5, 0.9, 0.6], TrialStatus.completed),
               add(view, 1, 2e-4, [0.7], TrialStatus.early_stopped),
               add(view, 2, 3e-4, [0.95], TrialStatus.failed)]
    console.print(results_table(config, records))
    rows = [line.split("│")[1:-1] for line in render(console).splitlines() if line.count("│") > 3]
    cells = [[cell.strip() for cell in row] for row in rows]  # the header uses ┃, data rows │
    assert [row[:6] for row in cells] == [["1", "0", "0.9000", "2", "3", "completed"],
                                          ["2", "1", "0.7000", "1", "1", "early_stopped"]]
    assert cells[0][6] == "0.0001"


def test_off_a_terminal_the_view_prints_progress_lines(config: ExperimentConfig) -> None:
    console = new_console()  # force_terminal=False: what a job's log or `> demo.log` is
    with SweepView(config, total=2, console=console) as view:
        add(view, 0, 1e-4, [0.5, 0.7], TrialStatus.completed)
        add(view, 1, 2e-4, [0.4], TrialStatus.early_stopped)
    lines = [line.split("] ", 1)[1] for line in render(console).splitlines() if "] trial" in line]
    assert lines == ["trial 0 started: optim.lr=0.0001", "trial 0 epoch 1/3: val/accuracy 0.5000",
                     "trial 0 epoch 2/3: val/accuracy 0.7000",
                     "trial 0 completed, best 0.7000 at epoch 2  (1/2 done)",
                     "trial 1 started: optim.lr=0.0002", "trial 1 epoch 1/3: val/accuracy 0.4000",
                     "trial 1 early stopped, best 0.4000 at epoch 1  (2/2 done)"]
    assert "demo  2/2 started" in render(console), "the summary line closes the log"


def test_top_trials_keep_every_value_whole_in_80_columns(config: ExperimentConfig) -> None:
    view = SweepView(config, total=2, console=new_console())
    params = {"finetune.strategy": "freeze", "finetune.freeze_layers": 3, "optim.lr": 0.000251,
              "optim.weight_decay": 0.0438, "data.batch_size": 32, "optim.warmup_ratio": 0.05,
              "finetune.lora.r": 8}
    records = []
    for number, value in enumerate([0.6768, 0.6566]):
        record = add(view, number, 1e-4, [value], TrialStatus.completed)
        record.params = dict(params)
        records.append(record)
    console = Console(file=io.StringIO(), width=80, color_system=None)
    console.print(results_table(config, records, console.width))
    text = render(console)
    assert "1. trial 0: val/accuracy 0.6768 at epoch 1 of 1, completed" in text
    assert "     optim.weight_decay = 0.0438" in text and "     finetune.strategy = freeze" in text
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    wide = Console(file=io.StringIO(), width=250, color_system=None)
    wide.print(results_table(config, records, wide.width))
    assert "┃ rank" in render(wide), "a table when it fits"


def test_on_a_terminal_events_cost_no_drawing_and_the_last_frame_is_whole(config: ExperimentConfig,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The live view is drawn on its own clock (twice a second), not once per event: a thousand trials'
    events cost the driver no more each than ten do. The frame left on the screen at the end is complete."""
    console = Console(file=io.StringIO(), width=160, color_system=None, force_terminal=True)
    draws = {"count": 0}
    real = SweepView._render

    def counted(self: SweepView) -> object:
        draws["count"] += 1
        return real(self)

    monkeypatch.setattr(SweepView, "_render", counted)
    with SweepView(config, total=300, console=console) as view:
        for number in range(300):
            add(view, number, 1e-4, [0.5, 0.6, 0.7 + number / 1000], TrialStatus.completed)
    assert draws["count"] < 50, f"{draws['count']} draws for 1,500 events"
    last = render(console).rsplit("demo  ", 1)[1]
    assert last.startswith("300/300 started  running 0  completed 300")
    assert "best val/accuracy: 0.9990 (trial 299" in last


def test_a_trial_that_goes_on_is_shown_once_with_its_live_record(config: ExperimentConfig) -> None:
    view = SweepView(config, total=2, console=new_console())
    first = add(view, 0, 1e-4, [0.5], TrialStatus.completed)
    again = TrialRecord("t0-again", 0, {"optim.lr": 1e-4})
    again.history = list(first.history)
    view.trial_started(again)
    assert view.records == [again] and view._counts() == "0/2 done"
    again.status = TrialStatus.completed
    view.trial_ended(again)
    assert view._counts() == "1/2 done"
