"""What a person sees after a sweep: the report (in a real headless Chromium), the MLflow UI opened on the
sweep's training runs, the Optuna study optuna-dashboard opens, and the winner served over REST.

Chromium and its driver are Debian's `chromium` and `chromium-driver` (`make system-deps` installs them);
screenshots are kept beside each test's files (pytest's tmp_path) as artifacts.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator, List

import pytest

from e2e import env, events, run_cli
from servers import free_port

pytestmark = pytest.mark.slow

LOOKS = """
objective: {metric: val/accuracy, mode: max}
search: {sampler: tpe, num_trials: 6, max_concurrent: 2, seed: 3}
scheduler: {kind: asha, max_epochs: 3, grace_period: 1, reduction_factor: 2}
optim: {lr: 1.0e-3}         # the recipe: the search's first trial
final: {top_k: 2, cv_folds: 3}
space:
  optim.lr: {distribution: loguniform, low: 1.0e-4, high: 3.0e-2}
  finetune.strategy: {distribution: categorical, choices: [full, freeze]}
"""
FOLDS = 3

FIGURES = ["history", "learning_curves", "importance", "slice", "parallel_coordinates", "by_strategy",
           "trainable_fraction", "finalists", "schedule"]


class Swept:
    """A finished sweep in its own folder, as `finesweep run` left it."""

    def __init__(self, cwd: Path, output: str) -> None:
        self.cwd = cwd
        self.output = output
        self.uri = f"sqlite:///{cwd / 'mlruns' / 'mlflow.db'}"

    @property
    def report(self) -> Path:
        line = next(line for line in self.output.splitlines() if line.startswith("report: "))
        return Path(line.removeprefix("report: ").strip())


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, tiny_csv: Path) -> Swept:
    cwd = tmp_path_factory.mktemp("looks")
    (cwd / "looks.yaml").write_text(LOOKS)
    result = run_cli(["run", "looks.yaml", f"model.name_or_path={tiny_model}", f"data.path={tiny_csv}",
                      "data.label_column=label", "data.max_length=32", "data.max_samples=null",
                      "finetune.freeze_layers=1", "final.baseline=true"], cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    return Swept(cwd, result.stdout)


@pytest.fixture()
def browser(tmp_path: Path) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.fail("Chromium is not installed: run `make system-deps` (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1000",
                     f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    session = webdriver.Chrome(service=Service(driver), options=options)
    try:
        yield session
    finally:
        session.quit()


def wait_for(check: Any, what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"{what} did not happen in {timeout:.0f} s")


class Served:
    """A finesweep command that serves something (ui, serve) until the test ends."""

    def __init__(self, args: List[str], cwd: Path, **extra_env: str) -> None:
        self.log = cwd / f"{args[0]}-{time.monotonic_ns()}.log"
        self.process = subprocess.Popen([sys.executable, "-m", "finesweep", *args], cwd=cwd, env=env(cwd, **extra_env),
                                        stdout=open(self.log, "w"), stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        return self.log.read_text()

    def wait_until_up(self, url: str, timeout: float = 120) -> None:
        def up() -> bool:
            assert self.process.poll() is None, self.output()[-3000:]
            try:
                urllib.request.urlopen(url, timeout=2)
                return True
            except OSError:
                return False

        wait_for(up, f"{url} answering", timeout)

    def stop(self) -> None:
        import os
        import signal

        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


@pytest.mark.timeout(600)
def test_the_report_is_written_logged_and_cross_referenced_with_optuna(swept: Swept) -> None:
    import optuna
    from mlflow.tracking import MlflowClient

    assert swept.report.is_file() and swept.report.stat().st_size > 1_000_000, "plotly.js inlined: opens offline"
    html = swept.report.read_text()
    assert "<script src=" not in html and "<link " not in html, "nothing loaded from the network"
    for title in ("Optimisation history", "Learning curves", "Hyperparameter importance", "Slice plot",
                  "Parallel coordinates", "Objective by fine-tuning strategy", "What you gain per trained parameter",
                  "Schedule", "Winner", "Leaderboard", "rung 1", "The slots were busy", "Finalists and the recipe",
                  "against the recipe"):
        assert title in html, title
    assert sorted(p.stem for p in swept.report.parent.glob("*.png")) == sorted(FIGURES)

    client = MlflowClient(swept.uri)
    experiment = client.get_experiment_by_name("looks")
    assert experiment.tags["mlflow.experimentKind"] == "finetuning", "the UI opens it as model training"
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.html", *(f"report/{f}.png" for f in FIGURES)} <= logged
    registered = parent.data.tags["finesweep.registered_model"]
    assert f"<td>{registered}</td>" in html, "the page waited for MLflow's version, drawn while it registered"

    # What the sweep bought: the config without searched values, never ranked. The recipe's trial (trial 0) is that
    # very config and seed: when it ran its full budget it is the baseline, else the baseline is trained after.
    assert "What the sweep bought" in html
    recipe = next(r for r in runs if r.info.run_name == "trial-000")
    baselines = [r for r in runs if r.data.tags.get("finesweep.phase") == "baseline"]
    if recipe.data.tags["finesweep.trial_status"] == "completed":
        assert baselines == [], "the recipe's full-budget trial is not trained again"
        baseline = recipe
    else:
        (baseline,) = baselines
        assert baseline.info.run_name.startswith("baseline-") and baseline.data.params == {"effective_batch": "32"}
    best = max(m.value for m in client.get_metric_history(baseline.info.run_id, "val/accuracy"))
    assert parent.data.metrics["baseline/val/accuracy"] == pytest.approx(best)
    gain = parent.data.metrics["gain/val/accuracy"]
    assert gain == pytest.approx(parent.data.metrics["final/val/val/accuracy/mean"]
                                 - parent.data.metrics["baseline/val/accuracy"])
    assert parent.data.metrics["gain/test/accuracy"] == pytest.approx(
        parent.data.metrics["test/accuracy"] - parent.data.metrics["baseline/test/accuracy"])
    assert parent.data.tags["finesweep.best_run_id"] != baseline.info.run_id

    # The study behind the search, where optuna-dashboard finds it, pointing at the MLflow child runs.
    storage = f"sqlite:///{swept.cwd / 'mlruns' / 'optuna.db'}"
    (summary,) = optuna.get_all_study_summaries(storage)
    assert summary.study_name.startswith("looks-") and summary.n_trials == 6
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    children = {r.info.run_id: r for r in runs if r.data.tags.get("finesweep.phase") == "search"}
    for trial in study.trials:
        child = children[trial.user_attrs["mlflow_run_id"]]
        assert child.data.tags["finesweep.optuna_trial"] == str(trial.number)
        assert child.data.params["optim.lr"].startswith(f"{trial.params['optim.lr']:.3g}"[:4])
    assert study.user_attrs["mlflow_parent_run_id"] == parent.info.run_id

    # `finesweep report` builds it again for the latest sweep and logs it once more, in place.
    again = run_cli(["report"], swept.cwd, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"{swept.report}" in again.stdout
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "report")} == logged


@pytest.mark.timeout(600)
def test_the_recipe_runs_first_and_the_finalists_are_cross_validated_with_an_honest_verdict(swept: Swept) -> None:
    import statistics

    import pandas as pd
    from mlflow.tracking import MlflowClient

    client = MlflowClient(swept.uri)
    experiment = client.get_experiment_by_name("looks")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    search = {r.info.run_name: r for r in runs if r.data.tags.get("finesweep.phase") == "search"}
    # The recipe (the composed config's own values) is child run 0, under TPE.
    assert search["trial-000"].data.params == {"optim.lr": "0.001", "finetune.strategy": "full",
                                               "effective_batch": "32"}  # 32 per device x 1 worker x 1

    # Each finalist (the top 2 and the recipe) ran on the same 3 folds, one child run per fold.
    final = [r for r in runs if r.data.tags.get("finesweep.phase") == "final"]
    by_config: dict = {}
    for run in final:
        config = tuple(sorted((k, v) for k, v in run.data.params.items() if k not in ("data.fold", "effective_batch")))
        best = max(m.value for m in client.get_metric_history(run.info.run_id, "val/accuracy"))  # its best epoch
        by_config.setdefault(config, {})[int(run.data.params["data.fold"])] = best
    recipe = (("finetune.strategy", "full"), ("optim.lr", "0.001"))
    assert recipe in by_config and len(by_config) in (2, 3), by_config.keys()
    assert all(sorted(folds) == list(range(FOLDS)) for folds in by_config.values()), "paired: the same folds"

    # The verdict, recomputed from the fold runs by hand: the winner (best mean over folds) minus the recipe,
    # fold by fold, with the Nadeau-Bengio corrected t-interval (t(0.975, 2) = 4.302653 from a t table).
    means = {c: statistics.fmean(f.values()) for c, f in by_config.items()}
    board = pd.read_csv(client.download_artifacts(parent.info.run_id, "final/leaderboard.csv"))
    assert len(board) == len(by_config) and board["val val/accuracy mean"].is_monotonic_decreasing
    best = max(means.values())  # a tie goes to the recipe: a searched configuration must rank above it
    winner = recipe if means[recipe] == best else next(c for c in means if means[c] == best)
    assert board["val val/accuracy mean"].iloc[0] == pytest.approx(means[winner])
    line = parent.data.tags["finesweep.verdict"]
    assert line in swept.output and line.startswith("winner vs recipe: ")
    if winner == recipe:
        assert "the winner is the recipe" in line
        return
    diffs = [by_config[winner][f] - by_config[recipe][f] for f in range(FOLDS)]
    mean, spread = statistics.fmean(diffs), statistics.stdev(diffs)
    half = 4.302653 * spread * (1 / FOLDS + 1 / (FOLDS - 1)) ** 0.5
    metrics = parent.data.metrics
    assert metrics["vs_recipe/val/accuracy/diff"] == pytest.approx(mean)
    assert metrics["vs_recipe/val/accuracy/low"] == pytest.approx(mean - half, abs=1e-6)
    assert metrics["vs_recipe/val/accuracy/high"] == pytest.approx(mean + half, abs=1e-6)
    assert f"{100 * mean:+.1f} points val/accuracy [{100 * (mean - half):+.1f} points, " in line
    distinguishable = mean - half > 0 or mean + half < 0
    assert ("not distinguishable from the recipe" in line) != distinguishable


@pytest.mark.timeout(300)
def test_every_figure_of_the_report_renders_in_a_browser_without_errors(swept: Swept, browser: Any,
                                                                         tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    browser.get(swept.report.as_uri())
    plots = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, ".js-plotly-plot .main-svg"), "plots drawn")
    drawn = {p.find_element(By.XPATH, "./ancestor::div[contains(@class,'js-plotly-plot')]").get_attribute("id")
             for p in plots}
    assert len(drawn) == len(FIGURES), f"every figure drawn, got {sorted(drawn)}"
    for plot in browser.find_elements(By.CSS_SELECTOR, ".js-plotly-plot"):
        assert plot.size["height"] > 200 and plot.size["width"] > 400
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == [], errors
    browser.save_screenshot(str(tmp_path / "report.png"))


@pytest.mark.timeout(300)
def test_the_mlflow_ui_opens_on_the_sweeps_training_runs(swept: Swept, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    port = free_port()
    ui = Served(["ui", "--port", str(port)], swept.cwd)
    try:
        ui.wait_until_up(f"http://127.0.0.1:{port}/health")
        link = next(word for line in ui.output().splitlines() if line.startswith("latest sweep looks")
                    for word in line.split() if word.startswith("http://"))
        browser.get(link)
        def trials() -> List[Any]:
            return [a for a in browser.find_elements(By.CSS_SELECTOR, "a[href*='/runs/']")
                    if a.text.strip().startswith("trial-")]

        # The first screen shows the latest sweep's trials, best first, with nothing to click (the view's search).
        nested = wait_for(lambda: trials() if len(trials()) >= 6 else [], "the trials on the first screen", timeout=60)
        text = browser.find_element(By.TAG_NAME, "body").text
        assert "Model training" in text and "Token Usage" not in text, "the training runs, not the GenAI overview"
        assert {a.text.strip() for a in nested} == {f"trial-{n:03d}" for n in range(6)}
        last = {e["number"]: e["metrics"]["val/accuracy"] for e in events(swept.cwd) if e["kind"] == "trial_result"}
        shown = sorted(nested, key=lambda a: int(a.find_element(By.XPATH, "./ancestor::*[@role='row'][1]")
                                                 .get_attribute("row-index")))
        values = [last[int(a.text.strip().removeprefix("trial-"))] for a in shown]
        assert values == sorted(values, reverse=True), f"sorted by the objective, best first: {values}"
        # The link's shared view puts each trial's status, the objective and the searched values in columns.
        headers = " ".join(h.text for h in browser.find_elements(By.CSS_SELECTOR, "[role='columnheader']"))
        for column in ("finesweep.trial_status", "val/accuracy", "optim.lr", "finetune.strategy"):
            assert column in headers, f"{column} is not a column of the runs table: {headers!r}"
        statuses = {e["number"]: e["status"] for e in events(swept.cwd) if e["kind"] == "trial_ended"}
        assert {"completed", "early_stopped"} <= set(statuses.values()), statuses
        for link in nested:
            index = link.find_element(By.XPATH, "./ancestor::*[@role='row'][1]").get_attribute("row-index")
            row_parts = browser.find_elements(By.CSS_SELECTOR, f"[role='row'][row-index='{index}']")
            cells = " ".join(part.text for part in row_parts)
            number = int(link.text.strip().removeprefix("trial-"))
            assert statuses[number] in cells.split(), f"trial {number}'s row shows {cells!r}, not {statuses[number]}"
        browser.save_screenshot(str(tmp_path / "mlflow-runs.png"))

        parent = next(word for line in ui.output().splitlines() if line.strip().startswith("its parent run:")
                      for word in line.split() if word.startswith("http://"))
        browser.get(parent.split("?")[0] + "/artifacts")
        wait_for(lambda: "report" in browser.find_element(By.TAG_NAME, "body").text, "report/ among the artifacts")
        browser.save_screenshot(str(tmp_path / "mlflow-parent.png"))
    finally:
        ui.stop()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("command", ["ui", "serve"])
def test_a_public_host_needs_expose(swept: Swept, command: str) -> None:
    refused = run_cli([command, "--host", "0.0.0.0"], swept.cwd, timeout=60)
    assert refused.returncode == 2
    assert "--host 0.0.0.0: not a loopback address" in refused.stderr and "--expose" in refused.stderr


@pytest.mark.timeout(300)
def test_the_winner_is_served_over_rest_on_loopback(swept: Swept, tmp_path: Path) -> None:
    """From another folder, with the store in MLFLOW_TRACKING_URI as MLflow users set it, by NAME/VERSION."""
    port = free_port()
    served = Served(["serve", "looks/1", "--port", str(port)], tmp_path, MLFLOW_TRACKING_URI=swept.uri)
    try:
        served.wait_until_up(f"http://127.0.0.1:{port}/ping", timeout=180)
        assert f"serving models:/looks/1 from {swept.uri}" in served.output() and "curl -s" in served.output()
        body = json.dumps({"dataframe_records": [{"text": "a great movie"}, {"text": "an awful day"}]}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        answer = json.loads(urllib.request.urlopen(request, timeout=60).read())["predictions"]
        assert len(answer) == 2
        for row in answer:
            assert row["label"] in {"negative", "neutral", "positive"} and 0.0 < row["score"] <= 1.0
    finally:
        served.stop()


PAIRS = """
objective: {metric: val/accuracy, mode: max}
search: {sampler: random, num_trials: 1, max_concurrent: 1, seed: 0}
scheduler: {kind: fifo, max_epochs: 1}
optim: {lr: 2.0e-3}
space:
  optim.lr: {distribution: loguniform, low: 1.0e-3, high: 3.0e-3}
