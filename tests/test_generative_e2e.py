"""Generative fine-tuning through every finesweep command, end to end, with ASHA counting optimiser steps.

A causal LM sweep (a tiny Llama, prompt/response pairs, LoRA with peft's own targets) validates every 4 steps,
mid-epoch; it is SIGKILLed mid-way and resumed (every trial exactly once, mid-epoch checkpoints), ASHA stops
trials at its rungs in steps, MLflow's steps are optimiser steps, the winner's generated answers land as a table
on the parent run, the report draws curves by step, and `finesweep serve` generates text for a prompt. A seq2seq
sweep (a tiny T5) scores ROUGE on generated validation outputs at every report and serves its winner.

Real processes throughout: the `finesweep` CLI with its local Ray, a SQLite MLflow store, Lightning fits.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

import pandas as pd
import pytest

from e2e import Driver, events, run_cli, runs
from lm_models import build_tiny_llama, build_tiny_t5, english_sentences, write_prompt_csv, write_source_target_csv
from servers import free_port
from test_results_e2e import Served
from test_resume_e2e import assert_exactly_once, search_trials, uri
from test_tasks_e2e import post, served_in_process

pytestmark = pytest.mark.slow

# 200 pairs: 160 train rows = 10 batches of 16 an epoch; reports every 4 steps cross epoch boundaries mid-way
LLM = """
objective: {metric: val/loss, mode: min}
search: {sampler: random, num_trials: 4, max_concurrent: 1, seed: 3}
scheduler: {kind: asha, unit: steps, max_steps: 24, report_every: 4, grace_period: 4, reduction_factor: 2}
optim: {lr: 3.0e-3, warmup_ratio: 0.0}     # the recipe: trial 0
data: {batch_size: 16, max_length: 32, max_target_length: 8}
trainer: {val_fraction_per_report: 0.5}
finetune: {strategy: lora, lora: {r: 8, alpha: 16, dropout: 0.0, target_modules: [auto]}, l2sp: 0.0}
final: {generate_samples: 4}
space:
  optim.lr: {distribution: loguniform, low: 1.0e-4, high: 1.0e-2}
  finetune.lora.r: {distribution: categorical, choices: [4, 8]}
