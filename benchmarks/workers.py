"""Trials of several workers on this machine (``cluster.workers_per_trial``), two numbers:

1. A trial's training samples/s with one worker (one CPU), two workers (one CPU each: Ray Train, DDP over gloo)
   and, for reference, one worker with both CPUs (two torch threads), on a 4-layer, 256-wide BERT. Measured on
   rank 0 between its first and second epoch reports (the second epoch's training, its checkpoint, and a 32-row
   validation), the batch being 16 per device.
2. How long after ASHA's decision to stop a trial of two workers their resources are back in the cluster: a real
   sweep in this process polls Ray's placement-group table every 20 ms; the time is from the result ASHA stopped
   the trial on (the sweep's log: ``seen_at``) to the trial's workers' placement group being REMOVED.

    python benchmarks/workers.py          (make bench-workers, ~5 min on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("FINESWEEP_PROJECT", str(ROOT))


def build_model(folder: Path) -> Path:
    """The tests' tiny BERT vocabulary on a 4-layer, 256-wide encoder (no dropout)."""
    from transformers import BertConfig, BertForSequenceClassification

    from conftest import build_tiny_bert

    build_tiny_bert(folder)
    config = BertConfig.from_pretrained(folder)
    config.update({"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 1024,
                   "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0})
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def _timed_worker(loop: Dict[str, Any]) -> None:
    """``train_worker``, each report stamped with the time it was made."""
    import ray.train

    from finesweep.execution.distributed import train_worker

    real = ray.train.report

    def report(metrics: Dict[str, Any], checkpoint: Any = None, **kwargs: Any) -> None:
        real({**metrics, "at": time.time()}, checkpoint=checkpoint, **kwargs)

    ray.train.report = report
    train_worker(loop)


def throughput(model: Path, data: Path, work: Path) -> List[Dict[str, Any]]:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from finesweep.config.compose import compose
    from finesweep.execution.cluster import worker_env
    from finesweep.execution.distributed import Shared
    from finesweep.tasks.preparation import prepare_all

    common = [f"model.name_or_path={model}", f"data.path={data}", "data.label_column=label", "data.max_samples=null",
              "data.max_length=32", "data.batch_size=16", "data.val_max_rows=32", "scheduler.max_epochs=2",
              "search.start_from_config=false", f"cluster.storage_path={work / 'store'}"]
    shapes = [("1 worker, 1 CPU", 1, 1), ("2 workers, 1 CPU each", 2, 1), ("1 worker, 2 CPUs (threads)", 1, 2)]
    rows = []
    ray.init(address="local", num_cpus=2, include_dashboard=False, runtime_env={"env_vars": worker_env()})
    try:
        for label, workers, cpus in shapes:
            config = compose("demo", [*common, f"cluster.workers_per_trial={workers}",
                                      f"cluster.cpus_per_worker={cpus}", f"cluster.cpus_per_trial={cpus}"]).config
            cache = prepare_all(config, ())
            train_rows = len(cache.for_config(config).train)
            trainer = TorchTrainer(
                _timed_worker, train_loop_config={"config": config, "shared": Shared.of(cache, work),
                                                  "resume": None},
                torch_config=TorchConfig(backend="gloo"),
                scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": cpus}),
                run_config=RunConfig(name=f"bench-{workers}-{cpus}", storage_path=str(work / "train")))
            reports = trainer.fit().metrics_dataframe.to_dict("records")
            seconds = reports[1]["at"] - reports[0]["at"]
            rows.append({"shape": label, "samples_per_s": train_rows / seconds, "epoch_s": seconds,
                         "train_rows": train_rows})
            print(f"  {label:<28} {train_rows / seconds:8.1f} samples/s  (epoch 2: {seconds:.1f} s)", flush=True)
    finally:
        ray.shutdown()
    return rows


SWEEP = """
objective: {metric: val/loss, mode: min}
search: {sampler: random, num_trials: 5, max_concurrent: 1, seed: 0}
scheduler: {kind: asha, max_epochs: 3, grace_period: 1, reduction_factor: 3}
optim: {lr: 5.0e-3}
space:
  optim.lr: {distribution: loguniform, low: 1.0e-5, high: 5.0e-2}
"""


def stop_to_free(model: Path, data: Path, work: Path) -> List[float]:
    """Seconds from each ASHA stop decision to the stopped trial's workers' placement group being removed."""
    import ray

    from finesweep import api
    from finesweep.journal.file import read_records
    from finesweep.journal.replay import find_sweeps

    work.mkdir(parents=True, exist_ok=True)
    sweep = work / "stops.yaml"
    sweep.write_text(SWEEP)
    removed: Dict[str, float] = {}
    seen: Dict[str, float] = {}
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            if ray.is_initialized():
                try:
                    table = ray.util.placement_group_table()
                except Exception:  # noqa: BLE001 - Ray starting or stopping
                    table = {}
                now = time.time()
                for pg, info in table.items():
                    if not any("CPU" in bundle for bundle in info.get("bundles", {}).values()):
                        continue  # a trial's own driver bundle (memory only): not the workers
                    seen.setdefault(pg, now)
                    if info.get("state") == "REMOVED":
                        removed.setdefault(pg, now)
            time.sleep(0.02)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        api.run(str(sweep), [f"model.name_or_path={model}", f"data.path={data}", "data.label_column=label",
                             "data.max_samples=null", "data.max_length=32", "data.batch_size=16",
                             "cluster.workers_per_trial=2", "cluster.cpus_per_worker=1",
                             f"cluster.storage_path={work / 'sweep'}",
                             f"tracking.uri=sqlite:///{work / 'mlflow.db'}"])
    finally:
        done.set()
        thread.join()
    records = list(read_records(find_sweeps(str(work / "sweep"))[0] / "events.jsonl"))
    stopped = {r["number"] for r in records if r["kind"] == "trial_ended" and r["status"] == "early_stopped"}
    decided = {n: max(r["seen_at"] for r in records if r["kind"] == "trial_result" and r["number"] == n)
               for n in stopped}
    gaps = []
    for number, at in sorted(decided.items()):
        later = sorted(t for t in removed.values() if t >= at - 0.05)
        if later:
            gaps.append(later[0] - at)
            print(f"  trial {number}: stopped at {time.strftime('%H:%M:%S', time.localtime(at))}, workers' "
                  f"resources free {later[0] - at:.2f} s later", flush=True)
    return gaps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1200, help="rows of the generated data (80%% train)")
    parser.add_argument("--parts", default="throughput,stops", help="what to measure (comma-separated)")
    args = parser.parse_args()
    from conftest import write_csv

    work = Path(tempfile.mkdtemp(prefix="fs-workers-"))
    model = build_model(work / "model")
    data = write_csv(work / "data.csv", rows=args.rows)
    parts = args.parts.split(",")
    rows: List[Dict[str, Any]] = []
    gaps: List[float] = []
    if "throughput" in parts:
        print("training samples/s of one trial:")
        rows = throughput(model, data, work / "throughput")
    if "stops" in parts:
        print("ASHA's stop decision -> the stopped trial's 2 workers' resources free:")
        gaps = stop_to_free(model, data, work / "stops")
    summary = {"throughput": rows, "stop_to_free_s": gaps,
               "stop_to_free_median_s": statistics.median(gaps) if gaps else None}
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
