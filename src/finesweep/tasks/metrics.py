"""Metrics the tasks share that torchmetrics does not have as they need them."""

from __future__ import annotations

import torch
from torchmetrics import Metric, PearsonCorrCoef

from finesweep.tasks.token_data import IGNORED


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



class TokenPerplexity(Metric):
    """Perplexity over a whole split: exp of the summed next-token negative log-likelihood over the number of
    target tokens (labels other than -100), accumulated across batches.

    Never a mean of per-batch perplexities: batches hold different numbers of target tokens, and exp of a mean is
    not a mean of exps. The state is two sums, which DDP adds across processes.

    Args:
        shift: the logits at position i predict the label at i + 1 (causal LMs); False: at i (seq2seq decoders,
            whose inputs are already shifted right).
    """

    full_state_update = False
    higher_is_better = False
    nll: torch.Tensor
    tokens: torch.Tensor

    def __init__(self, shift: bool = True) -> None:
        super().__init__()
        self.shift = shift
        self.add_state("nll", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("tokens", default=torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch: logits ``(B, L, V)`` and labels ``(B, L)``."""
        if self.shift:
            logits, labels = logits[:, :-1], labels[:, 1:]
        flat = labels.reshape(-1)
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), flat,
                                                ignore_index=IGNORED, reduction="sum")
        self.nll += nll.double()
        self.tokens += (flat != IGNORED).sum()

    def compute(self) -> torch.Tensor:
        """exp(summed NLL / tokens); NaN when the split had no target token."""
        if int(self.tokens) == 0:
            return torch.tensor(float("nan"), device=self.nll.device)
        return torch.exp(self.nll / self.tokens)
