"""NePS (neural-pipeline-search 0.17.0) on the LCBench surrogate: PriorBand and ifBO, through NePS's ask-and-tell API.

``neps.AskAndTell`` wraps the optimizer that ``neps.algorithms.priorband`` / ``neps.algorithms.ifbo`` build, and the
loop here asks it for one trial at a time, evaluates it and tells it the result: the same optimizer calls as
``neps.run``'s worker makes, without its file-system state (``neps.run`` keeps every trial in a root directory and
rewrites CSV summaries of all trials after each one, which took about half of a search's time here). The search space
is a ``neps.PipelineSpace`` of LCBench's 7 hyperparameters (log scale where config_space.json says so) and the
fidelity ``epoch``; an evaluation at fidelity e tells ``1 - curve.accuracy[e - 1]`` as the objective to minimise and
the epochs it cost as ``cost``, and each ask gets a ``BudgetInfo`` with ``total_cost_to_spend=budget`` and the cost
used so far. The loop ends when the ``Ledger`` has the whole budget, or when the next evaluation would pass it
(``BudgetSpent``: that evaluation is neither booked nor told).

- PriorBand: ``neps.algorithms.priorband`` with eta 3 on Hyperband brackets over epochs 4..52 (NePS places the rungs
  at 5, 17 and 52 epochs), without the BO kick-in (the paper's model-free PriorBand). A promoted configuration is
  trained again from scratch (new trial id, full epoch count), as DEHB and SMAC are: NePS names the previous rung's
  trial on a promotion (so that an evaluation may load its checkpoint), but continuing is the evaluation's business,
  and this benchmark books Hyperband-style peers from scratch. With a prior, every hyperparameter's NePS prior is the
  key's value with confidence ``PRIOR_CONFIDENCE``, and the prior configuration is evaluated first at the highest
  fidelity (``sample_prior_first="highest_fidelity"``, as PriorBand's original implementation did by default:
  ``sample_default_first=True, sample_default_at_target=True``); without one, NePS's PriorBand warns and samples
  uniformly (plus its incumbent mutations once a bracket is done).
- ifBO: ``neps.algorithms.ifbo`` with its defaults (``step_size=1``: every continuation trains one more epoch from
  the trial's checkpoint, so it books under the same trial id; initial design of 7 = the number of hyperparameters)
  over epochs 4..52. Its surrogate FT-PFN needs pretrained weights that ``ifbo`` does not ship: they are downloaded
  from ``ifbo.download.FILE_URL`` into ``IFBO_MODEL_DIR``/.model (default ``~/.cache/ifbo/.model``); where they can
  be neither found nor downloaded, the run raises ``IfboUnavailable`` naming the URL and the file.
"""

from __future__ import annotations

import os
import random
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import lcbench
import numpy as np

from peers import BudgetSpent, Ledger, Result

MIN_EPOCH = 4
"""The lowest fidelity, finesweep's ASHA grace period."""
ETA = 3
PRIOR_CONFIDENCE = "medium"
"""NePS 0.17.0: a float or int prior is a truncated normal on [0, 1] (the unit, or log-unit, interval of the key)
centred on the prior with std 1 - 0.5 = 0.5 (low: 0.75, high: 0.25); a categorical's prior value gets probability
0.5 (low 0.25, high 0.75), the rest spread evenly (``neps.sampling.priors.PRIOR_CONFIDENCE_MAPPING``)."""
IFBO_VERSION = "0.0.1"
INTEGERS = ("batch_size", "max_units", "num_layers")


class IfboUnavailable(RuntimeError):
    """FT-PFN's pretrained weights are neither on disk nor downloadable: ifBO cannot run here."""


def _space(prior: Optional[Dict[str, float]]) -> Any:
    """LCBench's hyperparameters as a NePS PipelineSpace, each with NePS's prior at ``prior``'s value when given."""
    import neps

    attributes: Dict[str, Any] = {"epoch": neps.IntegerFidelity(MIN_EPOCH, lcbench.EPOCHS)}
    for name, spec in lcbench.space().items():
        log = spec["distribution"] == "loguniform" or bool(spec.get("log", False))
        kwargs: Dict[str, Any] = {"log": log}
        # NePS 0.17.0 quantises a log-scaled Integer to round(ln(upper) - ln(lower)) + 1 values (batch_size 16..512:
        # 16, 51, 161, 512 only; max_units 64..1024: 64, 161, 406, 1024): those two are log Floats here, rounded
        # before the surrogate reads them, as every integer is.
        integer = spec["distribution"] == "int" and not log
        if prior is not None:
            kwargs["prior"] = int(round(prior[name])) if integer else float(prior[name])
            kwargs["prior_confidence"] = PRIOR_CONFIDENCE
        if integer:
            attributes[name] = neps.Integer(int(spec["low"]), int(spec["high"]), **kwargs)
        else:
            attributes[name] = neps.Float(float(spec["low"]), float(spec["high"]), **kwargs)
    return type("LCBenchSpace", (neps.PipelineSpace,), attributes)()


