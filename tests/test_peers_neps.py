"""The NePS peers (benchmarks/peers/neps_peer.py), each run as search_efficiency.py runs it: benchmarks/peers/run.py in
.venv-neps, on LCBench task 3945, seed 0, a budget of 300 epochs; checked from the JSON it prints."""

from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYTHON = ROOT / ".venv-neps" / "bin" / "python"
sys.path.insert(0, str(ROOT / "benchmarks"))
import lcbench  # noqa: E402

TASK, BUDGET = "3945", 300
FTPFN_WEIGHTS = "bopfn_broken_unisep_1000curves_10params_2M.pt"


@pytest.fixture(autouse=True, scope="module")
def neps_venv() -> None:
    """Fail, not skip: the peers' benchmark needs this environment."""
    if not PYTHON.exists():
        pytest.fail(f"{PYTHON} is missing: run `make peers` to build the NePS peers' virtual environment",
                    pytrace=False)


@functools.lru_cache(maxsize=None)
def run(peer: str, prior: str = "none") -> Tuple[int, str, str]:
    """(exit status, stdout, stderr) of run.py for ``peer`` on TASK, seed 0, BUDGET epochs."""
    done = subprocess.run([str(PYTHON), "benchmarks/peers/run.py", "--peer", peer, "--tasks", TASK, "--seeds", "1",
                           "--budget", str(BUDGET), "--prior", prior],
                          cwd=ROOT, capture_output=True, text=True, timeout=280)
    return done.returncode, done.stdout, done.stderr


def results(peer: str, prior: str = "none") -> List[Tuple[int, int, float]]:
    code, out, err = run(peer, prior)
    assert code == 0, err[-3000:]
    return [(int(t), int(e), float(a)) for t, e, a in json.loads(out)[f"{TASK}/0"]["results"]]


def check(found: List[Tuple[int, int, float]]) -> None:
    """Epochs, the budget booked by the Ledger rule, accuracies, several trials, and a better-than-typical best."""
    assert found
    last: Dict[int, int] = {}
    spent = 0
    for trial, epoch, accuracy in found:
        assert 1 <= epoch <= lcbench.EPOCHS
        assert 0.0 <= accuracy <= 1.0
        assert epoch > last.get(trial, 0), f"trial {trial} reported epoch {epoch} after {last[trial]}"
        spent += epoch - last.get(trial, 0)
        last[trial] = epoch
        assert spent <= BUDGET
    assert spent >= BUDGET - lcbench.EPOCHS
    assert len(last) > 1
    table = lcbench.table(TASK)
    median = table[len(table) // 2][0]
    assert max(accuracy for _, _, accuracy in found) > median


def test_runs_are_registered() -> None:
    code = ("import sys; sys.path.insert(0, 'benchmarks'); from peers import PEERS; from peers import neps_peer; "
            "assert sorted(neps_peer.RUNS) == sorted(k for k, v in PEERS.items() if v[0] == 'neps_peer'), "
            "sorted(neps_peer.RUNS)")
    done = subprocess.run([str(PYTHON), "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_priorband_without_prior() -> None:
    check(results("NePS PriorBand"))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_priorband_with_a_good_prior() -> None:
    found = results("NePS PriorBand", "good")
    check(found)
    # PriorBand evaluates the prior's mode first, at the highest fidelity (sample_prior_first="highest_fidelity")
    prior = lcbench.prior(TASK, "good")
    trial, epoch, accuracy = found[0]
    assert epoch == lcbench.EPOCHS
    assert accuracy == pytest.approx(float(lcbench.curve(TASK, prior).accuracy[-1]), abs=1e-5)
    assert found != results("NePS PriorBand")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ifbo() -> None:
    """ifBO runs where FT-PFN's weights can be had; elsewhere it must stop at once and say what it needs."""
    code, out, err = run("NePS ifBO")
    if code != 0 and "ifBO blocked" in err:
        message = err[err.index("ifBO blocked"):]
        assert FTPFN_WEIGHTS in message
        assert re.search(r"ifbo\.download fetches https?://\S+", message), message
        assert "IFBO_MODEL_DIR" in message
        print(message.splitlines()[0])
        return
    check(results("NePS ifBO"))
