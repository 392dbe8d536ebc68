"""A real small-data sweep, judged against its recipe: the verdict line and what cross-validation costs.

Runs ``finesweep run small_data`` (sweeps/small_data.yaml: MiniLM fully fine-tuned on 400 tweets, 320 / 40 /
40; the recipe as trial 0, 10 TPE + ASHA trials, then the best configuration and the recipe on 5 folds of the
360 train + validation rows) through the real command in its own process and a throw-away folder, and reads
the sweep's journal: the search's wall-clock, the cross-validation's (the extra ``final.cv_folds: 5`` costs),
the verdict, the recipe's and the winner's scores.

Usage: python benchmarks/small_data.py [OVERRIDE ...]   (prints a markdown table; ~7 minutes on 2 CPU cores)
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]


def run(overrides: List[str]) -> Dict[str, str]:
    """Run the sweep; return the measures read off its journal."""
    from finesweep.journal.events import SelectionMade, TrialEnded, TrialStarted
    from finesweep.journal.file import read_events
    from finesweep.journal.replay import find_sweeps

    workdir = Path(tempfile.mkdtemp(prefix="fs-small-"))
    env = {**os.environ, "FINESWEEP_PROJECT": str(ROOT), "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "finesweep", "run", "small_data", *overrides], cwd=workdir, env=env,
                          capture_output=True, text=True)
    total = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"finesweep run small_data failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    (folder,) = find_sweeps(workdir / "mlruns" / "ray")
    phases: Dict[int, str] = {}
    spans: Dict[str, List[float]] = {}
    selection = None
    for event in read_events(folder / "events.jsonl"):
        if isinstance(event, TrialStarted):
            phases[event.number] = event.phase
            spans.setdefault(event.phase, []).append(event.time)
        elif isinstance(event, TrialEnded):
            spans.setdefault(phases[event.number], []).append(event.time)
        elif isinstance(event, SelectionMade):
            selection = event
    if selection is None:
        raise SystemExit("the sweep made no selection")

    def wall(phase: str) -> float:
        return max(spans.get(phase, [0.0])) - min(spans.get(phase, [0.0]))

    metrics, tags = selection.metrics, selection.tags
    folds = int(tags.get("finesweep.cv_folds", 0))
    runs = sum(phase == "final" for phase in phases.values())
    return {f"search ({sum(phase == 'search' for phase in phases.values())} trials)": f"{wall('search'):.0f} s",
            f"cross-validation ({runs} runs: {folds} folds x {runs // max(1, folds)} configurations)":
                f"{wall('final'):.0f} s (+{wall('final') / max(wall('search'), 1e-9):.0%} of the search)",
            "whole command": f"{total:.0f} s",
            "registered: val accuracy over folds": f"{metrics.get('final/val/val/accuracy/mean', float('nan')):.3f} ± "
                                               f"{metrics.get('final/val/val/accuracy/std', float('nan')):.3f}",
            "registered: test accuracy (mean of its fold models)":
                f"{metrics.get('final/test/accuracy/mean', float('nan')):.3f}",
            "verdict": str(tags.get("finesweep.verdict", "(none)"))}


def main() -> None:
    measures = run(sys.argv[1:])
    print("| measure | value |\n|---|---|")
    for name, value in measures.items():
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