def _seed(seed: int) -> None:
    """NePS's optimizers take no seed: they draw from the global random states (random, numpy, torch)."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _search(task: str, budget: int, optimizer: Any, trial_of: Callable[[str, Ledger], int]) -> List[Result]:
    """Ask ``optimizer`` (a NePS optimizer, wrapped in ``neps.AskAndTell``) for one evaluation at a time and tell it the
    result, until ``budget`` epochs are booked; ``trial_of`` maps NePS's trial id to the ledger's (the same id for a
    continuation, a new one for a configuration trained from scratch)."""
    import neps
    from neps.state import BudgetInfo

    ledger = Ledger(budget)
    loop = neps.AskAndTell(optimizer)
    while not ledger.done:
        info = BudgetInfo(total_cost_to_spend=budget, used_cost_budget=ledger.spent,
                          used_evaluations=len(ledger.results))
        trial = loop.ask(budget_info=info)
        hyperparameters = dict(trial.config)
        epoch = int(hyperparameters.pop("epoch"))
        config = {k: float(round(v)) if k in INTEGERS else float(v) for k, v in hyperparameters.items()}
        accuracy = float(lcbench.curve(task, config).accuracy[epoch - 1])
        before = ledger.spent
        try:
            ledger.book(trial_of(trial.id, ledger), epoch, accuracy)
        except BudgetSpent:
            break
        loop.tell(trial, {"objective_to_minimize": 1.0 - accuracy, "cost": float(ledger.spent - before)})
    return ledger.results


def _new_trial_each_time(pipeline_id: str, ledger: Ledger) -> int:
    """Hyperband-style: every evaluation trains from scratch, so it is a trial of its own."""
    return len(ledger.results)


def _same_trial_for_continuations(pipeline_id: str, ledger: Ledger) -> int:
    """ifBO's ids are ``<config>_<step>``: every step of a configuration continues the same trial."""
    return int(pipeline_id.split("_")[0])


def priorband(task: str, seed: int, budget: int, prior: Optional[Dict[str, float]]) -> List[Result]:
    import neps

    _seed(seed)
    optimizer = neps.algorithms.priorband(
        _space(prior), eta=ETA, base="hyperband", bayesian_optimization_kick_in_point=None,
        sample_prior_first="highest_fidelity" if prior is not None else False)
    return _search(task, budget, optimizer, _new_trial_each_time)


def ftpfn_folder() -> Path:
    """The folder whose ``.model/`` holds FT-PFN's weights, downloading them there (ifbo's own download) if missing."""
    from ifbo.download import FILE_URL, FILENAME, WEIGHTS_FINAL_NAME, download_and_decompress

    root = Path(os.environ.get("IFBO_MODEL_DIR", Path.home() / ".cache" / "ifbo")).expanduser()
    model = root / ".model"
    weights = model / WEIGHTS_FINAL_NAME(IFBO_VERSION)
    if weights.exists():
        return root
    archive = model / FILENAME(IFBO_VERSION)
    archive.unlink(missing_ok=True)
    try:
        download_and_decompress(url=FILE_URL(IFBO_VERSION), path=archive, max_retries=1)
    except Exception as error:
        archive.unlink(missing_ok=True)
        raise IfboUnavailable(
            f"ifBO blocked: FT-PFN's pretrained weights {weights} are missing and the ifbo package does not ship them;"
            f" ifbo.download fetches {FILE_URL(IFBO_VERSION)} (a tar.gz with {WEIGHTS_FINAL_NAME(IFBO_VERSION)}),"
            f" which failed: {type(error).__name__}: {error}. Put the unpacked archive in {model} (or set"
            " IFBO_MODEL_DIR to a folder whose .model/ has it)."
        ) from error
    if not weights.exists():
        raise IfboUnavailable(f"ifBO blocked: {FILE_URL(IFBO_VERSION)} unpacked without {weights.name} in {model}")
    return root


def ifbo(task: str, seed: int, budget: int, prior: Optional[Dict[str, float]]) -> List[Result]:
    import neps

    _seed(seed)
    optimizer = neps.algorithms.ifbo(
        _space(prior), step_size=1, use_priors=prior is not None, sample_prior_first=prior is not None,
        surrogate_path=ftpfn_folder(), surrogate_version=IFBO_VERSION, device="cpu")
    return _search(task, budget, optimizer, _same_trial_for_continuations)


warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*is deprecated", category=FutureWarning)

RUNS: Dict[str, Callable[[str, int, int, Optional[Dict[str, float]]], List[Result]]] = {
    "NePS ifBO": ifbo,
    "NePS PriorBand": priorband,
}
