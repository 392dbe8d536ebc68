"""One trial over several processes: the Lightning side of a Ray Train worker (DDP or FSDP).

Each of a trial's ``cluster.workers_per_trial`` workers runs the same ``fit`` with the same seed: the model starts
identical everywhere, every worker trains on its own share of each epoch's shuffle (``EpochShuffle``: rank ``r`` of
``n`` takes every ``n``-th example of the one order), and validation runs the whole split on every worker, so each
computes the same metrics and rank 0's report speaks for the trial. Rank 0 alone writes files: the best weights and
Lightning's training state (gathered from the shards under FSDP: one full state, which any number of workers can
resume from).
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Any, Iterator, List

import lightning.pytorch as pl

from finesweep.config import Parallelism

FSDP_WRAP_PARAMS = 1_000_000
"""FSDP shards each sub-module of at least this many weights as a unit (its own all-gather), the rest with the root."""


@dataclass(frozen=True)
class Workers:
    """Where this process stands in its trial: rank ``rank`` of ``world`` workers, splitting training by ``how``."""

    rank: int = 0
    world: int = 1
    how: Parallelism = Parallelism.ddp

    @property
    def writer(self) -> bool:
        """Whether this process writes the trial's files and reports its checkpoint (rank 0)."""
        return self.rank == 0

    def trainer_arguments(self) -> dict[str, Any]:
        """Lightning ``Trainer`` arguments of one worker: Ray's strategy and cluster environment, every visible
        device of this worker (Ray sets ``CUDA_VISIBLE_DEVICES`` to its own), and no sampler injected (the data
        module shards the training shuffle itself, and validation is not sharded)."""
        if self.world < 2:
            return {"devices": 1}
        from ray.train.lightning import RayDDPStrategy, RayFSDPStrategy, RayLightningEnvironment

        strategy: pl.strategies.Strategy
        if self.how is Parallelism.fsdp:
            from torch.distributed.fsdp.wrap import size_based_auto_wrap_policy

            # use_orig_params: frozen and trained weights may share a unit (LoRA, freezing, layer-wise rates);
            # a full state dict: one checkpoint file, written by rank 0, that any world size resumes from
            strategy = _cpu_capable(RayFSDPStrategy)(
                auto_wrap_policy=functools.partial(size_based_auto_wrap_policy, min_num_params=FSDP_WRAP_PARAMS),
                use_orig_params=True, state_dict_type="full")
        else:
            strategy = RayDDPStrategy(find_unused_parameters=False)
        plugins: List[Any] = [RayLightningEnvironment()]
        return {"devices": "auto", "strategy": strategy, "plugins": plugins, "use_distributed_sampler": False}


def _cpu_capable(fsdp: type) -> type:
    """Lightning's FSDP strategy, able to shard over CPU workers (gloo): torch's FSDP takes the CPU only when told
    ``device_id=cpu``, and Lightning gives it the device's index, which a CPU has none of (then FSDP refuses:
    "needs a non-CPU accelerator device"). On GPUs the strategy is Lightning's own."""

    class CpuCapableFSDP(fsdp):  # type: ignore[misc]
        def _setup_model(self, model: Any) -> Any:
            import torch
            from torch.distributed.fsdp import FullyShardedDataParallel

            wrapped = any(isinstance(m, FullyShardedDataParallel) for m in model.modules())
            if self.root_device.type == "cpu" and not wrapped:
                model = FullyShardedDataParallel(
                    module=model, cpu_offload=self.cpu_offload, mixed_precision=self.mixed_precision_config,
                    sharding_strategy=self.sharding_strategy, device_id=torch.device("cpu"), **self.kwargs)
                self.kwargs.pop("auto_wrap_policy", None)  # applied: Lightning now finds the model wrapped
            return super()._setup_model(model)

    return CpuCapableFSDP


@contextlib.contextmanager
def whole_model(trainer: pl.Trainer) -> Iterator[None]:
    """Inside it, rank 0's module holds every weight: FSDP's shards gathered (on the CPU), as saving needs; other
    strategies hold them already. Every worker must enter it (the gather is collective)."""
    from lightning.pytorch.strategies import FSDPStrategy

    model = trainer.strategy.model if isinstance(trainer.strategy, FSDPStrategy) else None
    if model is None:
        yield
        return
    from torch.distributed.fsdp import FullyShardedDataParallel

    with FullyShardedDataParallel.summon_full_params(model, writeback=False, rank0_only=True,
                                                     offload_to_cpu=True):
        yield
