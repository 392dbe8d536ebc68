"""The LLM LoRA recipe (sweeps/llm_lora.yaml) on this machine: its wall-clock, perplexity before and after, the steps
ASHA saved, and a trial's training tokens per second against a bare PyTorch loop over the same batches.

- **The sweep**: `finesweep run llm_lora` as a user runs it (its own process, a local Ray, a SQLite MLflow store),
  on a tiny Llama (random weights: no pretrained causal LM is on the package index) with a byte-level BPE, and
  1,000 prompt/response pairs ("reverse: red cat sun" -> "sun cat red"); the recipe as shipped (12 TPE trials,
  400 steps each, reports every 25 steps on a quarter of the validation split, ASHA at 50/100/200 steps) unless
  --quick. Perplexity before is the base model's on the validation split; after, the registered winner's.
- **Throughput**: ``finesweep.execution.trial.fit`` (the code a Ray worker runs: the LightningModule with LoRA,
  step-wise reports, checkpoints) against a plain loop: the same peft model, the same batches (the trial's own
  shuffle and collate), AdamW with the same schedule and clipping, no validation, no checkpoint. Tokens are the
  batches' non-padding tokens; the trial's clock runs over its training batches only (a callback stops it while
  it validates and reports). On 1,000 rows of prose (the standard library's docstrings, ~30 tokens a row), at the
  tiny model's size and at a 4-layer, 256-wide one.

Usage: python benchmarks/llm_lora.py [--quick]   (--quick: 3 trials of 40 steps, short throughput runs)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def build_llama(folder: Path, hidden: int, layers: int) -> Path:
    """A Llama with the tests' byte-level BPE (``hidden`` wide, ``layers`` deep), saved with save_pretrained."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from lm_models import build_tokenizer

    tokenizer = AutoTokenizer.from_pretrained(build_tokenizer(folder, "llama"))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


# --- the sweep --------------------------------------------------------------------------------------------------


def run_sweep(work: Path, model: Path, data: Path, quick: bool) -> Dict[str, Any]:
    """``finesweep run llm_lora`` in its own process; what it cost and what its log says."""
    overrides = [f"data.path={data}", f"model.name_or_path={model}", "data.max_length=32", "data.batch_size=16"]
    if quick:
        overrides += ["search.num_trials=3", "scheduler.max_steps=40", "scheduler.report_every=10",
                      "scheduler.grace_period=10"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FINESWEEP_PROJECT": str(ROOT), "HOME": str(work / "home"),
           "RAY_TMPDIR": tempfile.mkdtemp(prefix="fsb-", dir="/tmp")}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "finesweep", "run", "llm_lora", *overrides], cwd=work, env=env,
                          capture_output=True, text=True, timeout=3600)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"the sweep failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return {"seconds": seconds, **journal_facts(work)}


def journal_facts(work: Path) -> Dict[str, Any]:
    """Steps each search trial trained, the budget, and the registered winner's validation perplexity."""
    from finesweep.journal.file import read_records
    from finesweep.journal.replay import find_sweeps

    folder = find_sweeps(str(work / "mlruns" / "ray"))[0]
    records = list(read_records(folder / "events.jsonl"))
    budget = int(next(r for r in records if r["kind"] == "sweep")["params"]["budget"])
    steps: Dict[int, int] = {}
    search = {r["number"] for r in records if r["kind"] == "trial_started" and r["phase"] == "search"}
    for record in records:
        if record["kind"] == "trial_result" and record["number"] in search:
            steps[record["number"]] = int(record["metrics"]["step"])
    best = [r for r in records if r["kind"] == "best"][-1]
    perplexity = min(m["metrics"].get("val/perplexity", math.inf) for m in records
                     if m["kind"] == "trial_result" and m["number"] == best["number"])
    return {"trials": len(steps), "trained": sum(steps.values()), "budget": budget * len(steps),
            "stopped": sum(1 for s in steps.values() if s < budget), "perplexity_after": perplexity}


