"""Trials of several workers, the parts that need no second process: how the training shuffle is shared out, what
a resumed worker skips, the step budget, the config rules and whether the workers fit the cluster."""

from __future__ import annotations

from typing import Any, Dict, List

import pytest

from finesweep.config import ClusterConfig, Parallelism
from finesweep.errors import UserError
from finesweep.execution.cluster import _check_fit
from finesweep.execution.trial import StepPlan
from finesweep.finetune.datamodule import EpochShuffle
from finesweep.finetune.parallel import Workers

from .conftest import MakeConfig


def _batches(order: List[int], size: int) -> List[List[int]]:
    return [order[i:i + size] for i in range(0, len(order), size)]


@pytest.mark.parametrize("workers", [2, 3, 4])
def test_the_workers_batch_i_together_is_one_workers_batch_i_of_n_times_the_size(workers: int) -> None:
    one = EpochShuffle(96, seed=7)
    shards = [EpochShuffle(96, seed=7, rank=r, workers=workers) for r in range(workers)]
    for epoch in (0, 3):
        for s in [one, *shards]:
            s.set_epoch(epoch)
        whole = _batches(list(one), 8 * workers)
        parts = [_batches(list(s), 8) for s in shards]
        assert all(len(p) == len(whole) for p in parts), "every worker takes as many batches"
        for i, batch in enumerate(whole):
            assert sorted(x for p in parts for x in p[i]) == sorted(batch), f"epoch {epoch}, batch {i}"


def test_a_split_that_does_not_divide_is_padded_so_every_worker_takes_as_many_examples() -> None:
    shards = [EpochShuffle(10, seed=0, rank=r, workers=4) for r in range(4)]
    taken = [list(s) for s in shards]
    assert [len(t) for t in taken] == [3] * 4 == [len(s) for s in shards]
    assert sorted(set(x for t in taken for x in t)) == list(range(10)), "every example is trained on"
    assert sum(len(t) for t in taken) == 12, "two examples twice, as torch's DistributedSampler pads"
    tiny = [list(EpochShuffle(1, seed=0, rank=r, workers=3)) for r in range(3)]
    assert tiny == [[0], [0], [0]], "a split smaller than the workers is repeated"


def test_a_resumed_worker_skips_the_examples_all_workers_trained_on() -> None:
    workers, batch = 2, 4
    straight = [EpochShuffle(40, seed=1, rank=r, workers=workers) for r in range(workers)]
    for s in straight:
        s.set_epoch(2)
    orders = [list(s) for s in straight]
    resumed = [EpochShuffle(40, seed=1, rank=r, workers=workers) for r in range(workers)]
    for r, s in enumerate(resumed):
        s.resume(2, 3 * batch * workers)  # 3 batches of 4 on each of 2 workers, as position_in_epoch counts
        s.set_epoch(2)
        assert list(s) == orders[r][3 * batch:], f"worker {r} goes on with its 4th batch"
        s.set_epoch(3)
        assert len(list(s)) == 20, "the next epoch is whole again"


def test_a_trial_of_several_workers_takes_fewer_steps_per_epoch(make_config: MakeConfig) -> None:
    one = StepPlan.of(make_config("data.batch_size=8"), 192)
    two = StepPlan.of(make_config("data.batch_size=8", "cluster.workers_per_trial=2"), 192)
    assert (one.steps_per_epoch, two.steps_per_epoch) == (24, 12), "each worker takes 96 of 192, 8 at a time"
    config = make_config("data.batch_size=8", "cluster.workers_per_trial=2", "trainer.accumulate_grad_batches=3")
    assert config.effective_batch == 48


def test_one_worker_is_todays_single_device_trainer() -> None:
    assert Workers().trainer_arguments() == {"devices": 1}
    assert Workers(rank=1, world=2).writer is False and Workers(rank=0, world=2).writer is True