"""

SUMMARISE = ["search.num_trials=2", "scheduler.kind=fifo", "scheduler.max_steps=20", "scheduler.report_every=10",
             "scheduler.grace_period=10", "data.batch_size=16", "data.max_length=16",
             "data.max_target_length=8", "data.val_max_rows=8", "data.metric=bleu", "final.generate_samples=4"]
"""The shipped sweeps/summarise.yaml (README's command), made tiny."""


def journal_steps(cwd: Path) -> Dict[int, List[int]]:
    """Each search trial's reported steps, from the sweep's log."""
    return {number: [int(m["step"]) for _, m in trial["results"]]
            for number, trial in search_trials(events(cwd)).items()}


@pytest.mark.timeout(900)
def test_a_causal_lm_sweep_by_steps_resumes_mid_epoch_reports_and_serves(tmp_path: Path) -> None:
    model = build_tiny_llama(tmp_path / "llama")
    data = write_prompt_csv(tmp_path / "pairs.csv", rows=200)
    probe = tmp_path / "general.txt"
    probe.write_text("\n".join(english_sentences(40, seed=9)))
    (tmp_path / "llm.yaml").write_text(LLM)
    args = ["run", "llm.yaml", f"data.path={data}", f"model.name_or_path={model}", "data.task=causal_lm",
            f"probe.forgetting={probe}"]
    driver = Driver(args, tmp_path)
    driver.wait_for_results(3, timeout=300)  # 12 steps of trial 0: mid-way through its second epoch
    driver.kill()
    resumed = Driver(["resume"], tmp_path)
    assert resumed.wait(timeout=480) == 0, resumed.output()
    first = driver.output()
    assert "160/20/20 train/val/test examples, causal LM (prompt-response)" in first, first
    assert_exactly_once(tmp_path, "llm", planned=4)

    steps = journal_steps(tmp_path)
    assert all(reported == list(range(4, reported[-1] + 1, 4)) for reported in steps.values()), steps
    rungs = {4, 8, 16}
    stopped = [n for n, reported in steps.items() if reported[-1] < 24]
    assert stopped, f"ASHA stopped no trial: {steps}"
    assert all(steps[n][-1] in rungs for n in stopped), f"a trial stopped between rungs: {steps}"

    found = runs(uri(tmp_path), "llm")
    client, parent = found["client"], found["parents"][0]
    trial_run = next(r for r in found["children"] if r.data.tags.get("finesweep.trial_number") == "0")
    history = client.get_metric_history(trial_run.info.run_id, "val/loss")
    assert sorted(m.step for m in history) == steps[0], "MLflow's steps are optimiser steps"
    assert {"val/perplexity", "probe/perplexity", "probe/perplexity_increase", "train/epoch"} <= set(
        trial_run.data.metrics)
    assert trial_run.data.metrics["val/perplexity"] > 1
    assert {"final/val/rougeL", "final/val/exact_match"} <= set(parent.data.metrics)
    table = client.download_artifacts(parent.info.run_id, "final/generations.json", str(tmp_path / "downloaded"))
    rows = pd.read_json(table, orient="split")
    assert len(rows) == 4 and {"prompt", "reference", "generation"} <= set(rows.columns)
    assert all("reverse: " in str(prompt) for prompt in rows["prompt"]), "the prompts the model saw"
    report = next(line for line in resumed.output().splitlines() if line.startswith("report: "))
    assert "steps trained" in Path(report.removeprefix("report: ").strip()).read_text()

    port = free_port()
    served = Served(["serve", "--port", str(port)], tmp_path)
    try:
        served.wait_until_up(f"http://127.0.0.1:{port}/ping", timeout=180)
        assert "serving models:/llm/1" in served.output() and "max_new_tokens" in served.output()
        answer = post(port, {"dataframe_records": [{"prompt": "reverse: red cat"}, {"prompt": "reverse: sun moon"}],
                             "params": {"max_new_tokens": 6, "temperature": 0.0}})
    finally:
        served.stop()
    expected = served_in_process(tmp_path, "llm/1", pd.DataFrame({"prompt": ["reverse: red cat", "reverse: sun moon"]}),
                                 params={"max_new_tokens": 6, "temperature": 0.0})
    assert [row["generation"] for row in answer] == list(expected["generation"]), "greedy: REST answers as loaded"
    assert all(isinstance(row["generation"], str) for row in answer)


@pytest.mark.timeout(600)
def test_a_seq2seq_sweep_scores_generated_text_every_report_and_serves(tmp_path: Path) -> None:
    model = build_tiny_t5(tmp_path / "t5")
    data = write_source_target_csv(tmp_path / "pairs.csv", rows=160)
    result = run_cli(["run", "summarise", f"data.path={data}", f"model.name_or_path={model}", *SUMMARISE], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    found = runs(uri(tmp_path), "summarise")
    client = found["client"]
    for child in found["children"]:
        history = client.get_metric_history(child.info.run_id, "val/rougeL")
        if child.data.tags.get("finesweep.phase") != "search":
            continue
        assert sorted(m.step for m in history) == [10, 20], "ROUGE at every report, by step"
        assert {"val/rouge1", "val/rouge2", "val/bleu", "val/exact_match"} <= set(child.data.metrics)
        logged = client.list_artifacts(child.info.run_id, "generations")
        assert [Path(a.path).name for a in logged] == ["0000010.json", "0000020.json"], "each report's texts"
    predicted = served_in_process(tmp_path, "summarise/1", pd.DataFrame({"prompt": ["reverse: red cat"]}),
                                  params={"max_new_tokens": 6})
    assert isinstance(predicted["generation"][0], str)
    assert json.loads(json.dumps(predicted.to_dict("records")))  # plain JSON-able answers
