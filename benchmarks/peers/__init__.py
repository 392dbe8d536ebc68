"""Other libraries' multi-fidelity searches on the LCBench surrogate, each driven through its own public API.

Every peer is a function ``run(task, seed, budget, prior) -> List[Result]`` in one module of this package, listed in
``PEERS``. It runs the peer's own loop in-process (no Ray), one evaluation at a time, and books every evaluation
through a ``Ledger``, which counts compute in epochs the way ``search_efficiency.spent_epochs`` does: a result at
epoch e of trial t costs e minus t's previous epoch. A peer that continues a trial from where it stopped (freeze-thaw,
ASHA's promotions) books it under the same trial id; a peer that trains a configuration again from scratch at a
higher fidelity (Hyperband's brackets in DEHB, SMAC, PriorBand) books a new id, so it pays the whole epoch count.

The peers' dependencies pin other versions of what finesweep pins (numpy < 2, pandas < 3, gpytorch 1.13), so they live
in their own virtual environments (``make peers``); ``python benchmarks/peers/run.py`` is what search_efficiency.py
starts in them, and prints the results as JSON.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[2]

Result = Tuple[int, int, float]
"""(trial id, epoch, validation accuracy) in arrival order, as in search_efficiency.py."""

PEERS: Dict[str, Tuple[str, str]] = {
    "Syne Tune ASHA": ("synetune", ".venv-peers"),
    "Syne Tune BOHB": ("synetune", ".venv-peers"),
    "Syne Tune MOBSTER": ("synetune", ".venv-peers"),
    "Syne Tune HyperTune": ("synetune", ".venv-peers"),
    "Syne Tune DyHPO": ("synetune", ".venv-peers"),
    "DEHB": ("dehb_peer", ".venv-peers"),
    "SMAC3 multi-fidelity (Hyperband + random forest)": ("smac_peer", ".venv-peers"),
    "NePS ifBO": ("neps_peer", ".venv-neps"),
    "NePS PriorBand": ("neps_peer", ".venv-neps"),
}
"""Peer name -> (module of this package whose ``RUNS`` dict maps the name to its run function, virtual environment
folder under the project root)."""


class BudgetSpent(Exception):
    """Raised by ``Ledger.book`` once the budget is spent: it ends a peer's loop from inside its objective."""


class Ledger:
    """The results of one search in arrival order, and the epochs spent so far."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.results: List[Result] = []
        self.spent = 0
        self._last: Dict[int, int] = {}

    def book(self, trial: int, epoch: int, accuracy: float) -> None:
        """Record trial ``trial``'s accuracy at ``epoch``; raise BudgetSpent when it would pass the budget."""
        cost = epoch - self._last.get(trial, 0)
        if self.spent + cost > self.budget:
            raise BudgetSpent
        self.spent += cost
        self._last[trial] = max(epoch, self._last.get(trial, 0))
        self.results.append((trial, epoch, float(accuracy)))

    @property
    def done(self) -> bool:
        return self.spent >= self.budget


def slug(name: str) -> str:
    """A peer's name as a file name, each character not a letter or digit a dash: ``NePS PriorBand`` ->
    ``neps-priorband``."""
    return "".join(c if c.isalnum() else "-" for c in name.lower())


def run_peer(name: str, tasks: Sequence[str], seeds: int, budget: int, prior: str = "none",
             results: Optional[Path] = None) -> Dict[str, Any]:
    """Every (task, seed) search of peer ``name``: {"task/seed": {"results": [...], "seconds": s}}.

    Runs ``run.py`` in the peer's virtual environment (``make peers`` builds it). With ``results`` (a folder), a
    file there from an earlier run with the same peer, prior and budget, holding every (task, seed), is read
    instead, and a fresh run is written there.

    Raises:
        RuntimeError: the peer's environment is missing, or its run failed (its last lines of stderr).
    """
    module, venv = PEERS[name]
    cached = None if results is None else results / f"{slug(name)}{'' if prior == 'none' else '-' + prior}.json"
    if cached is not None and cached.is_file():
        found = json.loads(cached.read_text())
        keys = [f"{task}/{seed}" for task in tasks for seed in range(seeds)]
        if all(key in found and (spent_epochs(found[key]["results"]) or [0])[-1] <= budget for key in keys):
            return {key: found[key] for key in keys}
    python = ROOT / venv / "bin" / "python"
    if not python.is_file():
        raise RuntimeError(f"{name} runs in {venv}/, which is missing: run `make peers` first")
    command = [str(python), str(Path(__file__).with_name("run.py")), "--peer", name, "--tasks", ",".join(tasks),
               "--seeds", str(seeds), "--budget", str(budget), "--prior", prior]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed (exit {done.returncode}): {done.stderr[-2000:]}")
    found = json.loads(done.stdout)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_text(json.dumps(found))
    return found


def spent_epochs(results: Sequence[Sequence[Any]]) -> List[int]:
    """Cumulative epochs after each result: a result at epoch e costs e minus the trial's previous epoch."""
    last: Dict[int, int] = {}
    total, out = 0, []
    for trial, epoch, _ in results:
        total += int(epoch) - last.get(int(trial), 0)
        last[int(trial)] = int(epoch)
        out.append(total)
    return out
