"""What serving a trial's model costs: the served size (LoRA counted merged) and the latency per example."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from finesweep.config import ExperimentConfig
from finesweep.finetune import costs
from finesweep.finetune.module import FinetuneModule
from finesweep.tasks import PreparedData

from .conftest import MakeConfig, module_for, prepared


def module_for_data(config: ExperimentConfig, data: PreparedData) -> FinetuneModule:
    return FinetuneModule.for_trial(config, data, total_steps=10)


def test_the_served_size_counts_every_weight_once_and_lora_as_merged(make_config: MakeConfig) -> None:
    full = module_for(make_config("finetune.strategy=full"))
    by_hand = sum(p.numel() * p.element_size() for p in full.model.parameters()) + sum(
        b.numel() * b.element_size() for b in full.model.buffers())
    assert costs.served_size_mb(full.model) == by_hand / 2**20
    lora = module_for(make_config("finetune.strategy=lora", "finetune.lora.r=8"))
    assert any("lora_" in n for n, _ in lora.model.named_parameters())
    assert costs.served_size_mb(lora.model) == costs.served_size_mb(full.model)  # merged: the full model's weights
    exported = lora.export_model()  # what is served: LoRA merged into plain weights
    assert costs.served_size_mb(exported) == costs.served_size_mb(full.model)


def test_latency_is_per_example_on_a_validation_batch_and_leaves_the_model_training(make_config: MakeConfig) -> None:
    config = make_config("finetune.strategy=lora")
    data = prepared(config)
    module = module_for(config)
    module.model.train()
    found = costs.measure(data.task, module.model, data, 8, torch.device("cpu"), latency=True)
    assert found[costs.LATENCY_METRIC] > 0 and found[costs.SIZE_METRIC] > 0
    assert module.model.training  # the Trainer gets the model back as it gave it
    assert costs.LATENCY_METRIC not in costs.measure(data.task, module.model, data, 8, torch.device("cpu"),
                                                     latency=False)
    # per example: a batch of 8 costs less per row than one of 1 (the same passes, more rows)
    assert costs.latency_ms(data.task, module.model, data, 1, torch.device("cpu")) > found[costs.LATENCY_METRIC] / 8


@pytest.mark.parametrize("kind", ["causal_lm", "seq2seq"])
def test_a_generative_trial_times_its_teacher_forced_pass(kind: str, tmp_path: Path) -> None:
    from finesweep.tasks import get
    from lm_models import build_tiny_gpt2, build_tiny_t5, lm_config, write_prompt_csv, write_source_target_csv

    if kind == "causal_lm":
        model, path = build_tiny_gpt2(tmp_path / "gpt2"), write_prompt_csv(tmp_path / "pairs.csv")
    else:
        model, path = build_tiny_t5(tmp_path / "t5"), write_source_target_csv(tmp_path / "pairs.csv")
    config = lm_config(model, path, kind, **{"finetune.strategy": "lora", "finetune.lora.target_modules": ["auto"]})
    task = get(kind)
    data = task.prepare(config)
    module = module_for_data(config, data)
    found = costs.measure(task, module.model, data, 4, torch.device("cpu"), latency=True)
    assert found[costs.LATENCY_METRIC] > 0
    assert found[costs.SIZE_METRIC] == costs.served_size_mb(module.export_model())  # LoRA counted merged


def test_the_winners_latency_is_measured_as_every_trials(make_config: MakeConfig, tiny_model: Path) -> None:
    from finesweep.selection import measure_latency

    config = make_config()
    data = prepared(config)
    latency, device = measure_latency(tiny_model, data, 8)  # the tiny model's folder stands for saved weights
    assert device == "cpu" and 0 < latency < 1000
