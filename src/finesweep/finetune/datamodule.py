"""The LightningDataModule over already-prepared splits: batching only, no I/O, no tokenising."""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, List, Optional

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
    """

    def __init__(self, data: PreparedData, batch_size: int, seed: int,
                 transform: Optional[Callable[[Batch], Batch]] = None) -> None:
        super().__init__()
        self.data = data
        self.batch_size = batch_size
        self.seed = seed
        self.transform = transform
        self.test_loads = 0
        """How often the test split was served; model selection must touch it at most once."""

    def train_dataloader(self) -> DataLoader[Dict[str, Any]]:
        return self._loader(self.data.train, EpochShuffle(len(self.data.train), self.seed), self.transform)

    def val_dataloader(self) -> DataLoader[Dict[str, Any]]:
        return self._loader(self.data.val)

    def test_dataloader(self) -> DataLoader[Dict[str, Any]]:
        if self.data.test is None:
            raise RuntimeError("the test split is held out on the driver; search trials never receive it")
        self.test_loads += 1
        return self._loader(self.data.test)

    def _loader(self, split: Split, sampler: Optional[Sampler[int]] = None,
                transform: Optional[Callable[[Batch], Batch]] = None) -> DataLoader[Dict[str, Any]]:
        # DataLoader takes any sequence of indices; its stubs ask for a Dataset
        return DataLoader(range(len(split)), batch_size=self.batch_size, sampler=sampler,  # type: ignore[arg-type]
                          collate_fn=_Collate(self.data, split, transform))


class EpochShuffle(Sampler[int]):
    """A shuffle that depends only on (seed, epoch): a trial resumed at epoch k sees the batches of epoch k.

    Lightning calls ``set_epoch`` before every training epoch (as for a DistributedSampler).
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


class _Collate:
    """Index list -> the task's batch of tensors (picklable, for DataLoader workers)."""

    def __init__(self, data: PreparedData, split: Split, transform: Optional[Callable[[Batch], Batch]]) -> None:
        self.task = data.task
        self.split = split
        self.transform = transform

    def __call__(self, indices: List[int]) -> Dict[str, Any]:
        batch = self.task.collate(self.split, indices)
        return batch if self.transform is None else self.transform(batch)
