"""The forgetting probe and L2-SP inside real trials of the causal-LM task: every report carries the probe's
perplexity at the trial's best weights, a destructive learning rate makes it rise, and L2-SP at the same learning
rate makes it rise less (the issue's claim, on the tests' tiny Llama)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from finesweep.config import ExperimentConfig
from finesweep.execution.trial import fit
from finesweep.finetune.forgetting import ForgettingProbe
from finesweep.tasks.preparation import prepare_all
from lm_models import build_tiny_llama, english_sentences, lm_config, write_prompt_csv


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("models") / "llama")


def _config(model: Path, root: Path, **values: object) -> ExperimentConfig:
    probe = root / "general.txt"
    probe.write_text("\n".join(english_sentences(60, seed=4)))
    data = write_prompt_csv(root / "pairs.csv", rows=160)
    base = {"probe.forgetting": str(probe), "probe.max_tokens": 1024, "data.batch_size": 16, "data.max_length": 32,
            "scheduler.max_steps": 12, "scheduler.report_every": 4, "scheduler.unit": "steps",
            "scheduler.grace_period": 4, "optim.warmup_ratio": 0.0, "optim.weight_decay": 0.0,
            "cluster.cpus_per_trial": 1}
    return lm_config(model, data, storage=root, **{**base, **values})


def _run(config: ExperimentConfig) -> List[Dict[str, float]]:
    cache = prepare_all(config, ())
    probe = ForgettingProbe.prepare(config, cache.task)
    assert probe is not None
    cache = dataclasses.replace(cache, probe=probe)
    reports: List[Dict[str, float]] = []

    def report(metrics: Dict[str, float], folder: Optional[Path]) -> None:
        reports.append(metrics)

    fit(config, cache, report, probe=lambda module: probe.measure(module.task, module.model))
    return reports


def test_each_report_carries_the_probe_at_the_best_weights_and_l2sp_forgets_less(llama: Path,
                                                                                  tmp_path: Path) -> None:
    destructive = _run(_config(llama, tmp_path, **{"optim.lr": 3e-2}))
    assert [m["step"] for m in destructive] == [4.0, 8.0, 12.0]
    assert all({"probe/perplexity", "probe/perplexity_increase"} <= set(m) for m in destructive)
    best = min(range(3), key=lambda i: destructive[i]["val/loss"])
    assert destructive[-1]["probe/perplexity"] == destructive[best]["probe/perplexity"], "the best weights' value"
    assert destructive[-1]["probe/perplexity_increase"] > 0, "a destructive lr forgets"

    kept = _run(_config(llama, tmp_path, **{"optim.lr": 3e-2, "finetune.l2sp": 1.0}))
    forgot, with_l2sp = destructive[-1]["probe/perplexity_increase"], kept[-1]["probe/perplexity_increase"]
    print(f"probe/perplexity_increase at lr 3e-2: +{forgot:.3f} without L2-SP, +{with_l2sp:.3f} with l2sp=1.0")
    assert with_l2sp < forgot, f"L2-SP at the same lr: +{with_l2sp:.2f} against +{forgot:.2f} without"
