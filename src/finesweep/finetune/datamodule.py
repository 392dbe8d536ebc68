"""The LightningDataModule over already-prepared splits: batching only, no I/O, no tokenising."""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Sampler

from finesweep.tasks import Batch, PreparedData, Split


class PreparedDataModule(pl.LightningDataModule):
    """Serves batches of ``PreparedData``, made by its task (``Task.collate``: text is cut to its longest row).

    Args:
        data: the prepared splits (shared read-only with other trials).
        batch_size: examples per training batch.
        seed: seed of the training shuffle.
        transform: applied to every training batch (``Task.train_transform``: augmentation); never to the others.
        val_rows: validation serves the split's first ``val_rows`` rows (a trial's cheap reports); None = all.
        shard: (rank, workers) of a trial of several workers: this worker trains on its share of every epoch's
            shuffle (``EpochShuffle``); validation and test are served whole to every worker.
    """

    def __init__(self, data: PreparedData, batch_size: int, seed: int,
                 transform: Optional[Callable[[Batch], Batch]] = None, val_rows: Optional[int] = None,
                 shard: Tuple[int, int] = (0, 1)) -> None:
        super().__init__()
        self.data = data
        self.val_rows = val_rows
        self.batch_size = batch_size
        self.seed = seed
        self.transform = transform
        self.test_loads = 0
        """How often the test split was served; model selection must touch it at most once."""

        self.shuffle = EpochShuffle(len(self.data.train), self.seed, *shard)

    def resume_at(self, epoch: int, examples_done: int) -> None:
        """A resumed trial: the first epoch it trains is ``epoch``, of which ``examples_done`` examples were trained
        on before its checkpoint (by all the trial's workers); they are skipped, so no example is seen twice and
        none is missed."""
        self.shuffle.resume(epoch, examples_done)

    def state_dict(self) -> Dict[str, Any]:
        # in Lightning's checkpoint: a retry after running out of memory halves the batch, and a mid-epoch
        # resume must skip the examples the old batches held (on every worker), not as many new batches
        return {"batch_size": self.batch_size, "workers": self.shuffle.workers}

    def train_dataloader(self) -> DataLoader[Dict[str, Any]]:
        return self._loader(self.data.train, self.shuffle, self.transform)

    def val_dataloader(self) -> DataLoader[Dict[str, Any]]:
        return self._loader(self.data.val, rows=self.val_rows)

    def test_dataloader(self) -> DataLoader[Dict[str, Any]]:
        if self.data.test is None:
            raise RuntimeError("the test split is held out on the driver; search trials never receive it")
        self.test_loads += 1
        return self._loader(self.data.test)

    def _loader(self, split: Split, sampler: Optional[Sampler[int]] = None,
                transform: Optional[Callable[[Batch], Batch]] = None, rows: Optional[int] = None
                ) -> DataLoader[Dict[str, Any]]:
        size = len(split) if rows is None else min(rows, len(split))
        # Its own generator: a loader draws a seed when each epoch's iterator starts, and drawing it from torch's
        # global RNG would shift the dropout masks of a trial resumed mid-epoch (its iterator starts after the
        # checkpoint's RNG is restored, an uninterrupted one's before).
        generator = torch.Generator().manual_seed(self.seed)
        # DataLoader takes any sequence of indices; its stubs ask for a Dataset
        return DataLoader(range(size), batch_size=self.batch_size, sampler=sampler,  # type: ignore[arg-type]
                          generator=generator,
                          collate_fn=_Collate(self.data, split, transform))


class EpochShuffle(Sampler[int]):
    """A shuffle that depends only on (seed, epoch): a trial resumed at epoch k sees the batches of epoch k.

    Lightning calls ``set_epoch`` before every training epoch (as for a DistributedSampler). A trial resumed
    mid-epoch (``resume``) skips, in that epoch only, the examples it trained on before its checkpoint; the length
    stays the epoch's, which Lightning counts the resumed epoch's batches against.

    In a trial of ``workers`` workers, worker ``rank`` takes every ``workers``-th example of the one order, starting
    at its rank (the order padded with its own first examples to a multiple of ``workers``, as torch's
    DistributedSampler does, so every worker takes as many batches). Batch i of the workers together is then batch
    i of one worker with ``workers`` times the batch: the same training, split.
    """

    def __init__(self, size: int, seed: int, rank: int = 0, workers: int = 1) -> None:
        self.size = size
        self.seed = seed
        self.rank = rank
        self.workers = workers
        self.epoch = 0
        self._skip: Optional[Tuple[int, int]] = None  # (epoch, examples of it already trained on)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume(self, epoch: int, examples_done: int) -> None:
        """Skip the first ``examples_done`` examples of ``epoch``'s order (all workers' together), once."""
        self._skip = (epoch, examples_done) if examples_done else None

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        while len(order) < len(self) * self.workers:  # pad (a split smaller than the workers: more than once)
            order += order[:len(self) * self.workers - len(order)]
        if self._skip is not None and self._skip[0] == self.epoch:
            order, self._skip = order[self._skip[1]:], None
        return iter(order[self.rank::self.workers])

    def __len__(self) -> int:
        return -(-self.size // self.workers)


class _Collate:
    """Index list -> the task's batch of tensors (picklable, for DataLoader workers)."""

    def __init__(self, data: PreparedData, split: Split, transform: Optional[Callable[[Batch], Batch]]) -> None:
        self.task = data.task
        self.split = split
        self.transform = transform

    def __call__(self, indices: List[int]) -> Dict[str, Any]:
        batch = self.task.collate(self.split, indices)
        return batch if self.transform is None else self.transform(batch)
