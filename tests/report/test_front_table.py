"""The report's Pareto-front table."""

from __future__ import annotations

from types import SimpleNamespace

from finesweep.config import Mode, ObjectiveConfig, ObjectiveTerm
from finesweep.journal.events import SelectionMade
from finesweep.report import page

OBJECTIVE = ObjectiveConfig(metric="val/accuracy", mode=Mode.max,
                            also=[ObjectiveTerm(metric="inference/latency_ms", mode=Mode.min)])
FRONT = [{"trial": 11, "params": {"data.max_length": 16, "finetune.strategy": "head_only"},
          "values": {"inference/latency_ms": 4.309, "val/accuracy": 0.5051}},
         {"trial": 8, "params": {"data.max_length": 16, "finetune.strategy": "lora", "finetune.lora.r": 8},
          "values": {"inference/latency_ms": 4.095, "val/accuracy": 0.4343}}]


def facts(front: list) -> SimpleNamespace:
    selection = SelectionMade(round=0, metrics={}, tags={}, leaderboard_csv="", leaderboard_md="", front=front)
    return SimpleNamespace(selection=selection, config=SimpleNamespace(objective=OBJECTIVE))


def test_the_front_is_a_table_of_each_points_objectives_then_its_values() -> None:
    table = page._front(facts(FRONT))  # type: ignore[arg-type]
    assert "<h2>Pareto front</h2>" in table
    header = "<tr><th>trial</th><th>val/accuracy</th><th>inference/latency_ms</th><th>data.max_length</th>"
    assert header in table and "<th>finetune.lora.r</th>" in table
    assert "<tr><td>11</td><td>0.5051</td><td>4.3090</td><td>16</td>" in table
    assert page._front(facts([])) == ""  # one objective: no table