def base_perplexity(model: Path, data: Path, work: Path) -> float:
    """The pretrained model's perplexity on the validation split the sweep uses (its config, unchanged weights)."""
    from finesweep.config.compose import compose
    from finesweep.execution.trial import evaluate
    from finesweep.tasks.preparation import prepare_all

    config = compose("llm_lora", [f"data.path={data}", f"model.name_or_path={model}", "data.max_length=32",
                                  "data.batch_size=16", f"cluster.storage_path={work / 'base'}"]).config
    prepared = prepare_all(config, ()).for_config(config)
    return evaluate(config, prepared, model, "val")["val/perplexity"]


# --- throughput ---------------------------------------------------------------------------------------------------


def trial_config(model: Path, data: Path, steps: int) -> Any:
    from finesweep.config.compose import compose

    return compose("llm_lora", [f"data.path={data}", f"model.name_or_path={model}", "data.max_length=64",
                                "data.batch_size=16", f"scheduler.max_steps={steps}",
                                f"scheduler.report_every={steps // 3}", f"scheduler.grace_period={steps // 3}",
                                "scheduler.kind=fifo", "trainer.precision=32-true",
                                "cluster.cpus_per_trial=2"]).config


def through_finesweep(config: Any, cache: Any) -> Tuple[float, int]:
    """(training seconds, tokens) of ``trial.fit``: its batches, not its validations and reports."""
    import lightning.pytorch as pl

    import finesweep.execution.trial as trial

    clock = _BatchClock(pl)
    real_trainer = trial._trainer

    def timed_trainer(*args: Any, callbacks: List[Any], **kwargs: Any) -> Any:
        return real_trainer(*args, callbacks=[clock, *callbacks], **kwargs)

    trial._trainer = timed_trainer
    try:
        trial.fit(config, cache, lambda metrics, saved: None)
    finally:
        trial._trainer = real_trainer
    return clock.seconds, clock.tokens


class _BatchClock:
    """Sums the time from one training batch's end (or a validation's end) to the next batch's end: fetching,
    forward, backward and the optimiser step, never the validations, the reports or the checkpoints."""

    def __new__(cls, pl: Any) -> Any:
        class Clock(pl.Callback):  # type: ignore[misc]
            seconds = 0.0
            tokens = 0
            _since: Optional[float] = None

            def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
                self._since = time.perf_counter()

            def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, idx: int) -> None:
                now = time.perf_counter()
                Clock.seconds += now - (self._since or now)
                Clock.tokens += int(batch["features"]["attention_mask"].sum())
                self._since = now

            def on_validation_start(self, trainer: Any, module: Any) -> None:
                self._since = None

            def on_validation_end(self, trainer: Any, module: Any) -> None:
                self._since = None  # the report and its checkpoint follow; the clock restarts at the next batch

            def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, idx: int) -> None:
                if self._since is None:
                    self._since = time.perf_counter()

        return Clock()


