"""The peer libraries' searches on LCBench (benchmarks/peers): each one runs in .venv-peers and keeps to the protocol.

Every peer of .venv-peers runs once, as search_efficiency.py starts it (``benchmarks/peers/run.py`` in that venv), on
task 3945 with a budget of 300 epochs, and its results must be a search that obeyed the budget and the cost rule:
epochs in 1..52, the epochs it spent (recomputed here with Ledger's rule) within the budget and no more than one full
trial short of it, accuracies in [0, 1], several trials; a Hyperband-style peer that retrains from scratch books each
evaluation under a new trial id, an ASHA-style one continues its trials under their ids; and its best is better than
the task's median random configuration. Ledger itself is checked without the venv.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import lcbench  # noqa: E402
from peers import PEERS, BudgetSpent, Ledger  # noqa: E402

VENV = Path(os.environ.get("FINESWEEP_PEERS_VENV", ROOT / ".venv-peers"))
"""The peers' virtual environment (``make peers``); FINESWEEP_PEERS_VENV points the tests at another copy."""
TASK, BUDGET = "3945", 300
SCRATCH = {"DEHB", "SMAC3 multi-fidelity (Hyperband + random forest)"}
"""Peers that train a configuration again from scratch at each fidelity: one result per trial id."""
CONTINUING = {"Syne Tune ASHA", "Syne Tune BOHB", "Syne Tune MOBSTER", "Syne Tune HyperTune", "Syne Tune DyHPO"}
"""Peers that continue a trial from where it stopped (stopping, pause and resume): several epochs per trial id."""


def test_peer_lists_match_the_registry() -> None:
    assert SCRATCH | CONTINUING == {name for name, (_, venv) in PEERS.items() if venv == ".venv-peers"}


def test_ledger_books_costs_and_stops_at_the_budget() -> None:
    ledger = Ledger(20)
    ledger.book(0, 4, 0.5)  # 4
    ledger.book(0, 12, 0.6)  # + 8 (continued: only the new epochs)
    ledger.book(1, 4, 0.4)  # + 4
    assert ledger.spent == 16 and not ledger.done
    with pytest.raises(BudgetSpent):
        ledger.book(2, 6, 0.7)  # a new trial of 6 epochs would pass 20: not booked
    assert ledger.spent == 16 and len(ledger.results) == 3
    ledger.book(1, 8, 0.45)  # + 4 = 20
    assert ledger.done and ledger.spent == 20
    assert ledger.results == [(0, 4, 0.5), (0, 12, 0.6), (1, 4, 0.4), (1, 8, 0.45)]
    with pytest.raises(BudgetSpent):
        ledger.book(3, 1, 0.1)


def spent(results: List[Tuple[int, int, float]]) -> List[int]:
    """Cumulative epochs after each result, by Ledger's rule: epoch e of trial t costs e minus t's previous epoch."""
    last: Dict[int, int] = {}
    total, out = 0, []
    for trial, epoch, _ in results:
        total += epoch - last.get(trial, 0)
        last[trial] = max(epoch, last.get(trial, 0))
        out.append(total)
    return out


@pytest.fixture(scope="module")
def venv_python() -> Path:
    python = VENV / "bin" / "python"
    if not python.exists():
        pytest.fail(f"{VENV} is missing: run `make peers` to create the peers' virtual environment")
    return python


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("peer", sorted(SCRATCH | CONTINUING))
def test_peer_searches_within_the_budget(peer: str, venv_python: Path) -> None:
    command = [str(venv_python), "benchmarks/peers/run.py", "--peer", peer, "--tasks", TASK, "--seeds", "1",
               "--budget", str(BUDGET)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=290)
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(done.stdout)
    assert list(out) == [f"{TASK}/0"]
    results = [(int(t), int(e), float(a)) for t, e, a in out[f"{TASK}/0"]["results"]]

    assert results, "no results"
    assert all(1 <= epoch <= lcbench.EPOCHS for _, epoch, _ in results)
    assert all(0.0 <= accuracy <= 1.0 for _, _, accuracy in results)
    cumulative = spent(results)
    assert cumulative[-1] <= BUDGET, f"spent {cumulative[-1]} epochs of {BUDGET}"
    assert cumulative[-1] >= BUDGET - lcbench.EPOCHS, f"stopped early: {cumulative[-1]} epochs of {BUDGET}"

    by_trial: Dict[int, List[int]] = {}
    for trial, epoch, _ in results:
        by_trial.setdefault(trial, []).append(epoch)
    assert len(by_trial) > 1, "a single trial"
    if peer in SCRATCH:
        assert all(len(epochs) == 1 for epochs in by_trial.values()), "a retrained configuration must get a new id"
    else:
        assert all(epochs == sorted(set(epochs)) for epochs in by_trial.values()), "a trial's epochs must increase"
        assert any(len(epochs) > 1 for epochs in by_trial.values()), "no trial was continued"

    median = lcbench.table(TASK)[len(lcbench.table(TASK)) // 2][0]
    best = max(accuracy for _, _, accuracy in results)
    assert best > median, f"best {best:.4f} is no better than the median random configuration {median:.4f}"
