"""Model selection on small data, simulated with known true scores: how often each way of choosing the winner
picks a configuration truly better than the recipe, and how often one truly worse.

A simulated task is a data set of ``--rows`` labelled examples (default 400: 320 train / 40 validation /
40 test, the issue's small topic task) and a population of configurations. Every example has a difficulty
(shared by every configuration, so scores on the same rows are paired, as in real fine-tuning); a configuration
has an ability on the logit scale; one training run of it adds training noise (``--seed-noise``, the spread a
fresh seed or another training subset gives), and each example it sees is right with probability
``sigmoid(ability + noise - difficulty)``. Its true score is its expected accuracy over examples and runs.

The recipe has ability 0; the search proposes configurations ``recipe + N(m, s)`` with ``m`` drawn per task
from ``[--shift-low, --shift-high]`` (tasks where the search can gain, and tasks where it cannot: "the tasks
in between"). A search of ``--trials`` trials (the recipe first, as ``search.start_from_config`` runs it)
scores each trial once on the validation split. Then each procedure picks a winner:

- ``one split``: the search's best validation score (finesweep's default without re-training);
- ``one split, no recipe trial``: the same, the recipe not among the trials (before ``start_from_config``);
- ``seeds``: the top-k and the recipe re-trained with 3 fresh seeds on the same split, best mean;
- ``K folds``: the top-k and the recipe re-trained on K folds of train + validation, best mean over folds
  (``final.cv_folds``);
- ``K folds, recipe unless better``: the recipe unless the winner's Nadeau-Bengio corrected interval against it
  excludes zero (``final.prefer: recipe_unless_better``).

"Truly better" means a true score above the recipe's by more than ``--margin`` (0.5 points), "truly worse"
below it by more. The compute column counts training runs (a fold run trains on 4/5 of train + validation).

Usage: python benchmarks/selection_noise.py [--tasks 2000]   (prints a markdown table)
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Setting:
    """One simulated study."""

    rows: int = 400
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    trials: int = 10
    top_k: int = 3
    folds: int = 5
    seeds: int = 3
    seed_noise: float = 0.25
    spread: float = 0.35
    shift_low: float = -0.6
    shift_high: float = 0.3
    margin: float = 0.005


PROCEDURES = ("one split, no recipe trial", "one split", "seeds", "K folds", "K folds, recipe unless better")


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class Task:
    """One simulated data set and the configurations a search proposes on it."""

    def __init__(self, setting: Setting, rng: np.random.Generator) -> None:
        self.setting, self.rng = setting, rng
        n_test = round(setting.rows * setting.test_fraction)
        self.pool = setting.rows - n_test  # train + validation: what folds divide
        self.val = round(setting.rows * setting.val_fraction)
        self.difficulty = rng.normal(0.0, 1.5, size=self.pool)
        shift = rng.uniform(setting.shift_low, setting.shift_high)
        proposed = rng.normal(shift, setting.spread, size=setting.trials - 1)
        self.abilities = np.concatenate([[0.0], proposed])  # index 0 is the recipe
        # the true score: E[sigmoid(ability - Z)] with Z = difficulty - training noise ~ N(0, 1.5^2 + noise^2),
        # by Gauss-Hermite quadrature (exact to ~1e-9 with 60 nodes)
        nodes, weights = np.polynomial.hermite_e.hermegauss(60)
        spread = math.sqrt(1.5 ** 2 + setting.seed_noise ** 2)
        self.true = np.array([float(weights @ sigmoid(a - spread * nodes)) / math.sqrt(2 * math.pi)
                              for a in self.abilities])

    def score(self, config: int, rows: np.ndarray) -> float:
        """Accuracy of one training run of ``config`` on the examples ``rows``."""
        ability = self.abilities[config] + self.rng.normal(0.0, self.setting.seed_noise)
        right = self.rng.random(len(rows)) < sigmoid(ability - self.difficulty[rows])
        return float(right.mean())


def simulate(setting: Setting, tasks: int, seed: int = 0) -> Dict[str, Dict[str, float]]:
    """Rates of each procedure over ``tasks`` simulated tasks."""
    rng = np.random.default_rng(seed)
    outcomes: Dict[str, List[Tuple[float, int]]] = {name: [] for name in PROCEDURES}
    possible = 0
    for _ in range(tasks):
        task = Task(setting, rng)
        possible += bool(np.any(task.true[1:] - task.true[0] > setting.margin))
        for name, (winner, runs) in _procedures(task, rng).items():
            outcomes[name].append((task.true[winner] - task.true[0], runs))
    table = {}
    for name, results in outcomes.items():
        gains = np.array([g for g, _ in results])
        table[name] = {"better": float(np.mean(gains > setting.margin)),
                       "worse": float(np.mean(gains < -setting.margin)), "gain": float(100 * gains.mean()),
                       "runs": float(np.mean([r for _, r in results]))}
    table["(a configuration truly better than the recipe exists)"] = {"better": possible / tasks, "worse": math.nan,
                                                                      "gain": math.nan, "runs": math.nan}
    return table


def _procedures(task: Task, rng: np.random.Generator) -> Dict[str, Tuple[int, int]]:
    s = task.setting
    order = rng.permutation(task.pool)
    val = order[:task.val]
    search = np.array([task.score(c, val) for c in range(s.trials)])
    ranked = sorted(range(s.trials), key=lambda c: (-search[c], c))  # ties to the earlier trial (the recipe)
    without = 1 + int(np.argmax(search[1:]))
    finalists = list(dict.fromkeys([*ranked[:s.top_k], 0]))
    seeded = {c: np.mean([task.score(c, val) for _ in range(s.seeds)]) for c in finalists}
    folds = np.arange(task.pool) % s.folds
    rng.shuffle(folds)
    fold_scores = {c: np.array([task.score(c, np.flatnonzero(folds == f)) for f in range(s.folds)])
                   for c in finalists}
    cv_winner = max(finalists, key=lambda c: (fold_scores[c].mean(), -c))
    cautious = cv_winner if _better(fold_scores[cv_winner] - fold_scores[0], s.folds) else 0
    cv_runs = s.trials + s.folds * len(finalists)
    return {"one split, no recipe trial": (without, s.trials - 1), "one split": (ranked[0], s.trials),
            "seeds": (max(finalists, key=lambda c: (seeded[c], -c)), s.trials + s.seeds * len(finalists)),
            "K folds": (cv_winner, cv_runs), "K folds, recipe unless better": (cautious, cv_runs)}


def _better(differences: np.ndarray, folds: int) -> bool:
    if not differences.any():
        return False
    spread = differences.std(ddof=1)
    half = stats.t.ppf(0.975, folds - 1) * spread * math.sqrt(1 / folds + 1 / (folds - 1))
    return bool(differences.mean() - half > 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=2000, help="simulated tasks (default 2000)")
    parser.add_argument("--rows", type=int, default=400, help="labelled examples per task (default 400)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    setting = Setting(rows=args.rows)
    start = time.perf_counter()
    table = simulate(setting, args.tasks, args.seed)
    print(f"{args.tasks} simulated tasks of {args.rows} rows ({round(args.rows * setting.val_fraction)} validation), "
          f"{setting.trials} trials, top {setting.top_k} + the recipe to model selection, {setting.folds} folds; "
          f"{time.perf_counter() - start:.0f} s\n")
    print("| procedure | picks truly better than the recipe | picks truly worse | mean true gain | training runs |")
    print("|---|---|---|---|---|")
    for name, row in table.items():
        if math.isnan(row["worse"]):
            print(f"| {name} | {row['better']:.1%} | | | |")
            continue
        print(f"| {name} | {row['better']:.1%} | {row['worse']:.1%} | {row['gain']:+.2f} points | {row['runs']:.0f} |")


if __name__ == "__main__":
    main()
