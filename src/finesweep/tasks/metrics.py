"""Metrics the tasks share that torchmetrics does not have as they need them."""

from __future__ import annotations

import torch
from torchmetrics import PearsonCorrCoef


class Pearson(PearsonCorrCoef):
    """Pearson's r, defined as 0 when the predictions (or targets) are constant.

    A model that predicts one value for everything has no correlation to speak of; torchmetrics
    returns NaN with a warning there, which would read as a diverged trial. Non-finite predictions
    still give NaN.
    """

    def compute(self) -> torch.Tensor:
        if bool((self.var_x == 0).any() or (self.var_y == 0).any()):
            return torch.zeros((), device=self.var_x.device)
        return super().compute()

