"""Trials of several workers: each Tune trial starts one Ray Train run (``TorchTrainer``) and waits for it.

This is Ray's pattern for tuning distributed training since Ray 2.43 (Train V2): the Tune trial is a light driver
(no CPU of its own); its Train run reserves ``cluster.workers_per_trial`` workers in one placement group (``pack``
or ``spread``), runs ``fit`` in each with Lightning's DDP or FSDP over Ray's process group (gloo on CPUs, NCCL on
GPUs), and passes rank 0's reports to Tune (``_ToTune``), each with the checkpoint Train persisted once, under the
sweep's folder (``<sweep>/train/trial-NNN``: one run name per trial, so a resumed or retried trial is the same
run). ASHA stopping the trial ends the Tune actor, which owns the Train controller, which owns the workers and
their placement group: all of them go, and their resources are back in the cluster.

The prepared data is put into Ray's object store once per phase (``Shared``): every worker of every trial maps the
same arrays (one copy per node), none tokenises.
"""

from __future__ import annotations

import os
import platform
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY, TuneReportCallback

from finesweep.config import ExperimentConfig, Placement
from finesweep.config.overrides import with_overrides
from finesweep.search.searcher import marker_of, params_of
from finesweep.tasks import DataCache

CHECKPOINT_KEY = CHECKPOINT_PATH_KEY
"""Key of a Tune result that carries the trial's checkpoint folder, persisted by Train."""
NODES_KEY = "trial/nodes"
"""Key of a Tune result naming the nodes the trial's workers ran on (host (IP), comma-separated)."""
WORKERS_KEY = "trial/workers"
PIDS_KEY = "trial/worker_pids"
"""Process ids of the trial's workers, comma-separated: a stopped trial's must all be gone."""
_WORKER_KEYS = ("worker/node", "worker/pid")


@dataclass(frozen=True)
class Shared:
    """What the driver hands every trial of several workers: the prepared data in Ray's object store (a reference,
    so it crosses to the workers without a copy per trial) and the folder their Train runs live in."""

    cache: Any
    """ObjectRef of the ``DataCache``."""
    train_root: str

    @classmethod
    def of(cls, cache: DataCache, train_root: Path) -> Shared:
        import ray

        return cls(ray.put(cache), str(train_root))

    def get(self) -> DataCache:
        import ray

        cache: DataCache = ray.get(self.cache)
        return cache


def run_name(number: int) -> str:
    """The Train run of trial ``number``: stable, so a resumed or retried trial is the same run."""
    return f"trial-{number:03d}"


def run_distributed_trial(config: Dict[str, Any], *, base: ExperimentConfig, cache: Shared) -> None:
    """Ray Tune trainable of a trial of several workers: one Ray Train run of ``cluster.workers_per_trial`` workers.

    Raises:
        ray.train.TrainingFailedError: a worker failed (its error is in the message; the sweep classifies it).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    marker = marker_of(config)
    trial_config = with_overrides(base, params_of(config))
    cluster = trial_config.cluster
    use_gpu = cluster.worker_gpus > 0
    resources = {"CPU": cluster.worker_cpus, **({"GPU": cluster.worker_gpus} if use_gpu else {})}
    to_tune: Any = _ToTune()  # type: ignore[no-untyped-call]
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"config": trial_config, "shared": cache, "resume": marker.get("checkpoint")},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=cluster.workers_per_trial, use_gpu=use_gpu,
                                     resources_per_worker=resources,
                                     placement_strategy=placement_strategy(cluster.placement)),
        run_config=RunConfig(
            name=run_name(int(marker["number"])), storage_path=cache.train_root, callbacks=[to_tune],
            # each report carries the whole state; the one before stays until the sweep's log has the newest
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=FailureConfig(max_failures=0),  # retries are decided by the sweep (execution/tuner.py)
        ),
    )
    trainer.fit()


def placement_strategy(placement: Placement) -> str:
    """Ray's placement-group strategy of ``cluster.placement``: best effort, so a trial still runs when the cluster
    cannot honour it (one node with room for every worker, or not enough nodes to spread over)."""
    return "SPREAD" if placement is Placement.spread else "PACK"


def train_worker(loop: Dict[str, Any]) -> None:
    """One worker of a trial: ``fit`` on its share of the data, reporting to Train with the trial's other workers."""
    import ray.train

    from finesweep.execution.trial import device_name, fit, resolved_precision
    from finesweep.finetune.parallel import Workers

    config: ExperimentConfig = loop["config"]
    cache = loop["shared"].get()
    context = ray.train.get_context()
    workers = Workers(context.get_world_rank(), context.get_world_size(), config.cluster.strategy)
    where = {"worker/node": f"{platform.node()} ({_node_ip()})", "worker/pid": os.getpid(),
             "device": device_name(config), "precision": resolved_precision(config)}

    def report(metrics: Dict[str, float], folder: Optional[Path]) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(str(folder)) if folder and workers.writer else None
        ray.train.report({**metrics, **where}, checkpoint=checkpoint)

    probe = cache.probe if workers.writer else None
    resume = loop.get("resume")
    fit(config, cache, report=report, resume=Path(resume) if resume else None, workers=workers,
        probe=(lambda module: probe.measure(module.task, module.model)) if probe is not None else None)


def _node_ip() -> str:
    import ray

    try:
        return str(ray.util.get_node_ip_address())
    except Exception:  # noqa: BLE001 - only a label
        return socket.gethostname()


class _ToTune(TuneReportCallback):
    """Rank 0's report goes to Tune, with the nodes and processes of all the trial's workers (Ray's callback passes
    rank 0's alone)."""

    def after_report(self, run_context: Any, metrics: List[Dict[str, Any]], checkpoint: Any) -> None:
        merged = {k: v for k, v in metrics[0].items() if k not in _WORKER_KEYS}
        nodes = sorted({str(m.get("worker/node", "?")) for m in metrics})
        merged.update({NODES_KEY: ", ".join(nodes), WORKERS_KEY: len(metrics),
                       PIDS_KEY: ",".join(str(m.get("worker/pid", "")) for m in metrics)})
        super().after_report(run_context, [merged], checkpoint)
