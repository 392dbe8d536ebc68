"""End to end through the real CLI: local Ray, a real MLflow store, real Lightning fits on a tiny BERT."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
from mlflow.tracking import MlflowClient

from finesweep.config.compose import project_dir

pytestmark = pytest.mark.slow


def run_cli(args: List[str], cwd: Path, timeout: int = 420) -> subprocess.CompletedProcess:
    # Ray's socket paths must stay under 107 characters, so its temp dir is short, beside cwd's name.
    ray_tmp = ray_tmpdir(cwd)
    env = {**os.environ, "HOME": str(cwd / "home"), "FINESWEEP_PROJECT": str(project_dir()),
           "RAY_TMPDIR": str(ray_tmp), "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "finesweep", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def ray_tmpdir(cwd: Path) -> Path:
    return Path("/tmp") / f"fsr-{abs(hash(str(cwd))) % 10**8}"


def write_sweep(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


def data_overrides(tiny_model: Path, tiny_csv: Path) -> List[str]:
    return [f"model.name_or_path={tiny_model}", f"data.path={tiny_csv}", "data.label_column=label",
            "data.max_length=32", "data.max_samples=null"]


def runs_of(cwd: Path, experiment: str) -> Dict[str, list]:
    client = MlflowClient(tracking_uri=f"sqlite:///{cwd / 'mlruns' / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return {"parents": parents, "children": children, "client": [client]}


GRID = """
objective: {metric: val/accuracy, mode: max}
search: {sampler: grid, max_concurrent: 2, seed: 0}
scheduler: {kind: fifo, max_epochs: 2}
optim: {lr: 1.0e-2}   # the recipe: one of the grid's points, run first
space:
  optim.lr: {distribution: categorical, choices: [3.0e-3, 1.0e-2]}
  data.batch_size: {distribution: categorical, choices: [16, 32]}
"""


@pytest.mark.timeout(420)
def test_grid_sweep_logs_one_parent_and_four_children(tmp_path: Path, tiny_model: Path, tiny_csv: Path) -> None:
    sweep = write_sweep(tmp_path / "grid4.yaml", GRID)
    result = run_cli(["run", str(sweep), *data_overrides(tiny_model, tiny_csv)], tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    for library_noise in ("Failed to fetch metrics", "Token authentication is enabled", "snapshotting", "WARNING"):
        assert library_noise not in result.stdout + result.stderr, "Ray's own messages belong in the sweep's log"
    runs = runs_of(tmp_path, "grid4")
    client = runs["client"][0]
    assert len(runs["parents"]) == 1 and len(runs["children"]) == 4
    parent = runs["parents"][0]
    assert parent.info.status == "FINISHED"
    assert parent.data.params["sampler"] == "grid" and parent.data.params["scheduler"] == "fifo"
    assert '"optim.lr"' in parent.data.params["search_space"]
    assert parent.data.tags["finesweep.version"] and parent.data.tags["finesweep.git_dirty"] in ("true", "false",
                                                                                                 "unknown")
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"config.yaml", "sweep", "best_model"} <= artifacts
    combos = set()
    for child in runs["children"]:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.tags["finesweep.trial_status"] == "completed"
        assert child.data.tags["finesweep.epochs_run"] == "2"
        combos.add((child.data.params["optim.lr"], child.data.params["data.batch_size"]))
        for metric in ("train/loss", "val/loss", "val/accuracy", "val/f1_macro"):
            history = client.get_metric_history(child.info.run_id, metric)
            assert sorted(m.step for m in history) == [1, 2], metric
    assert len(combos) == 4, "the grid runs every combination exactly once"
    best_id = parent.data.tags["finesweep.best_run_id"]
    best = next(c for c in runs["children"] if c.info.run_id == best_id)
    best_acc = max(m.value for m in client.get_metric_history(best_id, "val/accuracy"))
    assert parent.data.metrics["best/val/accuracy"] == pytest.approx(best_acc)
    assert all(max(m.value for m in client.get_metric_history(c.info.run_id, "val/accuracy")) <= best_acc
               for c in runs["children"])
    assert parent.data.tags["best.optim.lr"] == best.data.params["optim.lr"]
    assert "finesweep ui" in result.stdout

    listing = run_cli(["ls"], tmp_path, timeout=120)
    assert listing.returncode == 0, listing.stderr
    assert "grid4" in listing.stdout and "FINISHED" in listing.stdout


# val/loss is continuous, so ASHA's rung cut-offs never tie the way accuracy on 24 rows can.
ASHA = """
objective: {metric: val/loss, mode: min}
search: {sampler: tpe, num_trials: 8, max_concurrent: 2, seed: 3}
scheduler: {kind: asha, max_epochs: 4, grace_period: 1, reduction_factor: 2}
space:
  optim.lr: {distribution: loguniform, low: 1.0e-5, high: 3.0e-2}
  optim.warmup_ratio: {distribution: float, low: 0.0, high: 0.2, step: 0.1}
