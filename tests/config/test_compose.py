"""Composition's public face: the config a sweep's journal holds (resume), and where results go (the environment)."""

from __future__ import annotations

from pathlib import Path

import pytest

from finesweep.config.compose import compose, locations, stored
from finesweep.errors import ConfigError


@pytest.fixture()
def demo_yaml() -> str:
    return compose("demo", ["optim.lr=3e-5"]).yaml_text


def test_a_resume_accepts_the_values_the_sweep_ran_with(demo_yaml: str) -> None:
    sweep_file = compose("demo", []).sweep_file
    same = stored(demo_yaml, sweep_file, ["optim.lr=3e-5", "optim.lr=0.00003", "data.max_length=48",
                                          "search.num_trials=20", "search.max_concurrent=1"])
    assert same.config.optim.lr == 3e-5 and same.config.search.num_trials == 20
    assert same.config.search.max_concurrent == 1


def test_a_resume_refuses_a_real_change_and_says_what_it_ran_with(demo_yaml: str) -> None:
    sweep_file = compose("demo", []).sweep_file
    with pytest.raises(ConfigError, match=r"^optim\.lr: a resume continues the sweep as it was; only tracking\., "
                                          r"cluster\., search\.num_trials, search\.max_concurrent, search\.max_retries "
                                          r"may change, got optim\.lr=1e-4 \(the sweep ran with 3e-05\)\. To change "
                                          r"optim\.lr, start a new sweep with finesweep run\.$"):
        stored(demo_yaml, sweep_file, ["search.num_trials=20", "optim.lr=1e-4"])
    with pytest.raises(ConfigError, match=r"^search\.sampler: .* got search\.sampler=random"):
        stored(demo_yaml, sweep_file, ["search.sampler=random"])


def test_a_config_group_choice_is_checked_by_composing_again(demo_yaml: str) -> None:
    sweep_file = compose("demo", []).sweep_file
    assert stored(demo_yaml, sweep_file, ["data=tweet_sentiment", "optim.lr=3e-5"]).config.optim.lr == 3e-5
    with pytest.raises(ConfigError, match=r"^finetune\.strategy: a resume continues the sweep as it was; .* got "
                                          r"finetune=lora \(the sweep ran with 'full'\)"):
        stored(demo_yaml, sweep_file, ["finetune=lora", "optim.lr=3e-5"])


def test_a_config_group_choice_needs_the_sweep_file(demo_yaml: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^data=csv: a resume checks a config-group choice against the sweep file"):
        stored(demo_yaml, tmp_path / "gone.yaml", ["data=csv"])


def test_the_store_comes_from_the_environment_unless_given(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """MLflow, Lightning's MLFlowLogger and the Hugging Face Trainer all honour MLFLOW_TRACKING_URI; so does this."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    assert locations([]).tracking_uri == f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    assert compose("demo", []).config.experiment_name == "demo"

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////srv/team.db")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "team-sweeps")
    found = locations([])
    assert (found.tracking_uri, found.uri_given) == ("sqlite:////srv/team.db", False)
    assert locations(["tracking=server"]).tracking_uri == "sqlite:////srv/team.db"
    composed = compose("demo", [])
    assert composed.config.tracking.uri == "sqlite:////srv/team.db"
    assert composed.config.experiment_name == "team-sweeps"
    given = locations(["tracking.uri=http://127.0.0.1:5000"])
    assert (given.tracking_uri, given.uri_given) == ("http://127.0.0.1:5000", True), "an explicit value wins"
    assert compose("demo", ["tracking.experiment=mine"]).config.experiment_name == "mine"


def test_a_sweep_from_before_the_recipe_trial_resumes_as_it_ran(demo_yaml: str) -> None:
    """Its journal's config has no search.start_from_config: it ran without a recipe trial, and goes on so."""
    sweep_file = compose("demo", []).sweep_file
    assert stored(demo_yaml, sweep_file, []).config.search.start_from_config
    old = demo_yaml.replace("  start_from_config: true\n", "")
    assert old != demo_yaml and not stored(old, sweep_file, []).config.search.start_from_config
