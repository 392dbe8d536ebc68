"""SMAC3 2.4.1 multi-fidelity on LCBench: ``MultiFidelityFacade`` (Hyperband + random forest), through ask/tell.

``Scenario(space, deterministic=True, min_budget=4, max_budget=52, n_trials=budget // 4, seed=seed)`` and the
facade's own defaults otherwise: ``MultiFidelityFacade.get_intensifier`` (Hyperband, eta 3, incumbent on the highest
observed budget), its random initial design (10 configurations per hyperparameter, at most a quarter of n_trials),
its random forest (SMAC's own scikit-learn forest: pyrfr is an optional extra that the facades do not use since 2.3),
log EI and its local-and-random acquisition search. n_trials is only a cap that the epoch budget always hits first
(every trial costs at least 4 epochs). SMAC's Hyperband with these bounds evaluates at budgets of about 5.8, 17.3 and
52 epochs, trained as round(budget) epochs. Every evaluation trains from scratch (SMAC does not continue a trial), so
each is booked as a new trial and pays its whole epoch count.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lcbench  # noqa: E402

from peers import BudgetSpent, Ledger, Result  # noqa: E402
from peers.dehb_peer import configspace, epochs_of, surrogate_config  # noqa: E402

MIN_BUDGET, MAX_BUDGET = 4, lcbench.EPOCHS


def run(task: str, seed: int, budget: int, prior: Optional[Dict[str, float]] = None) -> List[Result]:
    from smac import MultiFidelityFacade, Scenario
    from smac.runhistory.dataclasses import TrialValue

    def train(config: Any, seed: int = 0, budget: float = MAX_BUDGET) -> float:
        """The target function SMAC's facade wants; the ask/tell loop below evaluates in its place."""
        return 1.0 - float(lcbench.curve(task, surrogate_config(config)).accuracy[epochs_of(budget) - 1])

    ledger = Ledger(budget)
    with tempfile.TemporaryDirectory(prefix="smac-") as output:
        scenario = Scenario(configspace(seed), deterministic=True, n_trials=max(1, budget // MIN_BUDGET),
                            min_budget=MIN_BUDGET, max_budget=MAX_BUDGET, seed=seed, output_directory=Path(output))
        smac = MultiFidelityFacade(scenario, train, overwrite=True, logging_level=40)
        trial = 0
        try:
            while not ledger.done:
                info = smac.ask()
                epochs = epochs_of(info.budget)
                accuracy = float(lcbench.curve(task, surrogate_config(info.config)).accuracy[epochs - 1])
                ledger.book(trial, epochs, accuracy)  # a new id: trained from scratch
                trial += 1
                smac.tell(info, TrialValue(cost=1.0 - accuracy), save=False)
        except BudgetSpent:
            pass
    return ledger.results


RUNS: Dict[str, Callable[[str, int, int, Optional[Dict[str, float]]], List[Result]]] = {
    "SMAC3 multi-fidelity (Hyperband + random forest)": run,
}
