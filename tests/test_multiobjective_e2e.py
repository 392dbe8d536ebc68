"""End to end, a multi-objective sweep: accuracy against latency with a constraint, NSGA-II proposing, MO-ASHA
stopping, the driver killed mid-sweep and resumed, the Pareto front on the parent run, the winner feasible, and
``finesweep select`` registering a second front point."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from e2e import Driver, run_cli, runs
from finesweep.api import load
from finesweep.config import Bound, Mode, ObjectiveConfig, ObjectiveTerm
from finesweep.journal.events import SelectionMade
from finesweep.journal.file import read_events
from finesweep.journal.front import pareto_front
from finesweep.journal.replay import find_sweeps, load_state
from test_resume_e2e import assert_exactly_once, data_overrides, uri

pytestmark = pytest.mark.slow

MAX_TRAINABLE = 10000
"""The constraint: the tiny BERT has 21,347 weights, so full fine-tuning breaks it; head-only and LoRA do not."""

SWEEP = f"""
objective:
  metrics:
    - {{metric: val/accuracy, mode: max}}
    - {{metric: inference/latency_ms, mode: min}}
  constraints:
    model/trainable_params: {{max: {MAX_TRAINABLE}}}
search: {{sampler: nsga2, num_trials: 8, max_concurrent: 2, seed: 0}}
scheduler: {{kind: asha, max_epochs: 3, grace_period: 1, reduction_factor: 2, stop_infeasible: true}}
final: {{select: {{metric: val/accuracy}}}}
finetune: {{strategy: head_only}}
optim: {{lr: 3.0e-2}}
space:
  finetune.strategy: {{distribution: categorical, choices: [head_only, lora, full]}}
  data.batch_size: {{distribution: categorical, choices: [2, 32]}}   # 96 steps an epoch, or 6
  data.max_length: {{distribution: categorical, choices: [8, 32]}}
  optim.lr: {{distribution: loguniform, low: 1.0e-2, high: 1.0e-1}}
"""

OBJECTIVE = ObjectiveConfig(metric="val/accuracy", mode=Mode.max,
                            also=[ObjectiveTerm(metric="inference/latency_ms", mode=Mode.min)],
                            constraints={"model/trainable_params": Bound(max=MAX_TRAINABLE)})


@pytest.mark.timeout(900)
def test_a_two_objective_sweep_resumed_mid_way_selects_a_feasible_front_point_and_registers_another(
        tmp_path: Path, tiny_model: Path, tiny_csv: Path) -> None:
    sweep = tmp_path / "latency.yaml"
    sweep.write_text(SWEEP)
    overrides = data_overrides(tiny_model, tiny_csv)  # the recipe: max_length 32, batch 32 (both searched)
    driver = Driver(["run", str(sweep), *overrides], tmp_path)
    driver.wait_for_results(5, timeout=300)
    driver.kill()
    resumed = run_cli(["resume", *overrides], tmp_path, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    trials = assert_exactly_once(tmp_path, "latency", 8)

    folder = find_sweeps(str(tmp_path / "mlruns" / "ray"))[0]
    state = load_state(folder)
    records = [t.record("val/accuracy", Mode.max) for t in state.search_trials()]
    for record in records:  # every report carries the trial's costs
        assert all(h.get("inference/latency_ms", 0) > 0 and h.get("model/size_mb", 0) > 0 for h in record.history)
    # stop_infeasible: full fine-tuning breaks the constraint at its first report and stops there
    full = [r for r in records if r.params["finetune.strategy"] == "full"]
    assert all(r.epochs_run == 1 and r.status.value == "early_stopped" for r in full)
    assert all(r.history[0]["model/trainable_params"] > MAX_TRAINABLE for r in full)
    feasible = [r for r in records if r.params["finetune.strategy"] != "full"]
    assert full and feasible, trials  # the seeded NSGA-II's first generation samples both
    assert all(r.epochs_run < 3 for r in records if r.status.value == "early_stopped")

    selection = [e for e in read_events(folder / "events.jsonl") if isinstance(e, SelectionMade)][-1]
    expected = {r.number for r in pareto_front(records, OBJECTIVE)}
    front = {row["trial"] for row in selection.front}
    assert front == expected and front, (front, expected)
    for row in selection.front:  # non-dominated among the feasible trials, checked by brute force
        for other in feasible:
            acc, lat = other.values(["val/accuracy", "inference/latency_ms"])
            mine = (row["values"]["val/accuracy"], row["values"]["inference/latency_ms"])
            assert not (acc >= mine[0] and lat <= mine[1] and (acc, lat) != mine), (row, other.number)

    found = runs(uri(tmp_path), "latency")
    parent = found["parents"][0]
    client = MlflowClient(uri(tmp_path))
    table = json.loads(Path(client.download_artifacts(parent.info.run_id, "final/pareto_front.json",
                                                      str(tmp_path / "dl"))).read_text())
    child_ids = {c.info.run_id for c in found["children"]}
    rows = [dict(zip(table["columns"], values, strict=True)) for values in table["data"]]
    assert {row["trial"] for row in rows} == front and all(row["run_id"] in child_ids for row in rows)
    # the winner: the most accurate feasible front point, its weights registered as version 1
    winner = next(r for r in records if r.number == int(parent.data.tags["finesweep.best_trial"]))
    assert winner.at_best["model/trainable_params"] <= MAX_TRAINABLE  # the winner respects the constraint
    best_accuracy = max(row["values"]["val/accuracy"] for row in selection.front)
    assert math.isclose(winner.at_best["val/accuracy"], best_accuracy), (winner.number, selection.front)
    versions = client.search_model_versions("name='latency'")
    assert len(versions) == 1

    # another point of the front when it has several (on 24 validation rows accuracies tie often), else the winner's
    # own point again: either way a new version from kept weights, nothing trained
    other = next((row["trial"] for row in selection.front if row["trial"] != winner.number), winner.number)
    picked = run_cli(["select", "--trial", str(other)], tmp_path, timeout=300)
    assert picked.returncode == 0, picked.stdout + picked.stderr
    versions = client.search_model_versions("name='latency'")
    assert len(versions) == 2
    parent = client.get_run(parent.info.run_id)
    assert parent.data.tags["finesweep.selected_trial"] == str(other)
    # the pick registers a version; model selection's result, leaderboard and front stand in the report and the API
    report = run_cli(["report"], tmp_path, timeout=300)
    assert report.returncode == 0, report.stdout + report.stderr
    html = next((folder / "report").glob("*.html")).read_text()
    assert "<h2>Leaderboard</h2>" in html and "<h2>Pareto front</h2>" in html
    assert load(folder.name, [f"cluster.storage_path={tmp_path / 'mlruns' / 'ray'}"]).best_trial == winner.number
    wrong = run_cli(["select", "--trial", "999"], tmp_path, timeout=120)
    assert wrong.returncode == 2 and "--trial must be a trial on" in wrong.stderr, wrong.stderr