"""


def write_pairs(path: Path, rows: int = 120) -> Path:
    """Premise, hypothesis and whether they agree in sentiment (words from the tiny model's vocabulary)."""
    import random

    rng = random.Random(1)
    moods = {"positive": ["good", "great", "love", "happy"], "negative": ["bad", "awful", "hate", "sad"]}
    lines = ["premise,hypothesis,label"]
    for _ in range(rows):
        first, second = rng.choice(list(moods)), rng.choice(list(moods))
        premise = f"the movie was {rng.choice(moods[first])}"
        hypothesis = f"we felt {rng.choice(moods[second])} this day"
        lines.append(f"{premise},{hypothesis},{'agree' if first == second else 'disagree'}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.timeout(480)
def test_a_text_pair_winner_is_served_with_both_texts(tmp_path: Path, tiny_model: Path) -> None:
    import mlflow
    import pandas as pd

    (tmp_path / "pairs.yaml").write_text(PAIRS)
    result = run_cli(["run", "pairs.yaml", f"model.name_or_path={tiny_model}",
                      f"data.path={write_pairs(tmp_path / 'pairs.csv')}", "data.text_column=premise",
                      "data.text_pair_column=hypothesis", "data.label_column=label", "data.max_length=32",
                      "data.max_samples=null"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    records = [{"premise": "the movie was great", "hypothesis": "we felt happy this day"},
               {"premise": "the movie was awful", "hypothesis": "we felt great this day"}]
    port = free_port()
    served = Served(["serve", "--port", str(port)], tmp_path)
    try:
        served.wait_until_up(f"http://127.0.0.1:{port}/ping", timeout=180)
        curl = next(line for line in served.output().splitlines() if "curl -s" in line)
        assert "serving models:/pairs/1" in served.output() and '"hypothesis"' in curl, served.output()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations",
                                         data=json.dumps({"dataframe_records": records}).encode(),
                                         headers={"Content-Type": "application/json"})
        answer = json.loads(urllib.request.urlopen(request, timeout=60).read())["predictions"]
        halves = urllib.request.Request(request.full_url, headers=request.headers, data=json.dumps(
            {"dataframe_records": [{"premise": r["premise"]} for r in records]}).encode())
        with pytest.raises(urllib.error.HTTPError, match="400"):  # the signature asks for both texts
            urllib.request.urlopen(halves, timeout=60)
    finally:
        served.stop()
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    try:  # the same model loaded in this process: the server read both texts of each pair as it does
        expected = mlflow.pyfunc.load_model("models:/pairs/1").predict(pd.DataFrame(records))
    finally:
        mlflow.set_tracking_uri(previous)
    assert [row["label"] for row in answer] == list(expected["label"])
    assert [row["score"] for row in answer] == pytest.approx(list(expected["score"]), abs=1e-5)
    for row in answer:
        assert row["label"] in {"agree", "disagree"} and 0.5 <= row["score"] <= 1.0  # the top class of two
