"""The recipe (the composed config's own values of the searched keys) and ``search.enqueue``: what the search runs
first, checked against the space before anything starts."""

from __future__ import annotations

from typing import Any, Dict, List

import pytest

from finesweep.config.compose import compose
from finesweep.config.recipe import check_start, enqueued, recipe, start_points
from finesweep.config.sweep import Sweep
from finesweep.errors import ConfigError, SearchSpaceError


def demo(*overrides: str) -> Sweep:
    return compose("demo", list(overrides))


def test_the_recipe_is_the_configs_own_values_of_the_searched_keys() -> None:
    sweep = demo("optim.lr=3e-4", "data.batch_size=16")
    # finetune.freeze_layers and finetune.lora.r exist only under their strategy: the recipe's is full.
    assert recipe(sweep.config, sweep.params) == {"finetune.strategy": "full", "optim.lr": 3e-4,
                                                  "optim.weight_decay": 0.01, "data.batch_size": 16,
                                                  "optim.warmup_ratio": 0.1}


def test_conditional_keys_follow_the_recipes_branch() -> None:
    sweep = demo("finetune=freeze", "finetune.freeze_layers=4")
    assert recipe(sweep.config, sweep.params)["finetune.freeze_layers"] == 4
    lora = demo("finetune=lora", "finetune.lora.r=16", "optim.lr=1e-4")
    values = recipe(lora.config, lora.params)
    assert values["finetune.strategy"] == "lora" and values["finetune.lora.r"] == 16
    assert "finetune.freeze_layers" not in values


def test_a_choice_matches_the_config_value_it_sets() -> None:
    """The model's choice is spelled as the sweep file spells it; the config holds the resolved folder."""
    sweep = compose("model_choice", [])
    (choice, *_) = sweep.params[0].choices
    assert recipe(sweep.config, sweep.params)["model.name_or_path"] == choice


@pytest.mark.parametrize("override,message", [
    ("optim.lr=0.1", r"search\.start_from_config: the recipe's optim\.lr=0\.1 \(the composed config's own value\) is "
                     r"not in space\.optim\.lr \(loguniform \[2e-05, 0\.001\]\)\. Set optim\.lr to a value inside it, "
                     r"widen space\.optim\.lr, or set search\.start_from_config=false\.$"),
    ("optim.warmup_ratio=0.12", r"the recipe's optim\.warmup_ratio=0\.12 .* \(float \[0, 0\.2\] in steps of 0\.05\)"),
    ("data.batch_size=8", r"the recipe's data\.batch_size=8 .* \(choices 16, 32\)"),
    ("finetune.freeze_layers=1", r"^$"),  # off the recipe's branch (full): not checked, not an error
    ("finetune=freeze finetune.freeze_layers=1", r"the recipe's finetune\.freeze_layers=1 .* \(int \[2, 5\]\)"),
    ("finetune=gradual_unfreeze", r"the recipe's finetune\.strategy='gradual_unfreeze' .* \(choices 'head_only', "
                                  r"'freeze', 'lora', 'full'\)"),
])
def test_a_recipe_the_space_cannot_produce_is_a_one_line_error(override: str, message: str) -> None:
    if not message.strip("^$"):
        sweep = demo(*override.split())
        assert "finetune.freeze_layers" not in recipe(sweep.config, sweep.params)
        return
    with pytest.raises(SearchSpaceError, match=message) as caught:
        demo(*override.split())
    assert "\n" not in str(caught.value) and str(caught.value).startswith("sweeps/demo.yaml: ")


def test_without_start_from_config_any_recipe_composes_and_model_selection_still_knows_it() -> None:
    sweep = demo("optim.lr=0.1", "search.start_from_config=false")
    assert start_points(sweep.config, sweep.params) == []
    assert recipe(sweep.config, sweep.params, strict=False)["optim.lr"] == 0.1


def test_enqueued_points_follow_the_recipe_each_once_with_keys_left_to_the_sampler() -> None:
    points: List[Dict[str, Any]] = [{"optim.lr": 1e-4}, {"finetune.strategy": "freeze", "finetune.freeze_layers": 3},
                                    {"finetune.strategy": "full", "optim.lr": 5e-5, "optim.weight_decay": 0.01,
                                     "data.batch_size": 32, "optim.warmup_ratio": 0.1}]  # the recipe again
    sweep = demo(f"search.enqueue={_hydra(points)}")
    first = start_points(sweep.config, sweep.params)
    assert first == [recipe(sweep.config, sweep.params), {"optim.lr": 1e-4},
                     {"finetune.strategy": "freeze", "finetune.freeze_layers": 3}]
    assert check_start(sweep.config, sweep.params) == first


@pytest.mark.parametrize("point,message", [
    ({"optim.momentum": 0.9}, r"search\.enqueue\[0\]: optim\.momentum is not a searched key \(space has "
                              r"finetune\.strategy, .*\)\. Enqueue values of searched keys only\.$"),
    ({"finetune.freeze_layers": 3}, r"search\.enqueue\[0\]: finetune\.freeze_layers exists only under "
                                    r"finetune\.strategy, which the point leaves to the sampler\. Give "
                                    r"finetune\.strategy too\.$"),
    ({"finetune.strategy": "full", "finetune.freeze_layers": 3},
     r"search\.enqueue\[0\]: finetune\.freeze_layers applies only when finetune\.strategy in \['freeze'\], which this "
     r"point rules out\. Drop finetune\.freeze_layers from the point or change its parent\.$"),
    ({"finetune.strategy": "freeze", "finetune.freeze_layers": 9},
     r"search\.enqueue\[0\]: finetune\.freeze_layers=9 is not in space\.finetune\.freeze_layers \(int \[2, 5\]\)\."),
    ({"optim.lr": "fast"}, r"search\.enqueue\[0\]: optim\.lr='fast' is not in space\.optim\.lr"),
])
def test_a_bad_enqueued_point_is_a_one_line_error(point: Dict[str, Any], message: str) -> None:
    sweep = demo("search.start_from_config=false")
    sweep.config.search.enqueue = [point]
    with pytest.raises(SearchSpaceError, match=message):
        enqueued(sweep.config, sweep.params)


def test_more_first_configurations_than_trials_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"search\.enqueue: 3 configurations run first \(the recipe and "
                                          r"search\.enqueue\), more than the search's 2 trials, got num_trials=2\. "
                                          r"Raise search\.num_trials to at least 3, or enqueue fewer\.$"):
        demo("search.num_trials=2", "search.enqueue=[{optim.lr:1e-4},{optim.lr:2e-4}]")


def _hydra(points: List[Dict[str, Any]]) -> str:
    return "[" + ",".join("{" + ",".join(f"{k}:{v}" for k, v in p.items()) + "}" for p in points) + "]"