def by_hand(config: Any, cache: Any) -> Tuple[float, int]:
    """(seconds, tokens) of a plain loop: the same LoRA model, batches, optimiser, schedule and clipping."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from finesweep.finetune.datamodule import EpochShuffle
    from finesweep.finetune.module import make_schedule
    from finesweep.finetune.strategies import peft_targets

    data = cache.for_config(config)
    torch.set_num_threads(max(1, int(config.cluster.cpus_per_trial)))
    torch.manual_seed(config.trainer.seed)
    lora = config.finetune.lora
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(config.model.name_or_path),
                           LoraConfig(task_type="CAUSAL_LM", r=lora.r, lora_alpha=lora.alpha,
                                      lora_dropout=lora.dropout, target_modules=peft_targets(lora.target_modules)))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.optim.lr,
                                  weight_decay=config.optim.weight_decay)
    steps = int(config.scheduler.max_steps)
    schedule = make_schedule(optimizer, config.optim, steps)
    task, batch_size, shuffle = data.task, config.data.batch_size, EpochShuffle(len(data.train), config.trainer.seed)
    done, tokens, epoch = 0, 0, 0
    start = time.perf_counter()
    while done < steps:
        shuffle.set_epoch(epoch)
        order = list(shuffle)
        for first in range(0, len(order), batch_size):
            batch = task.collate(data.train, order[first:first + batch_size])
            loss = task.loss(task.forward(model, batch["features"]), batch["labels"])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.trainer.gradient_clip_val or math.inf)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            tokens += int(batch["features"]["attention_mask"].sum())
            done += 1
            if done >= steps:
                break
        epoch += 1
    return time.perf_counter() - start, tokens


def throughput(model: Path, data: Path, steps: int, repeats: int) -> Dict[str, float]:
    """Median tokens/s of each over ``repeats`` alternating runs (this machine's runs vary by ~10%), and the
    median of the paired ratios."""
    from finesweep.tasks.preparation import prepare_all

    config = trial_config(model, data, steps)
    cache = prepare_all(config, ())
    ours: List[float] = []
    hand: List[float] = []
    for _ in range(repeats):
        hand_s, hand_tokens = by_hand(config, cache)
        ours_s, ours_tokens = through_finesweep(config, cache)
        hand.append(hand_tokens / hand_s)
        ours.append(ours_tokens / ours_s)
    return {"ours": statistics.median(ours), "hand": statistics.median(hand),
            "ratio": statistics.median(o / h for o, h in zip(ours, hand, strict=True)),
            "spread": max(o / h for o, h in zip(ours, hand, strict=True)) - min(
                o / h for o, h in zip(ours, hand, strict=True))}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 trials of 40 steps; short throughput runs")
    args = parser.parse_args(argv)
    os.environ.setdefault("FINESWEEP_PROJECT", str(ROOT))
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lm_models import build_tiny_llama, write_prompt_csv, write_text_csv

    with tempfile.TemporaryDirectory(prefix="finesweep-llm-") as folder:
        work = Path(folder)
        tiny = build_tiny_llama(work / "tiny-llama")
        wider = build_llama(work / "llama-256", hidden=256, layers=4)
        data = write_prompt_csv(work / "pairs.csv", rows=300 if args.quick else 1000)
        prose = write_text_csv(work / "prose.csv", rows=1000)  # 6-24 words of docstrings a row: ~30 tokens
        before = base_perplexity(tiny, data, work)
        sweep = run_sweep(work, tiny, data, args.quick)
        steps = 30 if args.quick else 150  # 3 reports: each validates a quarter of the split, then checkpoints
        repeats = 1 if args.quick else 3
        speeds = {"tiny Llama (2 x 32)": throughput(tiny, prose, steps, repeats),
                  "Llama 4 x 256": throughput(wider, prose, steps, repeats)}
    saved = 1 - sweep["trained"] / sweep["budget"]
    shipped = "--quick" if args.quick else "as shipped"
    print(f"sweeps/llm_lora.yaml on {os.cpu_count()} CPU cores, tiny Llama, {shipped}")
    print("| wall-clock | trials (stopped by ASHA) | steps trained / budget | ASHA saved | val perplexity before "
          "| after (winner) |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(f"| {sweep['seconds'] / 60:.1f} min | {sweep['trials']} ({sweep['stopped']}) | {sweep['trained']} / "
          f"{sweep['budget']} | {saved:.0%} | {before:.1f} | {sweep['perplexity_after']:.2f} |")
    print()
    print(f"one LoRA trial on prose (text layout), {steps} steps, batch 16 x up to 64 tokens, 32-bit, 2 threads: "
          f"training tokens/s, median of {repeats} alternating runs")
    print("| model | finesweep tokens/s | bare PyTorch loop tokens/s | ratio (median of pairs) | ratio's range |")
    print("|---|---:|---:|---:|---:|")
    for name, speed in speeds.items():
        print(f"| {name} | {speed['ours']:,.0f} | {speed['hand']:,.0f} | {speed['ratio']:.2f}x | "
              f"{speed['spread']:.2f} |")
    print(json.dumps({"sweep": sweep, "before": before, "throughput": speeds}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
