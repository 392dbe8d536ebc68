"""The LightningDataModule over already-tokenised splits: batching only, no I/O, no tokenising."""

from __future__ import annotations

from typing import Any, Dict, List

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader

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
        generator = torch.Generator().manual_seed(self.seed)
        return self._loader(self.data.train, shuffle=True, generator=generator)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.data.val, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        if self.data.test is None:
            raise RuntimeError("the test split is held out on the driver; search trials never receive it")
        self.test_loads += 1
        return self._loader(self.data.test, shuffle=False)

    def _loader(self, split: Split, shuffle: bool, generator: Any = None) -> DataLoader:
        # DataLoader takes any sequence of indices; its stubs ask for a Dataset
        return DataLoader(range(len(split)), batch_size=self.batch_size, shuffle=shuffle,  # type: ignore[arg-type]
                          generator=generator, collate_fn=_Collate(split))


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
