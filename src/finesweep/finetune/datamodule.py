"""The LightningDataModule over already-tokenised splits: batching only, no I/O, no tokenising."""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Optional

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from finesweep.data import EncodedData, Split


class EncodedDataModule(pl.LightningDataModule):
    """Serves batches of an ``EncodedData``, each trimmed to its longest example.

    Args:
        data: the tokenised splits (shared read-only with other trials).
        batch_size: examples per training batch.
        seed: seed of the training shuffle.
    """

    def __init__(self, data: EncodedData, batch_size: int, seed: int) -> None:
        super().__init__()
        self.data = data
        self.batch_size = batch_size
        self.seed = seed
        self.test_loads = 0
        """How often the test split was served; model selection must touch it at most once."""

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.data.train, EpochShuffle(len(self.data.train), self.seed))

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.data.val)

    def test_dataloader(self) -> DataLoader:
        if self.data.test is None:
            raise RuntimeError("the test split is held out on the driver; search trials never receive it")
        self.test_loads += 1
        return self._loader(self.data.test)

    def _loader(self, split: Split, sampler: Optional[Sampler] = None) -> DataLoader:
        # DataLoader takes any sequence of indices; its stubs ask for a Dataset
        return DataLoader(range(len(split)), batch_size=self.batch_size, sampler=sampler,  # type: ignore[arg-type]
                          collate_fn=_Collate(split))


class EpochShuffle(Sampler):
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
    """Index list -> tensors, cut to the batch's longest sequence (dynamic padding, ~2x on tweets)."""

    def __init__(self, split: Split) -> None:
        self.split = split

    def __call__(self, indices: List[int]) -> Dict[str, Any]:
        idx = np.asarray(indices)
        mask = self.split.features["attention_mask"][idx]
        width = max(1, int(mask.sum(axis=1).max()))
        features = {name: torch.from_numpy(array[idx, :width].astype(np.int64))
                    for name, array in self.split.features.items()}
        return {"features": features, "labels": torch.from_numpy(self.split.labels[idx])}
