"""Checks before Ray starts: which configs the space can produce, and which model variants get built."""

from __future__ import annotations

from typing import Any, Dict, List

import pytest

from finesweep.config import preflight
from finesweep.config.compose import compose
from finesweep.config.space import parse_space
from finesweep.errors import SearchSpaceError


def test_demo_model_variants_are_each_strategy_with_its_knobs_at_their_bounds() -> None:
    sweep = compose("demo", [])
    variants = preflight.model_variants(preflight.check_values(sweep.config, sweep.params))
    assert variants == [
        {},
        {"finetune.strategy": "head_only"},
        {"finetune.strategy": "freeze"},
        {"finetune.strategy": "lora"},
        {"finetune.strategy": "full"},
        {"finetune.strategy": "freeze", "finetune.freeze_layers": 2},
        {"finetune.strategy": "freeze", "finetune.freeze_layers": 5},
        {"finetune.strategy": "lora", "finetune.lora.r": 4},
        {"finetune.strategy": "lora", "finetune.lora.r": 8},
        {"finetune.strategy": "lora", "finetune.lora.r": 16},
    ]


def test_check_model_builds_every_variant(monkeypatch: pytest.MonkeyPatch) -> None:
    import finesweep.finetune.module as module

    built: List[Dict[str, Any]] = []
    monkeypatch.setattr(module, "check", lambda config, task: built.append(
        {"strategy": config.finetune.strategy.value, "freeze": config.finetune.freeze_layers,
         "r": config.finetune.lora.r}))
    demo = compose("demo", [])
    preflight.check_model(demo.config, demo.params)
    assert {(b["strategy"], b["freeze"]) for b in built if b["strategy"] == "freeze"} == {("freeze", 2),
                                                                                        ("freeze", 5)}
    assert {b["r"] for b in built if b["strategy"] == "lora"} == {4, 8, 16}


def test_a_rule_broken_only_by_a_combination_names_the_combination() -> None:
    sweep = compose("demo", [])
    params = parse_space({"data.val_fraction": {"distribution": "categorical", "choices": [0.1, 0.3, 0.6]},
                          "data.test_fraction": {"distribution": "categorical", "choices": [0.1, 0.5]}}, sweep.config)
    with pytest.raises(SearchSpaceError, match=r"^space: the combination data\.val_fraction=0\.6, "
                                               r"data\.test_fraction=0\.5 would make an invalid config"):
        preflight.check_values(sweep.config, params)
    ok = parse_space({"data.val_fraction": {"distribution": "categorical", "choices": [0.1, 0.4]},
                      "data.test_fraction": {"distribution": "categorical", "choices": [0.1, 0.5]}}, sweep.config)
    assert len(preflight.check_values(sweep.config, ok)) == 4 + 4, "4 single values, then 2 x 2 combinations"