"""


@pytest.mark.timeout(420)
def test_tpe_asha_stops_weak_trials_early(tmp_path: Path, tiny_model: Path, tiny_csv: Path) -> None:
    sweep = write_sweep(tmp_path / "asha8.yaml", ASHA)
    result = run_cli(["run", str(sweep), *data_overrides(tiny_model, tiny_csv)], tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    runs = runs_of(tmp_path, "asha8")
    assert len(runs["parents"]) == 1 and len(runs["children"]) == 8
    statuses = [c.data.tags["finesweep.trial_status"] for c in runs["children"]]
    assert "early_stopped" in statuses and "completed" in statuses
    for child in runs["children"]:
        epochs = int(child.data.tags["finesweep.epochs_run"])
        if child.data.tags["finesweep.trial_status"] == "early_stopped":
            assert epochs < 4
        else:
            assert epochs == 4
        assert child.info.status == "FINISHED"
    assert runs["parents"][0].data.tags["finesweep.best_run_id"] in {c.info.run_id for c in runs["children"]}


BAD_INPUTS = [
    ("low-gt-high", "space:\n  optim.lr: {distribution: uniform, low: 0.1, high: 0.01}\n", [],
     "space.optim.lr: low must be <= high"),
    ("unknown-key", "space:\n  optim.lrr: {distribution: uniform, low: 0.01, high: 0.1}\n", [],
     "space.optim.lrr: unknown config key"),
    ("missing-file", "space:\n  optim.lr: {distribution: uniform, low: 1.0e-5, high: 0.1}\n",
     ["data.path=/nonexistent/train.csv"], "data.path: file not found, got /nonexistent/train.csv"),
    ("missing-column", "space:\n  optim.lr: {distribution: uniform, low: 1.0e-5, high: 0.1}\n",
     ["data.text_column=tweet"], "data.text_column: column 'tweet' not in"),
    ("grace-gt-max", "space:\n  optim.lr: {distribution: uniform, low: 0.01, high: 0.1}\n",
     ["scheduler.grace_period=9"], "scheduler.grace_period must be between 1 and scheduler.max_epochs"),
    ("prior-off-range", "space:\n  optim.lr: {distribution: loguniform, low: 1.0e-5, high: 1.0e-3, prior: 0.1}\n",
     ["search.sampler=tpe"], "space.optim.lr: prior=0.1 is not a value the space can produce"),
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("space,extra,message", [b[1:] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS])
@pytest.mark.parametrize("command", ["run", "show"])
def test_bad_input_exits_2_with_one_line_and_starts_nothing(
        command: str, space: str, extra: List[str], message: str, tmp_path: Path, tiny_model: Path,
        tiny_csv: Path) -> None:
    sweep = write_sweep(tmp_path / "bad.yaml", "objective: {metric: val/accuracy, mode: max}\n"
                                              "search: {sampler: random, num_trials: 2}\n" + space)
    result = run_cli([command, str(sweep), *data_overrides(tiny_model, tiny_csv), *extra], tmp_path, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and "bad.yaml" in lines[0], result.stderr
    assert not ray_tmpdir(tmp_path).exists(), "Ray must not start"
    assert not (tmp_path / "mlruns").exists(), "no MLflow store or run may be made"


STRATEGIES = """
objective: {metric: val/accuracy, mode: max}
search: {sampler: grid, max_concurrent: 2, seed: 0}
scheduler: {kind: fifo, max_epochs: 3}
final: {top_k: 2, seeds: 2}
optim: {lr: 1.0e-2}
space:
  finetune.strategy: {distribution: categorical, choices: [head_only, freeze, full, lora]}
  finetune.freeze_layers: {distribution: categorical, choices: [1], when: {finetune.strategy: freeze}}
  finetune.lora.r: {distribution: categorical, choices: [4], when: {finetune.strategy: lora}}
  optim.lr: {distribution: categorical, choices: [1.0e-2]}
