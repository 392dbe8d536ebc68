"""Priors in the sweep file: per key (``prior:``, ``prior_confidence:``) and from the recipe (``search.prior:
config``), checked against the space before anything starts; the prior's mode is the search's first trial."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest
import yaml

from finesweep.config import Confidence, PriorSource
from finesweep.config.compose import compose
from finesweep.config.recipe import mode_point, recipe, start_points
from finesweep.config.sweep import Sweep
from finesweep.errors import SearchSpaceError, UserError

ROOT = Path(__file__).resolve().parents[2]


def demo(*overrides: str, tmp: Optional[Path] = None, space: Optional[Dict[str, Dict[str, Any]]] = None) -> Sweep:
    """The demo sweep, its space entries given the extra fields in ``space`` (a copy written to ``tmp``)."""
    if not space:
        return compose("demo", list(overrides))
    assert tmp is not None
    document = yaml.safe_load((ROOT / "sweeps" / "demo.yaml").read_text())
    for key, fields in space.items():
        document["space"][key].update(fields)
    path = tmp / "demo.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return compose(str(path), list(overrides))


def test_search_prior_config_takes_every_searched_keys_value_from_the_recipe() -> None:
    sweep = demo("search.prior=config", "optim.lr=3e-4", "data.batch_size=16")
    assert sweep.config.search.prior is PriorSource.config
    priors = {p.key: p.prior for p in sweep.params}
    assert priors["optim.lr"] == 3e-4 and priors["data.batch_size"] == 16 and priors["finetune.strategy"] == "full"
    assert priors["finetune.freeze_layers"] == 2  # the config's value, used while a trial is on freeze's branch
    assert all(p.prior_confidence is Confidence.medium for p in sweep.params)
    # the prior's mode is the recipe: one first trial, not two
    assert mode_point(sweep.params) == recipe(sweep.config, sweep.params)
    assert start_points(sweep.config, sweep.params) == [recipe(sweep.config, sweep.params)]
    assert sweep.space_description()["optim.lr"]["prior"] == 3e-4


def test_a_keys_own_prior_wins_and_its_mode_runs_before_the_recipe(tmp_path: Path) -> None:
    sweep = demo("search.prior=config", tmp=tmp_path, space={"optim.lr": {"prior": 1e-4, "prior_confidence": "high"},
                                                             "data.batch_size": {"prior_confidence": "low"}})
    by_key = {p.key: p for p in sweep.params}
    assert by_key["optim.lr"].prior == 1e-4 and by_key["optim.lr"].prior_confidence is Confidence.high
    assert by_key["data.batch_size"].prior == 32 and by_key["data.batch_size"].prior_confidence is Confidence.low
    mode = mode_point(sweep.params)
    assert mode["optim.lr"] == 1e-4 and "finetune.freeze_layers" not in mode, "off the mode's branch (full)"
    assert start_points(sweep.config, sweep.params) == [mode, recipe(sweep.config, sweep.params)]


def test_without_search_prior_only_keys_with_their_own_prior_have_one(tmp_path: Path) -> None:
    sweep = demo("search.start_from_config=false", tmp=tmp_path, space={"optim.lr": {"prior": 1e-4}})
    assert [p.key for p in sweep.params if p.prior is not None] == ["optim.lr"]
    assert start_points(sweep.config, sweep.params) == [{"optim.lr": 1e-4}]
    assert all(p.prior is None for p in demo().params)


LR = "optim.lr"


@pytest.mark.parametrize("overrides,space,message", [
    ([], {LR: {"prior": 0.1}}, r"demo\.yaml: space\.optim\.lr: prior=0\.1 is not a value the space can produce "
                               r"\(loguniform \[2e-05, 0\.001\]\)\. Use a prior inside the range"),
    ([], {"data.batch_size": {"prior": 64}}, r"space\.data\.batch_size: prior=64 is not a value .* \(choices 16, 32\)"),
    ([], {LR: {"prior": 1e-4, "prior_confidence": "sure"}},
     r"space\.optim\.lr: prior_confidence must be one of low, medium, high, got 'sure'\. Use e\.g\. "
     r"prior_confidence: medium\.$"),
    ([], {LR: {"prior_confidence": "high"}}, r"space\.optim\.lr: prior_confidence says how sure a prior is, and "
                                             r"this entry has no prior, got prior_confidence=high\. Add prior: "),
    (["search.prior=config", "optim.lr=0.1", "search.start_from_config=false"], None,
     r"search\.prior=config: the composed config's optim\.lr=0\.1 is the prior's mode, and it is not in "
     r"space\.optim\.lr \(loguniform \[2e-05, 0\.001\]\)\."),
    (["search.prior=config", "search.sampler=random"], None,
     r"search\.prior=config: a prior weighs TPE's proposals, and the sampler is random\. Use search\.sampler=tpe"),
    (["search.sampler=nsga2"], {LR: {"prior": 1e-4}}, r"space\.optim\.lr: a prior weighs TPE's proposals, and the "
                                                      r"sampler is nsga2\."),
    (["search.prior=sometimes"], None, r"search\.prior"),
])
def test_a_prior_the_search_cannot_use_is_a_one_line_error(tmp_path: Path, overrides: List[str],
                                                           space: Optional[Dict[str, Dict[str, Any]]],
                                                           message: str) -> None:
    with pytest.raises(UserError, match=message) as caught:
        demo(*overrides, tmp=tmp_path, space=space)
    assert "\n" not in str(caught.value)
    if "search.prior=sometimes" not in overrides:
        assert isinstance(caught.value, SearchSpaceError)
