"""DEHB (differential evolution + Hyperband, DEHB 0.1.2) on LCBench, through its ask/tell interface.

``DEHB(cs=..., min_fidelity=4, max_fidelity=52, eta=3, n_workers=1, seed=seed)`` with its defaults otherwise
(mutation factor 0.5, crossover probability 0.5, strategy rand1_bin, async_strategy immediate). DEHB spaces its
fidelities geometrically down from the maximum: 52 / 3^k for k = 2, 1, 0, i.e. 5.78, 17.3 and 52 epochs, which
are trained as round(fidelity) = 6, 17 and 52 epochs. Every evaluation trains a configuration from scratch (DEHB has
no continuation), so each one is booked as a new trial and pays its whole epoch count.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lcbench  # noqa: E402

from peers import BudgetSpent, Ledger, Result  # noqa: E402

MIN_FIDELITY, MAX_FIDELITY, ETA = 4, lcbench.EPOCHS, 3


def configspace(seed: int) -> Any:
    """LCBench's 7 hyperparameters as a ConfigSpace space: log scale where log, integers as integers."""
    from ConfigSpace import ConfigurationSpace, Float, Integer

    space = ConfigurationSpace(seed=seed)
    for key, spec in lcbench.space().items():
        low, high = spec["low"], spec["high"]
        if spec["distribution"] == "int":
            space.add(Integer(key, (int(low), int(high)), log=bool(spec.get("log", False))))
        else:
            space.add(Float(key, (float(low), float(high)), log=spec["distribution"] == "loguniform"))
    return space


def surrogate_config(config: Any) -> Dict[str, float]:
    """A ConfigSpace configuration (or dict) as the surrogate takes it: integers rounded."""
    return {key: float(round(float(config[key]))) if spec["distribution"] == "int" else float(config[key])
            for key, spec in lcbench.space().items()}


def epochs_of(fidelity: float) -> int:
    """The epochs an evaluation at a (fractional) fidelity trains: the nearest whole epoch in 1..52."""
    return max(1, min(lcbench.EPOCHS, int(round(float(fidelity)))))


def run(task: str, seed: int, budget: int, prior: Optional[Dict[str, float]] = None) -> List[Result]:
    from dehb import DEHB
    from loguru import logger

    ledger = Ledger(budget)
    with tempfile.TemporaryDirectory(prefix="dehb-") as output:
        dehb = DEHB(cs=configspace(seed), min_fidelity=MIN_FIDELITY, max_fidelity=MAX_FIDELITY, eta=ETA,
                    n_workers=1, seed=seed, output_path=output, save_freq="end", log_level="WARNING")
        # DEHB's constructor points loguru at stdout, where run.py prints its JSON: warnings go to stderr instead.
        logger.remove()
        logger.add(sys.stderr, level="WARNING")
        trial = 0
        try:
            while not ledger.done:
                job = dehb.ask()
                epochs = epochs_of(job["fidelity"])
                accuracy = float(lcbench.curve(task, surrogate_config(job["config"])).accuracy[epochs - 1])
                ledger.book(trial, epochs, accuracy)  # a new id: trained from scratch
                trial += 1
                dehb.tell(job, {"fitness": 1.0 - accuracy, "cost": float(epochs)})
        except BudgetSpent:
            pass
    return ledger.results


RUNS: Dict[str, Callable[[str, int, int, Optional[Dict[str, float]]], List[Result]]] = {"DEHB": run}
