"""Run one peer on LCBench tasks x seeds in this interpreter (the peer's virtual environment) and print JSON.

  python benchmarks/peers/run.py --peer "DEHB" --tasks 3945,7593 --seeds 5 --budget 2600 [--prior good|misleading]

Prints one JSON object: {"<task>/<seed>": {"results": [[trial, epoch, accuracy], ...], "seconds": s}, ...}.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

BENCHMARKS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCHMARKS))

import lcbench  # noqa: E402

from peers import PEERS  # noqa: E402


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer", required=True, choices=sorted(PEERS))
    parser.add_argument("--tasks", required=True, help="comma-separated LCBench task ids")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budget", type=int, required=True, help="epochs")
    parser.add_argument("--prior", choices=("none", "good", "misleading"), default="none")
    args = parser.parse_args(argv)
    module = importlib.import_module(f"peers.{PEERS[args.peer][0]}")
    run = module.RUNS[args.peer]
    out: Dict[str, Any] = {}
    for task in args.tasks.split(","):
        prior = None if args.prior == "none" else lcbench.prior(task, args.prior)
        for seed in range(args.seeds):
            start = time.perf_counter()
            results = run(task, seed, args.budget, prior)
            out[f"{task}/{seed}"] = {"results": [list(r) for r in results], "seconds": time.perf_counter() - start}
            print(f"{args.peer} {task} seed {seed}: {len(results)} results, {time.perf_counter() - start:.1f} s",
                  file=sys.stderr, flush=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