@pytest.mark.parametrize(("overrides", "message"), [
    (["cluster.workers_per_trial=0"], r"cluster\.workers_per_trial must be at least 1, got 0\. Use 1"),
    (["cluster.workers_per_trial=2", "cluster.gpus_per_worker=0.5"],
     r"cluster\.gpus_per_worker must be a whole number of GPUs when a trial spans several workers"),
    (["cluster.gpus_per_trial=1", "cluster.gpus_per_worker=2"],
     r"cluster\.gpus_per_worker disagrees with cluster\.gpus_per_trial=1.*got 2"),
    (["cluster.cpus_per_worker=0"], r"cluster\.cpus_per_worker must be > 0, got 0"),
    (["cluster.workers_per_trial=2", "cluster.strategy=fsdp", "probe.forgetting=text"],
     r"probe\.forgetting runs the whole model in one process, which a sharded \(cluster\.strategy=fsdp\) trial "
     r"has on no worker"),
    (["cluster.workers_per_trial=2", "cluster.strategy=bogus"], r"cluster\.strategy"),
])
def test_bad_worker_settings_are_one_line_naming_the_key(make_config: MakeConfig, overrides: List[str],
                                                         message: str) -> None:
    with pytest.raises(UserError, match=message) as error:
        make_config(*overrides)
    assert "\n" not in str(error.value)


def test_fsdp_with_one_worker_and_ddp_with_the_probe_are_fine(make_config: MakeConfig) -> None:
    assert make_config("cluster.strategy=fsdp").cluster.strategy is Parallelism.fsdp
    assert make_config("cluster.workers_per_trial=2", "probe.forgetting=text").cluster.distributed


def _cluster(**values: Any) -> ClusterConfig:
    return ClusterConfig(storage_path="/s", log_dir="/l", **values)


def test_workers_fit_when_each_fits_a_node_and_the_nodes_hold_them_all() -> None:
    nodes: List[Dict[str, Any]] = [{"Resources": {"CPU": 2.0}}, {"Resources": {"CPU": 3.0, "GPU": 2.0}}]
    _check_fit(_cluster(workers_per_trial=4, cpus_per_worker=1), nodes)  # 2 + 3 workers' room
    _check_fit(_cluster(workers_per_trial=2, cpus_per_worker=1, gpus_per_worker=1), nodes)
    with pytest.raises(UserError, match=r"^cluster\.workers_per_trial=3, 1 CPU\(s\) and 1 GPU\(s\) per worker: the "
                                        r"cluster holds 2 such worker\(s\) at once over its 2 node\(s\), so a trial "
                                        r"could never start\. Lower cluster\.workers_per_trial to at most 2"):
        _check_fit(_cluster(workers_per_trial=3, cpus_per_worker=1, gpus_per_worker=1), nodes)
    with pytest.raises(UserError, match=r"^cluster\.workers_per_trial=2, 4 CPU\(s\) and 0 GPU\(s\) per worker: a "
                                        r"worker fits on no node of the cluster; the largest has 3 CPU\(s\)"):
        _check_fit(_cluster(workers_per_trial=2, cpus_per_worker=4), nodes)
    with pytest.raises(UserError, match=r"the cluster holds 2 such worker"):
        _check_fit(_cluster(workers_per_trial=3, cpus_per_worker=2), nodes)  # 1 + 1: 3 CPUs hold one of 2


def test_show_says_what_a_trial_runs_on_and_its_effective_batch(make_config: MakeConfig) -> None:
    from finesweep.cli import trial_shape

    two = make_config("data.batch_size=8", "cluster.workers_per_trial=2", "cluster.cpus_per_worker=1",
                      "cluster.placement=spread", "trainer.accumulate_grad_batches=2")
    assert trial_shape(two, []) == ("each trial: 2 workers (ddp, spread), each 1 CPU(s) and 0 GPU(s); effective "
                                    "batch 32 = 8 per device x 2 workers x 2 accumulated")
    assert trial_shape(two, ["data.batch_size"]).endswith(
        "effective batch: data.batch_size x 2 workers x 2 accumulated (searched)")
    assert trial_shape(make_config("data.batch_size=16"), []).startswith("each trial: 1 process, ")


def test_a_trials_effective_batch_takes_its_sampled_factors_and_ignores_other_keys(make_config: MakeConfig) -> None:
    config = make_config("data.batch_size=8", "cluster.workers_per_trial=2")
    assert config.effective_batch_with({}) == config.effective_batch == 16
    assert config.effective_batch_with({"data.batch_size": 4, "trainer.accumulate_grad_batches": 3}) == 24
    assert config.effective_batch_with({"lcbench.batch_size": 512}) == 16, "keys of no config section count nothing"
