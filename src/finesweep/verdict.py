"""Judging a sweep against noise: how much its validation split can resolve, and whether its winner beats the
recipe (the composed config's own values) beyond noise.

On the small data sets fine-tuning usually has, one validation example moves accuracy by points, and a search
ranked on it picks noise as readily as a better configuration. The verdict compares the winner with the recipe
unit by unit, on the same folds (``final.cv_folds``) or the same seeds (``final.seeds``), and gives the mean
difference with a 95% t-interval:

- over folds, with Nadeau and Bengio's correction for the overlap of the training sets (the variance of the mean
  difference is ``(1/K + 1/(K-1)) s^2`` instead of ``s^2/K``): the plain paired t-interval on K-fold scores is too
  narrow and calls noise a gain;
- over seeds, the plain paired t-interval: it measures training noise only, since every seed validates on the
  same rows (the line says so).

The winner is better (or worse) beyond noise exactly when the interval excludes zero.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

from finesweep.config import ExperimentConfig, Mode
from finesweep.config.schema import AUTO_CV_BELOW, AUTO_CV_FOLDS

LEVEL = 0.95
"""Confidence level of the interval."""


@dataclass(frozen=True)
class Verdict:
    """The winner's difference to the recipe, unit by unit (fold or seed), in the objective's units.

    ``differences`` are winner minus recipe per unit, so for a loss (mode min) negative is better.
    """

    metric: str
    mode: Mode
    differences: Tuple[float, ...]
    unit: str
    """folds, seeds, or "split" (one score each: the search's own runs)."""
    points: bool
    """Whether the metric is a share in [0, 1], shown in points (x100)."""
    val_rows: int = 0
    winner_is_recipe: bool = False

    @property
    def n(self) -> int:
        """Paired units."""
        return len(self.differences)

    @property
    def mean(self) -> float:
        """Mean difference, winner minus recipe."""
        return statistics.fmean(self.differences) if self.differences else math.nan

    @property
    def interval(self) -> Optional[Tuple[float, float]]:
        """The 95% t-interval of the mean difference (corrected over folds); None with fewer than 2 units."""
        return mean_interval(self.differences, corrected=self.unit == "folds")

    @property
    def outcome(self) -> str:
        """better, worse, or same (not distinguishable from the recipe, or no interval to tell)."""
        interval = self.interval
        if self.winner_is_recipe or interval is None:
            return "same"
        low, high = interval
        gain = (low > 0) if self.mode is Mode.max else (high < 0)
        loss = (high < 0) if self.mode is Mode.max else (low > 0)
        return "better" if gain else "worse" if loss else "same"

    def line(self) -> str:
        """One line for the terminal, the parent run and the report."""
        if self.winner_is_recipe:
            over = f"over {self.n} {self.unit}" if self.unit != "split" else "on the validation split"
            return f"winner vs recipe: the winner is the recipe (no searched configuration ranked above it {over})"
        shown = f"{self._amount(self.mean)} {self.metric}"
        interval = self.interval
        if interval is None:
            moved = f"{100 / self.val_rows:.2g}" if self.points and self.val_rows else ""
            row = f"; one row = {moved} point{'' if moved == '1' else 's'}" if moved else ""
            return (f"winner vs recipe: {shown} on one validation split ({self.val_rows} rows{row}); no interval "
                    "from one score each: set final.cv_folds (or final.seeds) to judge it")
        low, high = interval
        how = ("Nadeau-Bengio corrected t-interval" if self.unit == "folds"
               else "paired t-interval, training noise only: every seed validates on the same rows")
        judged = {"better": "better than the recipe beyond noise", "worse": "worse than the recipe beyond noise",
                  "same": "not distinguishable from the recipe"}[self.outcome]
        return (f"winner vs recipe: {shown} [{self._amount(low)}, {self._amount(high)}] on {self.n} {self.unit} "
                f"({LEVEL:.0%} {how}): {judged}")

    def metrics(self) -> Dict[str, float]:
        """What the parent run logs: the mean difference and its interval (in the metric's units) and the units."""
        logged = {f"vs_recipe/{self.metric}/diff": self.mean, "vs_recipe/units": float(self.n)}
        if self.interval is not None:
            logged[f"vs_recipe/{self.metric}/low"], logged[f"vs_recipe/{self.metric}/high"] = self.interval
        return logged

    def _amount(self, value: float) -> str:
        return f"{100 * value:+.1f} points" if self.points else f"{value:+.4g}"


def mean_interval(values: Sequence[float], corrected: bool = False,
                  level: float = LEVEL) -> Optional[Tuple[float, float]]:
    """The t-interval of the mean of some values (the verdict's: paired differences); None with fewer than 2.

    Args:
        corrected: the values come from K-fold cross-validation: Nadeau and Bengio's corrected variance
            ``(1/K + n_test/n_train) s^2`` with ``n_test/n_train = 1/(K-1)``.
    """
    n = len(values)
    if n < 2:
        return None
    from scipy import stats  # ~0.3 s, only once a selection is judged

    spread = statistics.stdev(values)
    share = 1 / n + (1 / (n - 1) if corrected else 0.0)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * spread * math.sqrt(share)
    mean = statistics.fmean(values)
    return mean - half, mean + half


def resolution(config: ExperimentConfig, rows: Tuple[int, int, int], points: bool) -> str:
    """One line: the split sizes, how far one validation row moves the objective, and what cross-validation does.

    Args:
        rows: train, validation and test rows.
        points: the objective is a share in [0, 1] (``Task.points_metrics``).
    """
    train, val, test = rows
    metric, folds = config.objective.metric, config.final.folds(val)
    moves = f"; one row moves {metric} by ~{100 / val:.3g} points" if points and val else ""
    line = f"validation split: {val} rows (train {train}, test {test}){moves}"
    pooled = f"the {train + val} train + validation rows"
    if folds:
        return (f"{line}; the finalists and the recipe are cross-validated on {folds} folds of {pooled} "
                f"(final.cv_folds={config.final.cv_folds})")
    if val < AUTO_CV_BELOW:
        return (f"{line}: coarse for ranking configurations (under {AUTO_CV_BELOW} rows). "
                f"final.cv_folds=auto ranks the finalists on {AUTO_CV_FOLDS} folds of {pooled}")
    return line
