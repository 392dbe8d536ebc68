"""ASHA's tie-breaking on a real small fine-tuning sweep: the compute it saves, and the winner it keeps.

On a small validation split accuracy moves in steps of 1/n, and every configuration that collapsed
to one class ties at that class's share. Ray's ASHA keeps a trial equal to its rung's cutoff, so tied
trials run their full budget; finesweep settles a tie by validation loss (src/finesweep/search/asha.py).

The same sweep runs twice through ``finesweep run``'s real path (Hydra, Ray Tune, TPE, ASHA, Lightning,
MLflow on a throw-away store), each in its own process: once as shipped, once with Ray's rule
(``finesweep.search.asha.TIE_BREAK_METRIC = None``). MiniLM is fully fine-tuned on 400 tweets (3 classes,
40 validation tweets) over a too-wide learning-rate range (1e-4 to 1e-2): above ~1e-3 full fine-tuning
collapses to one class, and every collapsed trial ties at that class's share. Each seed is one sweep.

Usage: python benchmarks/asha_ties.py   (prints a table: trial-epochs, tied results, time, winner)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parents[1]
TRIALS, EPOCHS = 8, 3

SWEEP = f"""
defaults:
  - override /model: minilm
  - override /data: tweet_sentiment
data: {{max_samples: 400, max_length: 32}}
objective: {{metric: val/accuracy, mode: max}}
search: {{sampler: tpe, num_trials: {TRIALS}, max_concurrent: 2, seed: SEED}}
scheduler: {{kind: asha, max_epochs: {EPOCHS}, grace_period: 1, reduction_factor: 2}}
finetune: {{strategy: full}}
space:
  optim.lr: {{distribution: loguniform, low: 1.0e-4, high: 1.0e-2}}
  optim.warmup_ratio: {{distribution: categorical, choices: [0.0, 0.1]}}
"""


def child(variant: str, seed: int) -> Dict[str, Any]:
    """Run the sweep in this process; return what its event log says."""
    import finesweep.search.asha
    from finesweep import cli
    from finesweep.journal.replay import find_sweeps, load_state

    if variant == "ray-rule":
        finesweep.search.asha.TIE_BREAK_METRIC = None
    workdir = Path(tempfile.mkdtemp(prefix="fs-ties-"))
    os.chdir(workdir)
    sweep = workdir / "ties.yaml"
    sweep.write_text(SWEEP.replace("SEED", str(seed)))
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(["run", str(sweep)])
    total = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"the {variant} sweep exited with {code}")
    (folder,) = find_sweeps("mlruns/ray")
    return {"total_s": total, **summarise(load_state(folder).search_trials())}


def summarise(trials: List[Any]) -> Dict[str, Any]:
    """Trial-epochs, results that tie an earlier trial's at the same epoch, early stops and the best value."""
    seen: set = set()
    tied = epochs = 0
    for trial in trials:
        for metrics in trial.history:
            key = (metrics.get("epoch"), metrics.get("val/accuracy"))
            tied += key in seen
            seen.add(key)
            epochs += 1
    return {"trial_epochs": epochs, "tied_results": tied,
            "early_stopped": sum(t.status == "early_stopped" for t in trials),
            "best": max((m.get("val/accuracy", 0.0) for t in trials for m in t.history), default=float("nan")),
            "trials": [(t.params, [(m.get("val/accuracy"), round(m.get("val/loss", 0), 4)) for m in t.history])
                       for t in trials]}


def add(total: Dict[str, Any], row: Dict[str, Any]) -> None:
    """Sum one sweep's row into the variant's totals (trials are listed one after the other)."""
    for key, value in row.items():
        total[key] = total.get(key, [] if isinstance(value, list) else 0) + value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=["finesweep", "ray-rule"])
    parser.add_argument("--seeds", type=int, default=2, help="sweeps per variant (search.seed 0, 1, ...)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trials", action="store_true", help="also print every trial's values and curve")
    args = parser.parse_args()
    if args.variant:
        print("RESULT " + json.dumps(child(args.variant, args.seed)))
        return
    env = {**os.environ, "FINESWEEP_PROJECT": str(ROOT), "RAY_CHDIR_TO_TRIAL_DIR": "0", "HF_HUB_OFFLINE": "1"}
    rows: Dict[str, Dict[str, Any]] = {}
    for seed in range(args.seeds):
        for variant in ("ray-rule", "finesweep"):
            out = subprocess.run([sys.executable, __file__, "--variant", variant, "--seed", str(seed)],
                                 capture_output=True, text=True, env=env)
            if out.returncode != 0:
                raise SystemExit(out.stderr[-3000:])
            add(rows.setdefault(variant, {}), json.loads(out.stdout.split("RESULT ", 1)[1]))
    print(f"{args.seeds} sweeps of {TRIALS} TPE trials x {EPOCHS} epochs, ASHA grace 1, factor 2; MiniLM full "
          "fine-tuning, 400 tweets; sums over the sweeps, best = mean of each sweep's best")
    print("| ASHA ties | trial-epochs | tied results | early-stopped | best val acc | sweep wall-clock |")
    print("|---|---:|---:|---:|---:|---:|")
    for variant, label in (("ray-rule", "kept (Ray's rule)"), ("finesweep", "broken by val/loss (finesweep)")):
        r = rows[variant]
        print(f"| {label} | {r['trial_epochs']} | {r['tied_results']} | {r['early_stopped']} "
              f"| {r['best'] / args.seeds:.3f} | {r['total_s']:.0f} s |")
    if args.trials:
        for variant, row in rows.items():
            print(variant, *row["trials"], sep="\n  ")
    saved = 1 - rows["finesweep"]["trial_epochs"] / rows["ray-rule"]["trial_epochs"]
    print(f"compute saved: {saved:.0%} of the search's trial-epochs")


if __name__ == "__main__":
    main()