"""


@pytest.mark.timeout(420)
def test_strategy_sweep_registers_a_model_that_reproduces_the_test_metric(
        tmp_path: Path, tiny_model: Path, tiny_csv: Path) -> None:
    import mlflow
    import pandas as pd

    from finesweep.config.compose import compose
    from finesweep.tasks.text_classification import TextClassification

    sweep = write_sweep(tmp_path / "strategies.yaml", STRATEGIES)
    overrides = data_overrides(tiny_model, tiny_csv)
    result = run_cli(["run", str(sweep), *overrides], tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    runs = runs_of(tmp_path, "strategies")
    client = runs["client"][0]
    search = [c for c in runs["children"] if c.data.tags["finesweep.phase"] == "search"]
    final = [c for c in runs["children"] if c.data.tags["finesweep.phase"] == "final"]
    assert len(search) == 4 and len(final) == 4, "4 grid branches, then top-2 x 2 fresh seeds"
    for child in search:
        strategy = child.data.params["finetune.strategy"]
        assert ("finetune.freeze_layers" in child.data.params) == (strategy == "freeze")
        assert ("finetune.lora.r" in child.data.params) == (strategy == "lora")
        fraction = client.get_metric_history(child.info.run_id, "model/trainable_fraction")
        assert fraction and (fraction[-1].value < 1.0) == (strategy != "full")
    assert {c.data.params["trainer.seed"] for c in final} == {"1", "2"}

    parent = runs["parents"][0]
    metrics = parent.data.metrics
    assert {"test/accuracy", "final/val/val/accuracy/mean", "final/val/val/accuracy/std",
            "inference/latency_ms_per_example"} <= set(metrics)
    assert "final/leaderboard.csv" in {a.path for a in client.list_artifacts(parent.info.run_id, "final")}
    name, version = parent.data.tags["finesweep.registered_model"].split("/")
    assert name == "strategies"

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    config = compose(str(sweep), overrides).config
    test_rows = TextClassification().split_rows(config.data)["test"]
    predicted = model.predict(pd.DataFrame({"text": test_rows["text"]}))
    accuracy = float((predicted["label"].to_numpy() == test_rows["label"].to_numpy()).mean())
    assert accuracy == pytest.approx(metrics["test/accuracy"], abs=1e-6)


@pytest.mark.timeout(180)
def test_show_prints_the_prior_of_each_searched_key_and_that_its_mode_is_the_first_trial(tmp_path: Path) -> None:
    result = run_cli(["show", "demo", "search.prior=config", "optim.lr=1e-4"], tmp_path, timeout=170)
    assert result.returncode == 0, result.stderr
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if line.count("│") > 4}
    assert "0.0001 (medium)" in rows["optim.lr"] and "full (medium)" in rows["finetune.strategy"]
    assert "first trial(s): the recipe (the config's own values, the prior's mode)" in result.stdout
    plain = run_cli(["show", "demo"], tmp_path, timeout=170)
    assert plain.returncode == 0 and "prior" not in plain.stdout.split("# composed config")[0] + plain.stdout.split(
        "search space")[-1]
